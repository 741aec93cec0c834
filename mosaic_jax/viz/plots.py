"""The run's figures: safety-utility plane, per-group bars, training curves.

Rates live in [0, 1], so every rate axis is fixed to [0, 1] (a single run's
dot never looks like a trend because the axes zoomed onto it). Every point
and bar carries its interval (`{value, low, high}` of a report: the
bootstrap interval), and legends list only what was drawn.

Each `plot_*` draws with matplotlib's Agg backend (servers and CI have no
display) through a `draw_*` that takes the Axes, so a test can read back the
limits, error bars and legend of what was drawn.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

# Rates are in [0, 1]; the margin keeps a dot at 0 or 1 visible.
RATE_LIM = (-0.03, 1.03)
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
# Training-curve panels: title, the metric names drawn (each present one is
# a line), and whether the axis is a rate axis.
RL_PREFIXES = ("rl", "fate_pg")
CURVE_PANELS = (
    ("reward", [f"{p}/reward" for p in RL_PREFIXES], False),
    ("KL to the reference", [f"{p}/kl" for p in RL_PREFIXES], False),
    ("entropy", [f"{p}/entropy" for p in RL_PREFIXES], False),
    ("validation", ["eval/harmful_compliance", "eval/utility",
                    "eval/injection_asr"], True),
    ("SFT loss", ["sft/loss", "fate_sft/loss"], False),
)


def _pyplot():
  import matplotlib  # Heavy import, only needed to draw.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def interval(stat: Mapping[str, Any], flip: bool = False
             ) -> tuple[float, float, float]:
  """(value, low, high) of a report statistic; `flip` maps a failure rate
  r to 1 - r (its interval flips with it)."""
  value = float(stat["value"])
  # A statistic without an interval (n too small) draws a zero-width bar.
  low = value if stat.get("low") is None else float(stat["low"])
  high = value if stat.get("high") is None else float(stat["high"])
  if flip:
    return 1.0 - value, 1.0 - high, 1.0 - low
  return value, low, high


def _stat(report: Mapping[str, Any], group: str, metric: str
          ) -> Mapping[str, Any]:
  stat = report["groups"].get(group, {}).get(metric)
  if stat is None:
    raise KeyError(f"run {report['name']!r} has no value for {metric!r} in "
                   f"group {group!r}")
  return stat


def _errors(values, lows, highs) -> np.ndarray:
  """`[2, K]` non-negative distances below and above (matplotlib's yerr)."""
  values, lows, highs = (np.asarray(a, np.float64) for a in
                         (values, lows, highs))
  return np.stack([np.maximum(values - lows, 0),
                   np.maximum(highs - values, 0)])


def plot_safety_utility(reports: Sequence[Mapping[str, Any]],
                        path: str | os.PathLike, **kwargs) -> np.ndarray:
  """`draw_safety_utility` on a new figure written to `path` (format from
  the extension); returns the `[K, 2]` points drawn."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 4.2))
  try:
    points = draw_safety_utility(ax, reports, **kwargs)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return points


def draw_safety_utility(ax: Any, reports: Sequence[Mapping[str, Any]], *,
                        safety: str, utility: str, group: str = "all",
                        lower_is_safer: bool = False,
                        front: np.ndarray | None = None) -> np.ndarray:
  """Safety-vs-utility plane of runs on `ax`, with intervals and the Pareto
  front.

  Args:
    ax: a matplotlib Axes.
    reports: the runs (evaluation reports, `{"name", "groups"}`).
    safety: the x metric (e.g. `security`; or `injection_asr` with
      `lower_is_safer=True`, drawn as `1 − value`).
    utility: the y metric (higher is better).
    group: the group the metrics are read from.
    lower_is_safer: the safety metric is a failure rate.
    front: `[K]` bool, the runs on the Pareto front (default: none marked,
      every run drawn as a run).

  Returns:
    `[K, 2]` the plotted (safety, utility) points, in `reports` order.
  """
  xs = [interval(_stat(r, group, safety), lower_is_safer) for r in reports]
  ys = [interval(_stat(r, group, utility)) for r in reports]
  points = np.array([[x[0], y[0]] for x, y in zip(xs, ys)], np.float64)
  on_front = (np.zeros(len(reports), bool) if front is None
              else np.asarray(front, bool))
  for mask, colour, label in ((~on_front, "tab:gray", "run"),
                              (on_front, "tab:red", "Pareto front")):
    if not mask.any():
      continue  # No legend entry for what is not drawn.
    idx = np.flatnonzero(mask)
    ax.errorbar(points[idx, 0], points[idx, 1],
                xerr=_errors(*zip(*[xs[i] for i in idx])),
                yerr=_errors(*zip(*[ys[i] for i in idx])),
                fmt="o", color=colour, ecolor=colour, elinewidth=1,
                capsize=3, label=f"{label} (95% interval)")
  if on_front.sum() > 1:
    order = np.argsort(points[on_front, 0])
    ax.plot(points[on_front, 0][order], points[on_front, 1][order],
            c="tab:red", lw=1)
  seen: dict[tuple[float, float], int] = {}
  for report, (x, y) in zip(reports, points):
    # Runs on the same spot get stacked labels; labels near the right or
    # top edge go inside the axes.
    k = seen.setdefault((round(x, 2), round(y, 2)), 0)
    seen[(round(x, 2), round(y, 2))] += 1
    right, top = x > 0.7, y > 0.9
    ax.annotate(report["name"], (x, y), textcoords="offset points",
                xytext=(-5 if right else 5, (-12 - 10 * k) if top
                        else 5 + 10 * k),
                ha="right" if right else "left", fontsize=8)
  ax.set_xlim(*RATE_LIM)
  ax.set_ylim(*RATE_LIM)
  ax.set_xlabel(f"1 − {safety}" if lower_is_safer else safety)
  ax.set_ylabel(utility)
  ax.set_title(f"safety vs utility ({group})")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  return points


def plot_group_bars(report: Mapping[str, Any], metric: str,
                    path: str | os.PathLike, *, prefix: str) -> list[str]:
  """`draw_group_bars` on a new figure written to `path`; returns the group
  names drawn."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  try:
    names = draw_group_bars(ax, report, metric, prefix=prefix)
    fig.set_size_inches(max(4, 0.6 * len(names) + 1), 3.5)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return names


def draw_group_bars(ax: Any, report: Mapping[str, Any], metric: str, *,
                    prefix: str) -> list[str]:
  """Bars of `metric` on `ax` for the groups named `prefix...` (e.g.
  `suite=`), each with its interval, on a [0, 1] axis.

  Groups without the metric are skipped. Returns the plotted group names,
  without the prefix.

  Raises:
    KeyError: no group `prefix...` has the metric.
  """
  names, stats = [], []
  for group, metrics in report["groups"].items():
    stat = metrics.get(metric)
    if group.startswith(prefix) and stat is not None:
      names.append(group[len(prefix):])
      stats.append(interval(stat))
  if not names:
    raise KeyError(f"run {report['name']!r} has no group '{prefix}...' with "
                   f"{metric!r}")
  values = [s[0] for s in stats]
  ax.bar(range(len(names)), values, yerr=_errors(*zip(*stats)), capsize=3,
         color="tab:blue")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1.03)
  ax.set_ylabel(f"{metric} (bars: 95% interval)")
  ax.set_title(f"{report['name']}: {metric} by {prefix.rstrip('=')}")
  ax.grid(axis="y", alpha=0.3)
  return names


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
  """The rows of a `metrics.jsonl` (a workdir or the file); a last line
  being written is skipped."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def series(rows: Sequence[Mapping[str, float]], name: str
           ) -> tuple[np.ndarray, np.ndarray]:
  """(steps `[N]`, values `[N]`) of metric `name`, by step; a step logged
  twice (a resumed run) keeps its last value."""
  by_step = {int(r["step"]): float(r[name]) for r in rows if name in r}
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def plot_training_curves(rows: Sequence[Mapping[str, float]],
                         path: str | os.PathLike, title: str = ""
                         ) -> dict[str, list[str]]:
  """`draw_training_curves` on a new figure (one panel per `CURVE_PANELS`
  entry, titled `title`) written to `path`; returns what was drawn."""
  plt = _pyplot()
  cols = 3
  rows_n = -(-len(CURVE_PANELS) // cols)
  fig, grid = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n),
                           squeeze=False)
  axes = list(grid.ravel())
  for spare in axes[len(CURVE_PANELS):]:
    spare.set_visible(False)
  try:
    drawn = draw_training_curves(axes[:len(CURVE_PANELS)], rows)
    if title:
      fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
  finally:
    plt.close(fig)
  return drawn


def draw_training_curves(axes: Sequence[Any],
                         rows: Sequence[Mapping[str, float]]
                         ) -> dict[str, list[str]]:
  """Reward, KL, entropy, validation rates and SFT loss against step, one
  panel (Axes) each (`CURVE_PANELS`); a panel with nothing logged says so.

  Args:
    axes: one matplotlib Axes per `CURVE_PANELS` entry.
    rows: `metrics.jsonl` rows (`read_metrics`).

  Returns:
    panel title -> the metric names drawn in it (the legend's entries).
  """
  drawn = {}
  for ax, (panel, names, rate) in zip(axes, CURVE_PANELS):
    drawn[panel] = []
    for name in names:
      steps, values = series(rows, name)
      if not len(steps):
        continue
      # Sparse series (evaluations) get markers, so one point still shows.
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None,
              ms=3, lw=1.2, label=name)
      drawn[panel].append(name)
    if rate:
      ax.set_ylim(*RATE_LIM)
    if drawn[panel]:
      ax.legend(fontsize=7)
    else:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center",
              transform=ax.transAxes, color="gray")
      ax.set_xticks([])
      ax.set_yticks([])
    ax.set_title(panel, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  return drawn
