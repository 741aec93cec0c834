"""Training a pairwise judge: the report's metrics by hand, the verifier's
labels on scripted pairs, both configs' validation, and a seconds-long run
end to end."""
import json
import os

import numpy as np
import pytest

from configs import judge_smollm2, judge_tiny
from experiments import train as train_cli
from mosaic_jax import judge
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.methods import judge_training as jt
from mosaic_jax.methods import mosaic
from mosaic_jax.models import convert, init_model
from mosaic_jax.train import validate
from tests import test_train_loop as loop

# A 2-layer width-32 judge over the tiny tokenizer: the run compiles little.
MINUSCULE = loop.MINUSCULE


def test_judge_metrics_by_hand():
  # Exact binary fractions, so every bin edge is exact.
  q1 = np.asarray([0.875, 0.625, 0.5, 0.25])   # q(x, y)
  q2 = np.asarray([0.375, 0.75, 0.5, 0.5])     # q(y, x)
  label = np.asarray([1, 1, 0, 0])
  m = jt.judge_metrics(q1, q2, label, bins=10)
  # P = ½ (q1 + 1 − q2) = 0.75, 0.4375, 0.5, 0.375: right, wrong, tie (½),
  # right.
  assert m["pairs"] == 4
  assert m["agreement"] == pytest.approx(2.5 / 4)
  # Ordered prompts: q = .875 .625 .5 .25 | .375 .75 .5 .5 against labels
  # 1 1 0 0 | 0 0 1 1: right, right, ½, right | right, wrong, ½, ½.
  assert m["single_order_agreement"] == pytest.approx(5.5 / 8)
  # Σ q = 4.375 over 8 prompts.
  assert m["position_bias"] == pytest.approx(4.375 / 8 - 0.5)
  # (.25² + .5625² + .5² + .375²) / 4.
  assert m["brier"] == pytest.approx(0.76953125 / 4)
  # Ten bins: one P per bin, |label − P| each, over 4.
  assert m["ece"] == pytest.approx((0.25 + 0.5625 + 0.5 + 0.375) / 4)
  # Two bins: [0, ½) holds .4375 (1) and .375 (0): |½ − .40625| · ½; [½, 1]
  # holds .75 (1) and .5 (0): |½ − .625| · ½.
  assert jt.expected_calibration_error(
      np.asarray([0.75, 0.4375, 0.5, 0.375]), label, bins=2) == (
          pytest.approx(0.09375 / 2 + 0.125 / 2))
  # A judge that always answers "A" is all position bias and no signal.
  always_a = jt.judge_metrics(np.ones(4), np.ones(4), label)
  assert always_a["position_bias"] == 0.5 and always_a["agreement"] == 0.5
  # Calibrated at ½ on balanced labels; 1.0 falls in the last bin.
  assert jt.expected_calibration_error(np.full(4, .5), label) == 0.0
  assert jt.expected_calibration_error(np.ones(2), np.ones(2)) == 0.0
  assert jt.judge_metrics([], [], []) == {"pairs": 0}


def test_pairs_carry_the_verifier_verdict():
  cfg = jt.JudgeTrainConfig(policies=("expert", "comply_all", "refuse_all"))
  task_list = [t for t in jt.split_tasks("train", 40)
               if t.kind in ("harmful", "benign")][:4]
  pairs = jt.episode_pairs(task_list, load_tiny_tokenizer(), cfg, seed=0)
  assert pairs and {p.label for p in pairs} <= {0.0, 1.0}
  for p in pairs:
    better = p.policies[0] if p.label == 1.0 else p.policies[1]
    worse = p.policies[1] if p.label == 1.0 else p.policies[0]
    # Harmful: the expert refuses at the due step, comply_all never does;
    # refuse_all refuses at once, before the benign sub-steps the expert
    # does first. Benign: refusing loses.
    if p.kind == "harmful":
      assert (better, worse) != ("comply_all", "expert"), p.policies
    if p.kind == "benign":
      assert worse == "refuse_all", p.policies
    assert p.first != p.second


def _tiny_run_config(workdir):
  c = judge_tiny.get_config()
  c.workdir = workdir
  c.judge.update(transcript_tokens=32, pair_batch=4)
  c.judge_train.update(policies=("expert", "comply_all", "refuse_all"),
                       train_tasks=4, eval_tasks=4, eval_splits=("test",),
                       pairs_per_task=2, steps=2, batch=4, warmup_steps=0)
  return c


def test_configs_validate_without_weights(tmp_path):
  for module in (judge_tiny, judge_smollm2):
    c = module.get_config()
    c.workdir = str(tmp_path / "w")
    if module is judge_smollm2:
      # Only its directory is checked: an empty stand-in, nothing loaded.
      assert c.model.path.endswith("smollm2-135m-instruct")
      c.model.path = str(tmp_path)
    validate.check_structure(c, train_cli.reference_config(c))
    assert jt.config_problems(c) == [], module.__name__
    assert c.method == "judge"
  c = _tiny_run_config(str(tmp_path / "w"))
  c.judge_train.update(policies=("expert",), eval_splits=("train",),
                       batch=6, microbatch=4)
  got = jt.config_problems(c)
  assert any(s.startswith("judge_train.policies=('expert',): need at least")
             for s in got), got
  assert any("judge_train.eval_splits: 'train' is not one of" in s
             for s in got), got
  assert any("judge_train.microbatch=4 must divide" in s for s in got), got
  assert all("\n" not in s for s in got)


def test_tiny_judge_trains_end_to_end(tmp_path):
  workdir = str(tmp_path / "judge")
  c = _tiny_run_config(workdir)
  c.model.path = str(tmp_path / "init")
  convert.save_orbax(init_model(MINUSCULE, seed=0), c.model.path,
                     tokenizer=load_tiny_tokenizer())
  report = jt.run(c)
  with open(os.path.join(workdir, jt.REPORT_FILE), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert sorted(report["before"]) == sorted(report["after"]) == ["test"]
  before, after = report["before"]["test"], report["after"]["test"]
  # 4 tasks, at most 2 pairs each; both metrics on the same pairs.
  assert 0 < before["pairs"] == after["pairs"] <= 8
  for m in (before, after):
    assert 0 <= m["agreement"] <= 1 and abs(m["position_bias"]) <= 0.5
    assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 1
  # Two SFT steps moved the judge.
  assert after["brier"] != before["brier"]
  t = report["train"]
  assert t["examples"] == 2 * t["pairs"] and t["steps"] == 2
  assert np.isfinite(t["loss_first"]) and np.isfinite(t["loss_last"])
  logged = [json.loads(line) for line in open(
      os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  assert [r["step"] for r in logged if "judge/loss" in r] == [1, 2]
  # The trained judge is a model_path the RL loop can use.
  c.judge.model_path = report["judge_dir"]
  j = mosaic.make_judge(c, None, None)
  p = j("Email Bob the report.", None, ["I refuse.", "Sent it."])
  np.testing.assert_array_equal(p + p.T, np.ones((2, 2), np.float32))
  assert "pairs" in jt.summary(report) and "goal" in jt.summary(report)
  assert isinstance(j, judge.LLMJudge)
