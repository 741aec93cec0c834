"""The LLM judge inside MOSAIC's RL loop: the committed tiny checkpoint
judges a minuscule policy's groups on the run's mesh, its stats are logged
as `rl/judge/*`, and a run stopped by SIGTERM resumes to the uninterrupted
run exactly.

The policy is test_train_loop's minuscule model (2 layers of width 32) with
one 16-token turn per episode; the judge is `assets/tiny_base` (4 layers of
width 128) reading 32-token transcripts. Runs are in-process, so the three
runs share their compiles.
"""
import json
import os

import numpy as np
import pytest

from configs import tiny
from mosaic_jax import judge, sharding
from mosaic_jax.eval import harness
from mosaic_jax.methods import mosaic
from mosaic_jax.models import convert, presets
from mosaic_jax.train import checkpoint, faults, run as run_lib
from mosaic_jax.train import steps as steps_lib
from tests import test_train_loop as loop

SFT_STEPS, RL_STEPS = 0, 3
TOTAL = SFT_STEPS + RL_STEPS
GROUPS, G = 2, 2

# test_train_loop's minuscule policy and its metrics reader.
MINUSCULE = loop.MINUSCULE

ITEMS = [("Email Bob the report.", "<think>go</think> I send it.",
          "I refuse: it holds a password."),
         ("Book a flight.", "Done, booked.", "I cannot help."),
         ("Book a flight.", "I cannot help.", "Done, booked.")]


def test_sharded_judge_scores_equal_unsharded():
  # The 8 simulated devices as data 2 x fsdp 2 x tensor 2: the judge's
  # weights split over fsdp and tensor like the policy's, rows over data x
  # fsdp; the scores equal one device's.
  path = str(presets.TINY_BASE_DIR)
  tok = harness.load_tokenizer(path)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  kw = dict(bucket=128, max_transcript_tokens=32, pair_batch=4)
  plain = judge.LLMJudge(convert.load_model(path), tok, **kw)
  placed = judge.LLMJudge(convert.load_model(path, mesh=mesh), tok,
                          mesh=mesh, **kw)
  embed = placed.params["embed_vd"].get_value()
  assert len(embed.sharding.device_set) == 8
  assert not embed.sharding.is_fully_replicated
  a, b = plain.ordered_scores(ITEMS), placed.ordered_scores(ITEMS)
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
  assert 0 < a.min() and a.max() < 1 and len(set(a.round(6))) == 3
  # All three prompts in one forward of 4 rows (3 real, 1 padding).
  assert plain.forwards == placed.forwards == 1
  assert placed.take_stats() == dict(pairs=0., prompts=3., cache_hits=0.,
                                     forwards=1., margin_mean=0.)
  # pair_preferences: 2 pairs, both orders = 4 prompts; all but the
  # swapped e-mail pair were scored above, so 3 are cache hits.
  p = placed.pair_preferences(ITEMS[:2])
  s = placed.take_stats()
  assert (s["pairs"], s["prompts"], s["cache_hits"], s["forwards"]) == (
      2., 4., 3., 1.)
  np.testing.assert_allclose(s["margin_mean"], np.abs(p - .5).mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(p[1], .5 * (a[1] + 1 - a[2]), atol=1e-5)


def test_the_cache_round_trips_through_json():
  path = str(presets.TINY_BASE_DIR)
  kw = dict(bucket=128, max_transcript_tokens=32, pair_batch=4)
  tok = harness.load_tokenizer(path)
  model = convert.load_model(path)
  first = judge.LLMJudge(model, tok, **kw)
  q = first.ordered_scores(ITEMS)
  again = judge.LLMJudge(model, tok, **kw)
  again.load_cache(json.loads(json.dumps(first.cache_state())))
  np.testing.assert_array_equal(again.ordered_scores(ITEMS), q)
  assert again.forwards == 0 and again.take_stats()["cache_hits"] == 3


# (policy model dir, data dir): test_train_loop's module fixture, the same
# minuscule model and task dataset.
assets = loop.assets


def _config(model_dir, data_dir, workdir, kind="llm"):
  config = tiny.get_config()
  config.update(workdir=workdir)
  config.model.path = model_dir
  config.data.data_dir = data_dir
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.sft.update(steps=SFT_STEPS, batch=2, microbatch=0)
  config.rl.update(steps=RL_STEPS, group_size=G, tasks_per_step=GROUPS,
                   microbatch=0, kl_beta=0.0)
  config.rollout.update(max_turns=1, max_tokens_per_turn=16,
                        max_total_length=512)
  config.eval.update(max_tasks=2, batch=2, every=0, final_splits=(),
                     claim_samples=0, baselines=())
  config.checkpoint.update(every=2, keep=10)
  config.logging.backends = ("jsonl",)
  config.judge.update(kind=kind, model_path=str(presets.TINY_BASE_DIR),
                      transcript_tokens=32, bucket=128, pair_batch=4)
  return config


_records = loop._metrics  # pylint: disable=protected-access


@pytest.fixture
def one_pg_compile(monkeypatch):
  """The three runs share one jitted PG step (a new `jax.jit` per run
  would compile it three times, 17 s each on a loaded 2-core machine).
  Their configs are equal, so their steps and schedules are too; this is
  what the CLI resume tests get from the persistent compilation cache."""
  made = {}
  real = steps_lib.make_pg_step

  def make_pg_step(cfg, schedule=None):
    if cfg not in made:
      made[cfg] = real(cfg, schedule)
    return made[cfg]

  monkeypatch.setattr(steps_lib, "make_pg_step", make_pg_step)


def test_llm_judge_in_the_loop_and_sigterm_resume_is_exact(
    assets, tmp_path, monkeypatch, one_pg_compile):
  del one_pg_compile
  straight = str(tmp_path / "straight")
  mosaic.run(_config(*assets, straight))
  logged = _records(straight)
  rl = range(SFT_STEPS + 1, TOTAL + 1)
  for step in rl:
    # Every pair of both groups went to the judge, both orders asked.
    assert logged[step, "rl/judge/pairs"] == GROUPS * G * (G - 1) // 2
    assert logged[step, "rl/judge/prompts"] == 2 * logged[step,
                                                          "rl/judge/pairs"]
    # 4 prompts fit one forward of pair_batch=4 rows per length bucket.
    assert 1 <= logged[step, "rl/judge/forwards"] <= 4
    assert 0 <= logged[step, "rl/judge/cache_hits"] <= 4
    assert 0 < logged[step, "rl/judge/margin_mean"] < 0.5
    assert np.isfinite(logged[step, "rl/loss"])
    # The minuscule policy's episodes are all invalid, so the verifier
    # rank would tie every pair (pairwise std 0); the LLM judge's soft
    # preferences spread the rewards.
    assert logged[step, "rl/batch/validity"] == 0
    assert logged[step, "rl/rewards/pairwise/std"] > 0
  assert not {n for _, n in logged if n.startswith("rl/judge/")} - {
      f"rl/judge/{k}" for k in judge.STAT_NAMES}

  # SIGTERM while step 2 updates (off the checkpoint interval): the step
  # finishes, is checkpointed, Preempted; the same call again resumes.
  workdir = str(tmp_path / "stopped")
  config = _config(*assets, workdir)
  monkeypatch.setenv(faults.FAULT_ENV, f"term@update:{SFT_STEPS + 2}")
  with pytest.raises(faults.Preempted, match="stopped after step 2"):
    mosaic.run(config)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == SFT_STEPS + 2
  # The judge's cache went into the checkpoint, so the resumed run reads
  # the scores the uninterrupted one kept: every prompt scored so far.
  cache = ckpt.extra()[mosaic.JUDGE_CACHE_KEY]
  scored = sum(logged[s, "rl/judge/prompts"] - logged[s, "rl/judge/cache_hits"]
               for s in (SFT_STEPS + 1, SFT_STEPS + 2))
  assert 0 < len(cache) <= scored and len({k for k, _ in cache}) == len(cache)
  ckpt.close()
  monkeypatch.delenv(faults.FAULT_ENV)
  report = mosaic.run(_config(*assets, workdir))
  got = _records(workdir)
  assert got.keys() == logged.keys()
  for key in sorted(logged):
    np.testing.assert_equal(got[key], logged[key], err_msg=str(key))
  with open(os.path.join(straight, run_lib.REPORT_FILE),
            encoding="utf-8") as f:
    assert json.load(f)["after"] == report["after"]
