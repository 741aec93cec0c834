"""Run reports: bootstrap confidence intervals, JSON, Markdown, plots, compare.

Every metric of every benchmark is a ratio of sums over episodes,
`value = Σ num_i / Σ den_i`: a plain rate has `den_i = 1` (or 0 for an episode
outside the metric's population); turn-level rates put turns in both;
precision, recall and F1 are ratios of confusion counts. One representation
gives one bootstrap for all of them: resample episodes with replacement,
recompute the ratio, take percentiles. The resampled indices depend only on
(seed, number of episodes), so the metrics of one group share their resamples
and a run is reproducible.

A report is plain JSON:

  {"name": str, "benchmark": str, "meta": {...},
   "bootstrap": {"n": int, "seed": int, "confidence": float},
   "groups": {group: {metric: {"value", "low", "high", "n"} | None}}}

where `n` is the number of resampled units (episodes, or tasks for a
clustered report) with `den_i > 0` and a metric is None when no unit of the
group is in its population.

Clustered reports (several sampled episodes per task, `cluster`): the
episodes of one task are summed into one unit before the bootstrap, so the
interval resamples tasks, not episodes (a cluster bootstrap: k correlated
samples of one task do not count as k independent draws). Such a report can
carry `per_task` (`task_table`): each task's sums per metric, which `compare`
uses for paired differences over the tasks both runs played.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mosaic_jax.viz import plots

Report = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Samples:
  """Per-episode numerator and denominator of one metric, `[N]` each."""
  num: np.ndarray
  den: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "num", np.asarray(self.num, np.float64))
    object.__setattr__(self, "den", np.asarray(self.den, np.float64))
    if self.num.shape != self.den.shape or self.num.ndim != 1:
      raise ValueError(f"num and den must be [N] arrays of one shape, got "
                       f"{self.num.shape} and {self.den.shape}")


def rate(values: Sequence[float], mask: Sequence[bool] | None = None
         ) -> Samples:
  """Mean of `values` over the episodes where `mask` holds (all if None)."""
  values = np.asarray(values, np.float64)
  den = (np.ones_like(values) if mask is None
         else np.asarray(mask, bool).astype(np.float64))
  return Samples(values * den, den)


def bootstrap(samples: Samples, n: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict[str, float] | None:
  """Point value and percentile bootstrap interval of `Σ num / Σ den`.

  Args:
    samples: `[N]` numerators and denominators.
    n: number of bootstrap resamples (0: no interval, low = high = value).
    seed: seed of the resampling.
    confidence: the interval's coverage, e.g. 0.95 for [2.5%, 97.5%].

  Returns:
    `{"value", "low", "high", "n"}`, or None when `Σ den = 0`. Resamples whose
    denominator sums to 0 are dropped before taking percentiles.
  """
  total = samples.den.sum()
  if total == 0:
    return None
  value = float(samples.num.sum() / total)
  count = int(np.count_nonzero(samples.den))
  if n == 0:
    return {"value": value, "low": value, "high": value, "n": count}
  size = samples.num.shape[0]
  index = np.random.default_rng(seed).integers(0, size, (n, size))
  num, den = samples.num[index].sum(1), samples.den[index].sum(1)
  ratios = num[den > 0] / den[den > 0]
  alpha = (1.0 - confidence) / 2
  low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
  return {"value": value, "low": float(low), "high": float(high), "n": count}


def cluster(samples: Samples, ids: Sequence[str]
            ) -> tuple[Samples, list[str]]:
  """Per-cluster sums of `[N]` episode samples: `([C] samples, [C] ids)`.

  Clusters are in order of first appearance in `ids` (`[N]`, e.g. task ids).
  """
  if len(ids) != samples.num.shape[0]:
    raise ValueError(f"{len(ids)} cluster ids for {samples.num.shape[0]} "
                     "episodes")
  order = list(dict.fromkeys(ids))
  index = {c: i for i, c in enumerate(order)}
  codes = np.asarray([index[c] for c in ids], np.int64)
  num = np.bincount(codes, samples.num, len(order))
  den = np.bincount(codes, samples.den, len(order))
  return Samples(num, den), order


def paired_bootstrap(a: Samples, b: Samples, n: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float] | None:
  """Paired difference `ratio(b) − ratio(a)` over the same `[T]` units.

  Unit t of `a` and of `b` is the same task (run before and after); each
  resample draws one set of task indices and recomputes both ratios on it,
  so the interval reflects the per-task change, not two independent draws.

  Returns:
    `{"value", "low", "high", "n"}` (`n`: units in either population), or
    None when either run's denominator sums to 0. Resamples where either
    denominator is 0 are dropped.
  """
  if a.num.shape != b.num.shape:
    raise ValueError(f"paired samples need one shape, got {a.num.shape} and "
                     f"{b.num.shape}")
  if a.den.sum() == 0 or b.den.sum() == 0:
    return None
  value = float(b.num.sum() / b.den.sum() - a.num.sum() / a.den.sum())
  count = int(np.count_nonzero(a.den + b.den))
  if n == 0:
    return {"value": value, "low": value, "high": value, "n": count}
  size = a.num.shape[0]
  index = np.random.default_rng(seed).integers(0, size, (n, size))
  den_a, den_b = a.den[index].sum(1), b.den[index].sum(1)
  keep = (den_a > 0) & (den_b > 0)
  diffs = (b.num[index].sum(1)[keep] / den_b[keep]
           - a.num[index].sum(1)[keep] / den_a[keep])
  alpha = (1.0 - confidence) / 2
  low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
  return {"value": value, "low": float(low), "high": float(high), "n": count}


def task_table(samples: Mapping[str, Samples], ids: Sequence[str],
               labels: Mapping[str, Sequence[str]]) -> dict[str, Any]:
  """The JSON `per_task` entry: `[T]` per-task sums of each metric.

  Args:
    samples: metric -> `[T]` per-task samples (already `cluster`ed).
    ids: `[T]` task ids.
    labels: label name -> `[T]` values (e.g. `suite`, `kind`): the group
      `name=value` of a report is the tasks with that label.
  """
  return {"ids": list(ids), "labels": {k: list(v) for k, v in labels.items()},
          "metrics": {m: {"num": s.num.tolist(), "den": s.den.tolist()}
                      for m, s in samples.items()}}


def _table_samples(table: Mapping[str, Any], metric: str,
                   ids: Sequence[str]) -> Samples | None:
  """`[len(ids)]` samples of `metric` for the tasks `ids` of `table`."""
  entry = table["metrics"].get(metric)
  if entry is None:
    return None
  where = {t: i for i, t in enumerate(table["ids"])}
  rows = np.asarray([where[t] for t in ids], np.int64)
  return Samples(np.asarray(entry["num"], np.float64)[rows],
                 np.asarray(entry["den"], np.float64)[rows])


def _group_ids(table: Mapping[str, Any], group: str,
               ids: Sequence[str]) -> list[str] | None:
  """The tasks of `ids` in `group` (`all` or `label=value`), or None when
  the table has no such label."""
  if group == "all":
    return list(ids)
  key, _, value = group.partition("=")
  if key not in table["labels"]:
    return None
  label = dict(zip(table["ids"], table["labels"][key]))
  return [t for t in ids if label[t] == value]


def paired_differences(report_a: Report, report_b: Report, *,
                       n: int = 1000, seed: int = 0,
                       confidence: float = 0.95
                       ) -> dict[str, dict[str, dict[str, float] | None]]:
  """group -> metric -> paired `b − a` (`paired_bootstrap`) over the tasks
  both reports' `per_task` tables hold (sorted by id); empty when either
  report has no table or they share no task."""
  ta, tb = report_a.get("per_task"), report_b.get("per_task")
  if not ta or not tb:
    return {}
  in_b = set(tb["ids"])
  shared = sorted(t for t in ta["ids"] if t in in_b)
  if not shared:
    return {}
  out: dict[str, dict[str, dict[str, float] | None]] = {}
  for group, metrics in report_a["groups"].items():
    ids = _group_ids(ta, group, shared)
    if group not in report_b["groups"] or not ids:
      continue
    row = {}
    for metric in metrics:
      sa, sb = (_table_samples(t, metric, ids) for t in (ta, tb))
      if sa is not None and sb is not None:
        row[metric] = paired_bootstrap(sa, sb, n, seed, confidence)
    out[group] = row
  return out


def make_report(name: str, benchmark: str,
                groups: Mapping[str, Mapping[str, Samples]],
                meta: Mapping[str, Any] | None = None, *,
                n_bootstrap: int = 1000, seed: int = 0,
                confidence: float = 0.95) -> Report:
  """Summarises every metric of every group into a report (module docstring)."""
  return {
      "name": name, "benchmark": benchmark, "meta": dict(meta or {}),
      "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": confidence},
      "groups": {g: {m: bootstrap(s, n_bootstrap, seed, confidence)
                     for m, s in metrics.items()}
                 for g, metrics in groups.items()},
  }


def save_json(report: Report, path: str | os.PathLike) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")


def load_json(path: str | os.PathLike) -> Report:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _cell(stat: Mapping[str, float] | None) -> str:
  if stat is None:
    return "—"
  return f"{stat['value']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def _metric_names(groups: Sequence[Mapping[str, Any]]) -> list[str]:
  names: list[str] = []
  for metrics in groups:
    names += [m for m in metrics if m not in names]
  return names


def _meta_line(meta: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}: {v}" for k, v in sorted(meta.items()))


def to_markdown(report: Report) -> str:
  """One table per run: metrics as rows, groups as columns, `v [lo, hi]`."""
  groups = list(report["groups"])
  boot = report["bootstrap"]
  lines = [f"## {report['name']} ({report['benchmark']})", ""]
  if report["meta"]:
    lines += [_meta_line(report["meta"]), ""]
  lines += [f"Values with {boot['confidence']:.0%} percentile bootstrap "
            f"intervals ({boot['n']} resamples, seed {boot['seed']}).", ""]
  lines.append("| metric | " + " | ".join(groups) + " |")
  lines.append("|---" * (len(groups) + 1) + "|")
  for metric in _metric_names([report["groups"][g] for g in groups]):
    cells = [_cell(report["groups"][g].get(metric)) for g in groups]
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  beside = beside_table(report)
  if beside:
    lines += ["", beside.rstrip("\n")]
  return "\n".join(lines) + "\n"


def beside_columns(report: Report) -> dict[str, Report]:
  """column label -> report of the policy and what a report prints beside
  it: its sampled evaluation (`sampled`) and the scripted floors
  (`baselines`), all on the same tasks."""
  columns = {f"{report['name']} (greedy)" if report.get("sampled")
             else report["name"]: report}
  sampled = report.get("sampled")
  if sampled:
    k = sampled["meta"].get("samples_per_task", "k")
    columns[f"{report['name']} (sampled, k={k:g})"] = sampled
  for name, rep in (report.get("baselines") or {}).items():
    columns[f"baseline {name}"] = rep
  return columns


def beside_table(report: Report, group: str = "all") -> str:
  """Markdown: `group`'s metrics of the policy beside its sampled run and
  the baselines (`beside_columns`); empty when the report has neither."""
  columns = beside_columns(report)
  if len(columns) == 1:
    return ""
  lines = [f"Beside the policy ({group}; the baselines are scripted "
           "floors on the same tasks):", "",
           "| metric | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  reps = list(columns.values())
  for metric in _metric_names([r["groups"].get(group, {}) for r in reps]):
    cells = [_cell(r["groups"].get(group, {}).get(metric)) for r in reps]
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _delta_cell(stat: Mapping[str, float] | None) -> str:
  if stat is None:
    return "—"
  return (f"{stat['value']:+.3f} [{stat['low']:+.3f}, {stat['high']:+.3f}]")


def compare(report_a: Report, report_b: Report, *, n: int = 1000,
            seed: int = 0, confidence: float = 0.95) -> str:
  """Markdown side by side of two runs with deltas (b − a).

  Rows are (group, metric) pairs present in either run; a value missing from
  one run shows as "—" and has no delta. When both runs carry `per_task`
  tables the delta is paired (`paired_differences`: the same tasks, one
  paired bootstrap) and shows its interval and the number of shared tasks;
  otherwise it is the plain difference of the two values.
  """
  a, b = report_a["groups"], report_b["groups"]
  paired = paired_differences(report_a, report_b, n=n, seed=seed,
                              confidence=confidence)
  head = "paired delta (b − a) [CI], tasks" if paired else "delta"
  lines = [f"## {report_a['name']} vs {report_b['name']}", ""]
  if paired:
    lines += [f"Deltas are paired over the tasks both runs played: "
              f"{confidence:.0%} paired bootstrap over tasks ({n} "
              f"resamples, seed {seed}).", ""]
  lines += [f"| group | metric | {report_a['name']} | {report_b['name']} "
            f"| {head} |", "|---|---|---|---|---|"]
  group_names = list(a) + [g for g in b if g not in a]
  for group in group_names:
    ga, gb = a.get(group, {}), b.get(group, {})
    for metric in _metric_names([ga, gb]):
      sa, sb = ga.get(metric), gb.get(metric)
      if paired:
        stat = paired.get(group, {}).get(metric)
        delta = "—" if stat is None else f"{_delta_cell(stat)}, {stat['n']}"
      else:
        delta = ("—" if sa is None or sb is None
                 else f"{sb['value'] - sa['value']:+.3f}")
      lines.append(f"| {group} | {metric} | {_cell(sa)} | {_cell(sb)} | "
                   f"{delta} |")
  return "\n".join(lines) + "\n"


def pareto_front(points: np.ndarray) -> np.ndarray:
  """`[K]` bool: the points of `[K, 2]` that no other point dominates (max)."""
  from mosaic_jax import pareto  # Lazy: JAX only loads when a plot is drawn.
  dominated = np.asarray(pareto.domination_matrix(
      np.asarray(points, np.float32))).any(axis=0)
  return ~dominated


def _value(report: Report, group: str, metric: str) -> float:
  stat = report["groups"].get(group, {}).get(metric)
  if stat is None:
    raise KeyError(f"run {report['name']!r} has no value for {metric!r} in "
                   f"group {group!r}")
  return stat["value"]


def plot_safety_utility(reports: Sequence[Report], path: str | os.PathLike, *,
                        safety: str, utility: str, group: str = "all",
                        lower_is_safer: bool = False) -> np.ndarray:
  """Safety-vs-utility plane of compared runs, with intervals and their
  Pareto front (`viz.plots.plot_safety_utility`: [0, 1] axes).

  Returns:
    `[K, 2]` the plotted (safety, utility) points, in `reports` order.
  """
  points = np.array([[_value(r, group, safety), _value(r, group, utility)]
                     for r in reports], np.float64)
  if lower_is_safer:
    points[:, 0] = 1.0 - points[:, 0]
  return plots.plot_safety_utility(
      reports, path, safety=safety, utility=utility, group=group,
      lower_is_safer=lower_is_safer, front=pareto_front(points))


# Bars of a metric by group, with intervals, on [0, 1].
plot_group_bars = plots.plot_group_bars
