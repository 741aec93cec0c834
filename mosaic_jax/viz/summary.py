"""The block a training run prints when it ends: where its outputs are, and
its headline metrics before and after training, with intervals, per split.

Reads a training `report.json` (`eval.heldout.training_report`): `{"before":
{split: report}, "after": {split: report}, ...}`, each report's
`groups["all"][metric]` a `{value, low, high, n}` statistic (None for an
empty population).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def format_stat(stat: Mapping[str, Any] | None) -> str:
  """`0.250 [0.100, 0.400]`, or `-` for an empty population."""
  if not stat or stat.get("value") is None:
    return "-"
  text = f"{stat['value']:.3f}"
  if stat.get("low") is not None and stat.get("high") is not None:
    text += f" [{stat['low']:.3f}, {stat['high']:.3f}]"
  return text


def _change(before: Mapping[str, Any] | None,
            after: Mapping[str, Any] | None) -> str:
  if not before or not after or None in (before.get("value"),
                                         after.get("value")):
    return "-"
  return f"{after['value'] - before['value']:+.3f}"


def before_after_table(report: Mapping[str, Any], metrics: Sequence[str],
                       group: str = "all") -> str:
  """Per split, one row per metric: before, after (each value [low, high]),
  and the change of the value.

  Args:
    report: a training report.json.
    metrics: the rows, in order (e.g. `eval.heldout.REPORT_METRICS`).
    group: the report group read.

  Returns:
    Plain text, one block per split (the splits of `after`, in order).
  """
  width = max(len(m) for m in metrics) + 2
  lines = []
  for split, after in report.get("after", {}).items():
    before = report.get("before", {}).get(split, {})
    b_groups = before.get("groups", {}).get(group, {})
    a_groups = after.get("groups", {}).get(group, {})
    tasks = report.get("eval_tasks", {}).get(split)
    lines.append(f"{split}" + (f" ({tasks} tasks)" if tasks else "")
                 + ": value [95% interval]")
    lines.append(f"  {'metric':<{width}}{'before':<25}{'after':<25}change")
    for m in metrics:
      b, a = b_groups.get(m), a_groups.get(m)
      lines.append(f"  {m:<{width}}{format_stat(b):<25}"
                   f"{format_stat(a):<25}{_change(b, a)}")
  return "\n".join(lines)


def final_block(report: Mapping[str, Any], metrics: Sequence[str], *,
                report_path: str, curves_path: str | None = None,
                extra: Sequence[str] = ()) -> str:
  """The end-of-run text: the report and figure paths, then the table.

  Args:
    report: the training report.json.
    metrics: the table's rows.
    report_path: where report.json is.
    curves_path: the training-curves figure, if written.
    extra: more `name: path` lines (e.g. TensorBoard's logdir).
  """
  rule = "=" * 72
  lines = [rule, f"report:  {report_path}"]
  if curves_path:
    lines.append(f"curves:  {curves_path}")
  lines += list(extra)
  lines += [rule, before_after_table(report, metrics), rule]
  return "\n".join(lines)
