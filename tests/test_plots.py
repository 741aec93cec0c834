"""`mosaic_jax.viz.plots`: [0, 1] rate axes, an interval on every point and
bar, legends that list only what is drawn, the training-curves figure."""
import json

import matplotlib
import matplotlib.container
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest

from mosaic_jax.viz import plots


def _stat(value, low, high):
  return {"value": value, "low": low, "high": high, "n": 10}


def _report(name, security, utility, suites=None):
  groups = {"all": {"security": _stat(*security), "utility": _stat(*utility)}}
  for suite, stat in (suites or {}).items():
    groups[f"suite={suite}"] = {"security": _stat(*stat)}
  return {"name": name, "groups": groups}


@pytest.fixture
def ax():
  fig, axes = plt.subplots()
  yield axes
  plt.close(fig)


def _legend(axes):
  legend = axes.get_legend()
  return [t.get_text() for t in legend.get_texts()] if legend else []


def test_one_run_plane_keeps_unit_axes_intervals_and_no_empty_entry(ax):
  # One run close to (0.42, 1.0): the old plot zoomed to 0.40-0.44.
  run = _report("a", (0.42, 0.35, 0.49), (1.0, 0.9, 1.0))
  points = plots.draw_safety_utility(ax, [run], safety="security",
                                     utility="utility")
  np.testing.assert_allclose(points, [[0.42, 1.0]])
  assert ax.get_xlim() == plots.RATE_LIM and ax.get_ylim() == plots.RATE_LIM
  assert _legend(ax) == ["run (95% interval)"]  # no front entry: none drawn
  (bars,) = ax.containers
  x_err, y_err = bars.lines[2]  # the x and y error-bar line collections
  np.testing.assert_allclose(x_err.get_segments()[0][:, 0], [0.35, 0.49])
  np.testing.assert_allclose(y_err.get_segments()[0][:, 1], [0.9, 1.0])


def test_plane_flips_a_failure_rate_with_its_interval(ax):
  runs = [_report("a", (0.2, 0.1, 0.3), (0.5, 0.4, 0.6)),
          _report("b", (0.6, 0.5, 0.7), (0.9, 0.8, 1.0))]
  points = plots.draw_safety_utility(ax, runs, safety="security",
                                     utility="utility", lower_is_safer=True,
                                     front=np.array([True, False]))
  np.testing.assert_allclose(points[:, 0], [0.8, 0.4])
  assert _legend(ax) == ["run (95% interval)", "Pareto front (95% interval)"]
  front = ax.containers[1]
  np.testing.assert_allclose(front.lines[2][0].get_segments()[0][:, 0],
                             [0.7, 0.9])


def test_bars_are_on_unit_axis_with_intervals(ax, tmp_path):
  run = _report("a", (1, 1, 1), (1, 1, 1),
                {"bank": (0.5, 0.3, 0.7), "drive": (0.95, 0.9, 1.0)})
  assert plots.draw_group_bars(ax, run, "security", prefix="suite=") == [
      "bank", "drive"]
  assert ax.get_ylim() == (0, 1.03)
  (bars,) = [c for c in ax.containers
             if isinstance(c, matplotlib.container.BarContainer)]
  assert [b.get_height() for b in bars] == [0.5, 0.95]
  segments = bars.errorbar.lines[2][0].get_segments()
  np.testing.assert_allclose([s[:, 1] for s in segments],
                             [[0.3, 0.7], [0.9, 1.0]])
  with pytest.raises(KeyError, match="no group 'category=...'"):
    plots.plot_group_bars(run, "security", tmp_path / "x.png",
                          prefix="category=")


def test_training_curves_from_metrics_jsonl(tmp_path):
  rows = [{"step": s, "sft/loss": 3.0 - s / 10} for s in range(1, 4)]
  rows += [{"step": s, "rl/reward": 0.1 * s, "rl/kl": 0.01 * s,
            "rl/entropy": 1.0} for s in range(4, 7)]
  rows += [{"step": 5, "eval/harmful_compliance": 0.25, "eval/utility": 0.5}]
  rows += [{"step": 6, "rl/reward": 0.9}]  # a resumed step: the last wins
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "r')
  read = plots.read_metrics(tmp_path)
  assert len(read) == len(rows)
  steps, values = plots.series(read, "rl/reward")
  np.testing.assert_allclose(values, [0.4, 0.5, 0.9])
  fig, axes = plt.subplots(1, len(plots.CURVE_PANELS))
  drawn = plots.draw_training_curves(axes, read)
  by_title = dict(zip(drawn, axes))
  assert drawn == {"reward": ["rl/reward"], "KL to the reference": ["rl/kl"],
                   "entropy": ["rl/entropy"],
                   "validation": ["eval/harmful_compliance", "eval/utility"],
                   "SFT loss": ["sft/loss"]}
  for title, names in drawn.items():
    assert _legend(by_title[title]) == names
  assert by_title["validation"].get_ylim() == plots.RATE_LIM
  plt.close(fig)
  # Nothing logged: the panel says so instead of an empty legend.
  fig, axes = plt.subplots(1, len(plots.CURVE_PANELS))
  assert plots.draw_training_curves(axes, rows[:1])["reward"] == []
  assert _legend(axes[0]) == [] and axes[0].texts[0].get_text() == "not logged"
  plt.close(fig)
  path = tmp_path / "curves.png"
  plots.plot_training_curves(read, path, title="run")
  assert path.read_bytes()[:4] == b"\x89PNG"


def _split_report(harm, util):
  return {"groups": {"all": {"harmful_compliance": harm, "utility": util,
                             "privacy_leak": None}}}


def test_final_block_paths_and_before_after_table(tmp_path):
  from experiments import train  # pylint: disable=g-import-not-at-top
  report = {
      "before": {"validation": _split_report(_stat(0.25, 0.1, 0.4),
                                             _stat(0.5, 0.3, 0.7)),
                 "test": _split_report(_stat(0.5, 0.3, 0.7),
                                       _stat(0.5, 0.3, 0.7))},
      "after": {"validation": _split_report(_stat(0.125, 0.05, 0.3),
                                            _stat(0.75, 0.5, 0.9)),
                "test": _split_report(_stat(0.5, 0.3, 0.7),
                                      {"value": None})},
      "eval_tasks": {"validation": 16, "test": 32}}
  rows = [{"step": 1, "sft/loss": 2.0}, {"step": 2, "rl/reward": 0.5}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "tensorboard").mkdir()
  text = train.after_run(str(tmp_path), report)
  assert f"report:  {tmp_path}/report.json" in text
  assert f"curves:  {tmp_path}/training_curves.png" in text
  assert f"events:  {tmp_path}/tensorboard" in text
  assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
  lines = text.splitlines()
  validation = lines.index("validation (16 tasks): value [95% interval]")
  harm = lines[validation + 2].split()
  assert harm == ["harmful_compliance", "0.250", "[0.100,", "0.400]",
                  "0.125", "[0.050,", "0.300]", "-0.125"]
  test = lines.index("test (32 tasks): value [95% interval]")
  utility = next(line for line in lines[test:] if "utility " in line)
  assert utility.split() == ["utility", "0.500", "[0.300,", "0.700]",
                                     "-", "-"]
  # Every headline metric has its row, present in the report or not.
  from mosaic_jax.eval import heldout  # pylint: disable=g-import-not-at-top
  for metric in heldout.REPORT_METRICS:
    assert sum(line.split()[:1] == [metric] for line in lines) == 2, metric
