"""Bootstrap intervals, report JSON/Markdown, compare and plots."""
import numpy as np
import pytest

from mosaic_jax.eval import report
from mosaic_jax.eval.report import Samples


def test_point_value_is_the_ratio_of_sums():
  stat = report.bootstrap(Samples([1, 2, 0], [1, 3, 0]), n=0)
  assert stat == {"value": 0.75, "low": 0.75, "high": 0.75, "n": 2}
  assert report.bootstrap(Samples([0, 0], [0, 0])) is None
  with pytest.raises(ValueError, match="one shape"):
    Samples([1, 2], [1])


def test_percentiles_of_a_two_episode_rate():
  # Resampling two episodes with values 0 and 1 gives means 0, 1/2, 1 with
  # probabilities 1/4, 1/2, 1/4: the 30%/70% quantiles are both 1/2, the
  # 2.5%/97.5% ones are 0 and 1.
  samples = report.rate([0, 1])
  assert report.bootstrap(samples, 4000, seed=1, confidence=0.4) == {
      "value": 0.5, "low": 0.5, "high": 0.5, "n": 2}
  wide = report.bootstrap(samples, 4000, seed=1, confidence=0.95)
  assert (wide["low"], wide["high"]) == (0.0, 1.0)


def test_percentiles_of_a_ratio_metric():
  # Episodes (1/1) and (2/3): resampled ratios 1, 4/6 and 3/4 with
  # probabilities 1/4, 1/4, 1/2.
  stat = report.bootstrap(Samples([1, 2], [1, 3]), 4000, seed=0)
  assert stat["value"] == 0.75
  assert stat["low"] == pytest.approx(2 / 3) and stat["high"] == 1.0


def test_interval_is_seeded_and_covers_the_rate():
  rng = np.random.default_rng(7)
  samples = report.rate(rng.random(400) < 0.3)
  a = report.bootstrap(samples, 500, seed=3)
  assert a == report.bootstrap(samples, 500, seed=3)
  assert a != report.bootstrap(samples, 500, seed=4)
  assert a["low"] < 0.3 < a["high"]
  # Normal approximation: 2 * 1.96 * sqrt(p(1-p)/n) ~ 0.090.
  assert a["high"] - a["low"] == pytest.approx(0.090, abs=0.015)


def test_masked_episodes_are_outside_the_population():
  samples = report.rate([1, 0, 1, 1], mask=[True, True, False, False])
  assert report.bootstrap(samples, n=0)["value"] == 0.5
  assert report.bootstrap(samples, n=0)["n"] == 2


def _run(name, security, utility):
  groups = {"all": {"security": report.rate(security),
                    "utility": report.rate(utility)},
            "suite=bank": {"security": report.rate(security[:1]),
                           "asr": Samples([0], [0])}}
  return report.make_report(name, "builtin", groups, {"split": "heldout"},
                            n_bootstrap=0)


def test_markdown_table():
  text = report.to_markdown(_run("a", [1, 0], [1, 1]))
  assert text == (
      "## a (builtin)\n\nsplit: heldout\n\n"
      "Values with 95% percentile bootstrap intervals (0 resamples, seed 0)."
      "\n\n| metric | all | suite=bank |\n|---|---|---|\n"
      "| security | 0.500 [0.500, 0.500] | 1.000 [1.000, 1.000] |\n"
      "| utility | 1.000 [1.000, 1.000] | — |\n"
      "| asr | — | — |\n")


def test_compare_has_deltas():
  text = report.compare(_run("a", [1, 0], [1, 1]), _run("b", [1, 1], [0, 1]))
  lines = text.splitlines()
  assert lines[0] == "## a vs b"
  assert "| all | security | 0.500 [0.500, 0.500] | 1.000 [1.000, 1.000] | " \
         "+0.500 |" in lines
  assert "| all | utility | 1.000 [1.000, 1.000] | 0.500 [0.500, 0.500] | " \
         "-0.500 |" in lines
  assert "| suite=bank | asr | — | — | — |" in lines


def test_json_round_trip(tmp_path):
  run = _run("a", [1, 0], [1, 1])
  report.save_json(run, tmp_path / "a.json")
  assert report.load_json(tmp_path / "a.json") == run


def test_pareto_front_and_scatter(tmp_path):
  runs = [_run("a", [1, 1], [0, 0]), _run("b", [1, 0], [1, 1]),
          _run("c", [1, 0], [1, 0]), _run("d", [0, 0], [1, 1])]
  np.testing.assert_array_equal(
      report.pareto_front(np.array([[1, 0], [.5, 1], [.5, .5], [0, 1]])),
      [True, True, False, False])
  path = tmp_path / "pareto.png"
  points = report.plot_safety_utility(runs, path, safety="security",
                                      utility="utility")
  np.testing.assert_array_equal(points, [[1, 0], [.5, 1], [.5, .5], [0, 1]])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  flipped = report.plot_safety_utility(runs, tmp_path / "p.svg",
                                       safety="security", utility="utility",
                                       lower_is_safer=True)
  np.testing.assert_array_equal(flipped[:, 0], [0, .5, .5, 1])
  with pytest.raises(KeyError, match="no value for 'asr' in group "
                                     "'suite=bank'"):
    report.plot_safety_utility(runs, path, safety="asr", utility="security",
                               group="suite=bank")


def test_group_bars(tmp_path):
  run = _run("a", [1, 0], [1, 1])
  path = tmp_path / "bars.png"
  assert report.plot_group_bars(run, "security", path, prefix="suite=") == [
      "bank"]
  assert path.stat().st_size > 0
  with pytest.raises(KeyError, match="no group 'category=...'"):
    report.plot_group_bars(run, "security", path, prefix="category=")


def _percentile_interval(values, confidence=0.95):
  alpha = (1 - confidence) / 2
  return tuple(np.quantile(values, [alpha, 1 - alpha]))


def test_cluster_bootstrap_resamples_tasks_not_episodes():
  # 3 tasks x 2 sampled episodes (task ids a, b, c): per-task sums
  # a = 2/2, b = 1/2, c = 0/2. The cluster bootstrap resamples the 3 tasks.
  episodes = report.rate([1, 1, 1, 0, 0, 0])
  ids = ["a", "a", "b", "b", "c", "c"]
  tasks, order = report.cluster(episodes, ids)
  assert order == ["a", "b", "c"]
  np.testing.assert_array_equal(tasks.num, [2, 1, 0])
  np.testing.assert_array_equal(tasks.den, [2, 2, 2])
  stat = report.bootstrap(tasks, 200, seed=3)
  # By hand: the same 200 draws of 3 task indices, each ratio of sums.
  draws = np.random.default_rng(3).integers(0, 3, (200, 3))
  per_task = np.array([1.0, 0.5, 0.0])
  low, high = _percentile_interval(per_task[draws].mean(1))
  assert stat == {"value": 0.5, "low": low, "high": high, "n": 3}
  # Episode-level resampling of the same data is another (narrower) draw.
  assert report.bootstrap(episodes, 200, seed=3) != stat


def test_paired_bootstrap_equals_the_hand_computed_interval():
  # 4 tasks before/after: 1,0,1,0 -> 1,1,1,0 (one task fixed).
  before, after = report.rate([1, 0, 1, 0]), report.rate([1, 1, 1, 0])
  stat = report.paired_bootstrap(before, after, 300, seed=5)
  draws = np.random.default_rng(5).integers(0, 4, (300, 4))
  diff = (np.array([1, 1, 1, 0.])[draws].mean(1)
          - np.array([1, 0, 1, 0.])[draws].mean(1))
  low, high = _percentile_interval(diff)
  assert stat == {"value": 0.25, "low": low, "high": high, "n": 4}
  assert 0.0 <= low <= 0.25 <= high <= 1.0
  # A run against itself differs by exactly 0 in every resample; an empty
  # population has no difference.
  assert report.paired_bootstrap(after, after, 50)["high"] == 0.0
  assert report.paired_bootstrap(report.rate([1], [0]), report.rate([1]),
                                 10) is None
  with pytest.raises(ValueError, match="one shape"):
    report.paired_bootstrap(before, report.rate([1]))


def _table_report(name, values, ids, kinds):
  samples = {"m": report.rate(values)}
  rep = report.make_report(name, "builtin", {"all": samples}, n_bootstrap=0)
  rep["per_task"] = report.task_table(samples, ids, {"kind": kinds})
  return rep


def test_paired_differences_use_the_shared_tasks_only():
  a = _table_report("a", [1, 0, 1], ["t1", "t2", "t3"], ["x", "y", "x"])
  b = _table_report("b", [1, 1, 0], ["t2", "t1", "t9"], ["y", "x", "x"])
  # Shared: t1 (1 -> 1) and t2 (0 -> 1); t3 and t9 are left out.
  paired = report.paired_differences(a, b, n=100, seed=0)
  draws = np.random.default_rng(0).integers(0, 2, (100, 2))
  diff = np.array([0, 1.])[draws].mean(1)  # sorted ids: t1, t2
  low, high = _percentile_interval(diff)
  assert paired["all"]["m"] == {"value": 0.5, "low": low, "high": high,
                                "n": 2}
  text = report.compare(a, b, n=100, seed=0)
  assert "paired" in text and "+0.500" in text
