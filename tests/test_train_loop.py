"""The MOSAIC and FATE loops end to end on a minuscule model: outputs,
restore, crashes and preemption at chosen points, resume.

The model is 2 layers of width 32 over the tiny tokenizer, saved as an orbax
model directory so the configs load it through `model.path`; episodes are one
16-token turn, so a run is dominated by compiles. The CLI runs share a
persistent compilation cache; faults are injected with `MOSAIC_FAULT`
(`mosaic_jax/train/faults.py`), so every kill lands at a known point.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from mosaic_jax import data as data_lib
from mosaic_jax import judge as judge_lib
from mosaic_jax import rollout as rollout_lib
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import scripted, tasks
from mosaic_jax.eval import harness
from mosaic_jax.models import ModelConfig, RopeConfig, convert, init_model
from mosaic_jax import rewards, sections
from mosaic_jax.eval import heldout
from mosaic_jax.methods import mosaic
from mosaic_jax.train import checkpoint, faults, run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_STEPS, RL_STEPS, EVERY = 2, 3, 2
TOTAL = SFT_STEPS + RL_STEPS
# Checkpointed steps: the interval and the last step of each phase.
SAVED = sorted({s for s in range(1, TOTAL + 1) if s % EVERY == 0}
               | {SFT_STEPS, TOTAL})

MINUSCULE = ModelConfig(
    family="qwen3", vocab_size=2048, hidden_size=32, intermediate_size=64,
    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
    rope=RopeConfig(theta=1e4), qk_norm=True, tie_embeddings=True,
    max_position_embeddings=1024)


def _overrides(model_dir: str, data_dir: str, workdir: str) -> dict:
  """configs/tiny.py fields changed for the minuscule run."""
  return {
      "workdir": workdir, "model.path": model_dir, "data.data_dir": data_dir,
      "sft.steps": SFT_STEPS, "sft.batch": 2, "sft.microbatch": 0,
      "rl.steps": RL_STEPS, "rl.group_size": 2, "rl.tasks_per_step": 2,
      "rl.microbatch": 0, "rollout.max_turns": 1,
      # 640: test_ood's longest prompts are 516 tokens.
      "rollout.max_tokens_per_turn": 16, "rollout.max_total_length": 640,
      "eval.max_tasks": 4, "eval.batch": 4, "eval.every": RL_STEPS,
      "eval.claim_samples": 1,
      "checkpoint.every": EVERY, "checkpoint.keep": 10,
  }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """A persistent compilation cache the module's CLI runs share."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """(model dir, data dir) shared by the module's runs."""
  root = tmp_path_factory.mktemp("loop_assets")
  model_dir, data_dir = str(root / "model"), str(root / "data")
  convert.save_orbax(init_model(MINUSCULE, seed=0), model_dir,
                     tokenizer=load_tiny_tokenizer())
  config = _config(model_dir, data_dir, str(root / "unused"))
  data_lib.prepare(config.data, [data_lib.TASKS])
  return model_dir, data_dir


def _config(model_dir, data_dir, workdir):
  from configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  for name, value in _overrides(model_dir, data_dir, workdir).items():
    section, _, field = name.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def _metrics(workdir: str) -> dict[tuple[int, str], float]:
  """(step, name) -> value of every metric but wall times and memory; a step
  logged again after a resume keeps its last value."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      step = record.pop("step")
      for name, value in record.items():
        if not name.startswith((run_lib.TIME_PREFIX, run_lib.HOST_PREFIX)):
          out[step, name] = value
  return out


def _assert_same_metrics(resumed: str, straight: str) -> None:
  expected, got = _metrics(straight), _metrics(resumed)
  assert got.keys() == expected.keys()
  for key in sorted(expected):
    np.testing.assert_equal(got[key], expected[key], err_msg=str(key))


def _report_after(workdir: str) -> dict:
  with open(os.path.join(workdir, run_lib.REPORT_FILE), encoding="utf-8") as f:
    return json.load(f)["after"]


def test_stratified_subset_keeps_kind_shares():
  test = tasks.all_tasks(split="test")
  subset = heldout.stratified_subset(test, 60)
  kinds = [t.kind for t in subset]
  # 302 tasks: 96 harmful, 80 injection, 78 benign, 48 privacy; exact
  # shares 19.07, 15.89, 15.50, 9.54: floors, then the two largest remainders.
  assert len(subset) == 60
  assert {k: kinds.count(k) for k in set(kinds)} == {
      "harmful": 19, "injection": 16, "benign": 15, "privacy": 10}
  assert subset == [t for t in test if t in subset]
  assert heldout.stratified_subset(test, 0) == list(test)


class _Alternating:
  """Row n of a rollout plays scripted policy n % 2 (a mixed group)."""
  name = "alternating"

  def __init__(self, first, second, tokenizer):
    self.policies = [rollout_lib.ScriptedPolicy(scripted.POLICIES[p](),
                                                tokenizer)
                     for p in (first, second)]

  def _turns(self, method, new_tokens, episodes, key, config):
    outs = [getattr(p, method)(
        [t if n % 2 == i else None for n, t in enumerate(new_tokens)],
        episodes, key, config) for i, p in enumerate(self.policies)]
    return [outs[n % 2][n] for n in range(len(new_tokens))]

  def begin(self, new_tokens, episodes, key, config):
    return self._turns("begin", new_tokens, episodes, key, config)

  def step(self, new_tokens, episodes, key, config):
    return self._turns("step", new_tokens, episodes, key, config)


def _group(first, second, kind):
  tok = load_tiny_tokenizer()
  task = tasks.all_tasks(split="train", kind=kind)[0]
  config = rollout_lib.RolloutConfig(max_turns=6, max_tokens_per_turn=256,
                                     max_total_length=2048, group_size=2)
  return rollout_lib.rollout(_Alternating(first, second, tok), [task], tok,
                             config)


def test_rewards_format_bonus_and_length_penalty():
  import ml_collections  # pylint: disable=import-outside-toplevel
  rl = ml_collections.ConfigDict(dict(
      group_size=2, reward="pairwise", l0=400.0, format_think_bonus=1.0,
      format_valid_bonus=0.5, scalar_weights=(1.0, 2.0, 0.0, 0.0)))
  out = _group("expert", "comply_all", "harmful")
  got, fmt = rewards.mosaic_group_rewards(out, judge_lib.VerifierJudge(),
                                          rl)
  # Both plan every turn and end on a terminal action: 1 + 0.5 each; the
  # refusal wins the one comparison; both are far below L0 tokens.
  assert fmt.tolist() == [[1.5, 1.5]]
  assert got.tolist() == [[2.5, 1.5]]
  rl.l0 = 10.0
  lengths = np.asarray(out.trajectories.loss_mask).sum(1)
  got, _ = rewards.mosaic_group_rewards(out, judge_lib.VerifierJudge(), rl)
  np.testing.assert_allclose(
      got[0], [2.5, 1.5] - (lengths - 10.0) / 10.0, rtol=1e-6)
  rl.reward, rl.l0 = "scalar", 400.0
  z = np.asarray(out.trajectories.z)
  got, _ = rewards.mosaic_group_rewards(out, judge_lib.VerifierJudge(), rl)
  np.testing.assert_allclose(got[0], z[:, 0] + 2 * z[:, 1] + 1.5,
                             rtol=1e-6)
  assert z[0, 0] == 1 and z[1, 0] == 0
  # A malformed episode never plans, never parses and runs into max_turns.
  malformed = _group("malformed", "expert", "benign")
  assert malformed.episodes[0].end_reason == "max_turns"
  assert [rewards.format_bonus(e, think_bonus=1.0, valid_bonus=0.5)
          for e in malformed.episodes] == [0.0, 1.5]
  rl.reward = "ranked"
  with pytest.raises(ValueError, match="unknown rl.reward"):
    rewards.mosaic_group_rewards(out, judge_lib.VerifierJudge(), rl)


def _plant_crash_leftovers(workdir: str) -> None:
  """What a run killed while writing leaves behind: a half-written
  checkpoint step, reference policy and evaluation file."""
  partial = os.path.join(workdir, "checkpoints",
                         f"{SFT_STEPS}{checkpoint.TMP_SUFFIX}", "state")
  os.makedirs(partial)
  with open(os.path.join(partial, "_METADATA"), "w", encoding="utf-8") as f:
    f.write('{"tree_metadata": {"params"')
  os.makedirs(os.path.join(workdir, run_lib.REFERENCE_DIR + ".tmp", "params"))
  with open(os.path.join(workdir, run_lib.BEFORE_FILE + ".tmp"), "w",
            encoding="utf-8") as f:
    f.write('{"harmful_compliance": 0.')


def _bar_lines(err: str, label: str) -> list[str]:
  """The states of the console bar `label` (train.progress) in `err`."""
  text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err)
  return [line.strip() for line in re.split(r"[\r\n]", text)
          if line.strip().startswith(label + ":")]


def test_loop_writes_metrics_report_and_restores(assets, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  _plant_crash_leftovers(workdir)
  config = _config(*assets, workdir)
  report = mosaic.run(config)
  # One bar per phase (train.progress): SFT and RL steps with their loss,
  # reward and KL, each evaluation its tasks and the split's rates.
  err = capsys.readouterr().err
  sft, rl = _bar_lines(err, "SFT"), _bar_lines(err, "RL")
  assert f"{SFT_STEPS}/{SFT_STEPS}" in sft[-1] and "loss=" in sft[-1]
  assert f"{RL_STEPS}/{RL_STEPS}" in rl[-1]
  # The last evaluation's validation rates stay on the phase's bar.
  assert re.findall(r"(\w+)=", rl[-1]) == [
      "loss", "reward", "kl", "harmful_compliance", "utility", "eta"]
  for name in ("warm_start", f"step_{TOTAL}", "final"):
    last = _bar_lines(err, f"eval ({name})")[-1]
    assert "harmful_compliance=" in last and "utility=" in last, last
  with open(tmp_path / "run" / run_lib.REPORT_FILE, encoding="utf-8") as f:
    written = json.load(f)
  assert written["kind"] == heldout.TRAINING_KIND
  assert written["eval_tasks"] == {"validation": 4, "test": 4, "test_ood": 4}
  for when in ("before", "after"):
    # Every split in before and after; only the final splits have the
    # sampled run; the scripted floors are beside each.
    assert sorted(written[when]) == ["test", "test_ood", "validation"]
    for split, rep in written[when].items():
      assert rep["meta"]["split"] == split and rep["meta"]["tasks"] == 4
      assert ("sampled" in rep) == (split != "validation"), (when, split)
      assert sorted(rep["baselines"]) == ["lazy", "refuse_all"]
      assert rep["baselines"]["lazy"]["groups"]["all"]["utility"][
          "value"] == 0
      kinds = set(rep["per_task"]["labels"]["kind"])
      for key in heldout.REPORT_METRICS:
        stat = rep["groups"]["all"][key]
        # 4 stratified tasks: one of each kind, except test_ood's (2
        # injection tasks, no privacy task: its leak rate is empty).
        if (split, key) == ("test_ood", "privacy_leak"):
          assert stat is None and "privacy" not in kinds
          continue
        assert 0.0 <= stat["low"] <= stat["value"] <= stat["high"] <= 1.0, (
            when, split, key, stat)
  assert written["after"] == report["after"]
  # --compare on the training workdir alone: before vs after, paired.
  text = harness.compare_runs(*harness.compare_paths([workdir]),
                              str(tmp_path / "cmp"))
  assert "# builtin/test_ood" in text and "paired" in text

  logged = _metrics(workdir)
  assert {s for s, n in logged if n == "sft/loss"} == {1, 2}
  assert {s for s, n in logged if n == "rl/loss"} == {3, 4, 5}
  assert {s for s, n in logged if n == "eval/utility"} == {SFT_STEPS, TOTAL}
  assert not any(logged[s, "sft/skipped"] for s in (1, 2))
  assert os.path.isdir(tmp_path / "run" / "tensorboard")
  # The leftovers were replaced, never read: the run's own step SFT_STEPS
  # restores, the reference loads.
  assert sorted(os.listdir(tmp_path / "run")) == [
      "checkpoints", run_lib.BEFORE_FILE, "metrics.jsonl",
      run_lib.REFERENCE_DIR, run_lib.REPORT_FILE, run_lib.RUN_CONFIG_FILE,
      "tensorboard"]
  ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
  assert sorted(os.listdir(ckpt.directory)) == [str(s) for s in SAVED]
  assert ckpt.all_steps() == SAVED
  ckpt.close()
  convert.load_orbax(str(tmp_path / "run" / run_lib.REFERENCE_DIR))
  # Running the finished job again restores the last checkpoint, trains no
  # further, and the restored policy evaluates exactly as before.
  again = mosaic.run(config)
  assert again["after"] == report["after"]
  assert again["before"] == report["before"]
  steps_logged = [json.loads(line)["step"] for line in open(
      tmp_path / "run" / "metrics.jsonl", encoding="utf-8")]
  assert max(steps_logged) == TOTAL


def test_loop_stops_after_non_finite_updates_in_a_row(assets, tmp_path,
                                                      capsys, monkeypatch):
  # An infinite learning rate turns every SFT update non-finite. The config
  # checks refuse one (validate.start_problems, OptimizerConfig's own
  # check), so this test lifts them.
  monkeypatch.setattr(sections, "finite", lambda *args, **kwargs: None)
  config = _config(*assets, str(tmp_path / "run"))
  config.sft.update(lr=float("inf"), steps=4)
  config.checkpoint.every = 1
  config.max_nonfinite_steps = 2
  with pytest.raises(faults.NonFiniteError,
                     match="sft step 2: 2 non-finite updates in a row"):
    mosaic.run(config)
  path = tmp_path / "run" / faults.NONFINITE_FILE
  records = [json.loads(line) for line in open(path, encoding="utf-8")]
  assert [(r["step"], r["phase"], r["in_a_row"]) for r in records] == [
      (1, "sft", 1), (2, "sft", 2)]
  assert all(len(r["task_ids"]) == 2 for r in records)
  assert "sft step 1: non-finite update skipped" in capsys.readouterr().err
  logged = _metrics(str(tmp_path / "run"))
  assert logged[1, "sft/skipped"] == logged[2, "sft/skipped"] == 1.0
  # Step 1 was checkpointed with the initial (finite) params; the step that
  # stopped the run was not.
  ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
  assert ckpt.all_steps() == [1]
  ckpt.close()


def _command(model_dir, data_dir, workdir):
  flags = [f"--config.{k}={v}" for k, v in
           _overrides(model_dir, data_dir, workdir).items()]
  return [sys.executable, "-m", "experiments.train",
          "--config=configs/tiny.py", *flags]


def _env(cache_dir, fault=None):
  env = dict(os.environ)
  # One CPU device (conftest simulates eight for the in-process tests) and a
  # compilation cache the runs share.
  env.pop("XLA_FLAGS", None)
  env.pop(faults.FAULT_ENV, None)
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONPATH=ROOT)
  if fault:
    env[faults.FAULT_ENV] = fault
  return env


def _run(command, cache_dir, fault=None):
  # A run takes 10-40 s of CPU; the limit leaves room for a shared machine
  # whose load slows it tenfold.
  return subprocess.run(command, cwd=ROOT, env=_env(cache_dir, fault),
                        capture_output=True, text=True, timeout=1200)


def _fault_plan(seed):
  """Faults at random points of the 5-step run, in run order: SIGKILL during
  a rollout, during an update and during a checkpoint write (at a step that
  saves), and one SIGTERM at a step off the checkpoint interval; each at its
  own step (a kill at a step the run later resumes before is reached again,
  so every fault fires)."""
  rng = random.Random(seed)
  write = rng.choice(SAVED)
  term_step = rng.choice([s for s in range(1, TOTAL + 1) if s not in SAVED])
  rollout_step, update_step = rng.sample(
      [s for s in range(1, TOTAL + 1) if s not in (write, term_step)], 2)
  plan = [("kill", "checkpoint-write", write),
          ("kill", "rollout", rollout_step), ("kill", "update", update_step),
          ("term", rng.choice(["rollout", "update"]), term_step)]
  return sorted(plan, key=lambda f: f[2])


def _latest(workdir):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  ckpt.close()
  return step


def test_faults_at_random_points_resume_to_the_uninterrupted_run(
    assets, cache_dir, tmp_path):
  straight = str(tmp_path / "straight")
  done = _run(_command(*assets, straight), cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = str(tmp_path / "faulty")
  command = _command(*assets, workdir)
  plan = _fault_plan(seed=0)
  committed = set(SAVED)
  for sig, point, step in plan:
    out = _run(command, cache_dir, fault=f"{sig}@{point}:{step}")
    label = (sig, point, step)
    after = _latest(workdir)
    if sig == "kill":
      # Died at once; the newest checkpoint is the last one committed
      # before the fault, never the step it was writing.
      assert out.returncode == -signal.SIGKILL, (label, out.stderr[-3000:])
      assert after == max([s for s in committed if s < step],
                          default=None), label
      if point == "checkpoint-write":
        # Killed mid-write: part of the step is on disk, uncommitted.
        tmp = os.path.join(workdir, "checkpoints",
                           f"{step}{checkpoint.TMP_SUFFIX}")
        assert os.listdir(tmp), label
    else:
      # SIGTERM: the step finishes, is checkpointed off the interval, and
      # the process exits with a message, no traceback.
      assert out.returncode == faults.PREEMPTED_EXIT, (label,
                                                       out.stderr[-3000:])
      assert after == step, label
      assert f"preempted (SIGTERM): stopped after step {step}" in out.stderr
      assert "Traceback" not in out.stderr
      committed.add(step)
    assert not os.path.exists(os.path.join(workdir, run_lib.REPORT_FILE))
  done = _run(command, cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  # Data order, PRNG keys and params came back at every resume: each step's
  # metrics, the evaluations and the report equal the uninterrupted run's.
  _assert_same_metrics(workdir, straight)
  assert _report_after(workdir) == _report_after(straight)


# The FATE CLI with repairs by the scripted expert, a stand-in for a policy
# competent enough to repair its failures (the minuscule model never writes a
# valid turn, so its own repairs would leave the replay buffer empty). The
# expert's episodes get room for their turns; the model's keep the tiny
# limits.
FATE_DRIVER = """
import dataclasses
from absl import app
from mosaic_jax import rollout
from mosaic_jax.methods import fate
from mosaic_jax.envs import scripted
from experiments import train

_round, _rollout = fate.run_round, fate.rollout

def run_round(policy, task_list, tokenizer, *args, **kwargs):
  expert = rollout.ScriptedPolicy(scripted.POLICIES["expert"](), tokenizer)
  def repair_rollout(policy, tasks, tok, config, **kw):
    if policy is expert:
      config = dataclasses.replace(config, max_turns=8,
                                   max_tokens_per_turn=256)
    return _rollout(policy, tasks, tok, config, **kw)
  fate.rollout = repair_rollout
  return _round(policy, task_list, tokenizer, *args, repair_policy=expert,
                **kwargs)

fate.run_round = run_round
app.run(train.main)
"""
# Steps: SFT 1-2; round 1: PFPO SFT 3, PG 4 (checkpoint); round 2: 5, 6.
ROUND_1_END, ROUND_2_END = SFT_STEPS + 2, SFT_STEPS + 4


def _fate_command(model_dir, data_dir, workdir):
  overrides = _overrides(model_dir, data_dir, workdir)
  del overrides["rl.steps"], overrides["eval.every"]
  overrides.update({
      "fate.rounds": 2, "fate.tasks_per_round": 2, "fate.num_candidates": 2,
      "fate.sft_steps": 1, "fate.sft_batch": 2, "fate.pg_steps": 1,
      "fate.transcript_tokens": 128, "fate.prompt_extra_tokens": 1536,
      "fate.sft_max_len": 2048})
  return [sys.executable, "-c", FATE_DRIVER, "--config=configs/fate_tiny.py",
          *[f"--config.{k}={v}" for k, v in overrides.items()]]


def _extra(workdir, step):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  extra = ckpt.extra(step)
  ckpt.close()
  return extra


def _records(workdir):
  """metrics.jsonl as (step, name, value) in write order, without wall
  times and memory."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [(r["step"], k, v) for r in map(json.loads, f) for k, v in r.items()
            if k != "step" and not k.startswith((run_lib.TIME_PREFIX,
                                                  run_lib.HOST_PREFIX))]


def test_fate_killed_in_a_round_replays_it_from_the_restored_buffer(
    assets, cache_dir, tmp_path):
  # Killed in round 2 after its mining and its PFPO SFT step (trained on
  # entries drawn from the buffer round 1 filled) were logged: up to there
  # the killed run is an uninterrupted run, the reference for the replay.
  workdir = str(tmp_path / "fate")
  command = _fate_command(*assets, workdir)
  out = _run(command, cache_dir, fault=f"kill@update:{ROUND_2_END}")
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert _latest(workdir) == ROUND_1_END
  first_round = _extra(workdir, ROUND_1_END)
  assert first_round["round"] == 1 and first_round["buffer"]["entries"]
  uninterrupted = _records(workdir)
  round_2 = [r for r in uninterrupted if r[0] >= ROUND_1_END
             and r[1].startswith(("fate/", "fate_sft/"))]
  assert {name for _, name, _ in round_2} >= {"fate/buffer_size",
                                              "fate_sft/loss"}

  done = _run(command, cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  # A bar per round (train.progress); the resumed run starts at round 2.
  assert "2/2" in _bar_lines(out.stderr, "FATE round 1/2")[-1]
  assert _bar_lines(out.stderr, "FATE round 2/2")
  assert not _bar_lines(done.stderr, "FATE round 1/2")
  assert "2/2" in _bar_lines(done.stderr, "FATE round 2/2")[-1]
  # The resumed run restarts round 2 from the round-1 checkpoint: buffer,
  # both task iterators, params and key restored, so it mines the same
  # failures, keeps the same repairs and samples the same SFT batch.
  replayed = _records(workdir)[len(uninterrupted):]
  assert [r for r in replayed if r[0] <= ROUND_1_END + 1
          and r[1].startswith(("fate/", "fate_sft/"))] == round_2
  assert any(name == "fate_pg/loss" and step == ROUND_2_END
             for step, name, _ in replayed)
  final = _extra(workdir, ROUND_2_END)
  assert final["round"] == 2
  assert len(final["buffer"]["entries"]) > len(first_round["buffer"]["entries"])
  with open(os.path.join(workdir, run_lib.REPORT_FILE), encoding="utf-8") as f:
    assert json.load(f)["buffer_size"] == len(final["buffer"]["entries"])


def test_fate_sigterm_inside_a_round_resumes_to_the_uninterrupted_run(
    assets, cache_dir, tmp_path):
  # One round of two PFPO-SFT updates and one PG update: SFT 1-2; the round
  # mines, then 3 (SFT), 4 (SFT, inside the round on the interval:
  # checkpoint.every = 2), 5 (PG, the round's end). SIGTERM lands in update
  # 3, so the resumed run draws its second SFT batch from the restored
  # sampler.
  def command(workdir):
    return _fate_command(*assets, workdir) + [
        "--config.fate.rounds=1", "--config.fate.sft_steps=2"]
  straight = str(tmp_path / "straight")
  done = _run(command(straight), cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  inside = _extra(straight, 4)
  assert (inside["round"], inside["round_step"]) == (0, 2)
  assert inside["buffer"]["entries"] and "sft_rng" in inside

  workdir = str(tmp_path / "preempted")
  out = _run(command(workdir), cache_dir, fault="term@update:3")
  assert out.returncode == faults.PREEMPTED_EXIT, out.stderr[-3000:]
  assert "preempted (SIGTERM): stopped after step 3" in out.stderr
  assert _latest(workdir) == 3
  saved = _extra(workdir, 3)
  assert (saved["round"], saved["round_step"]) == (0, 1)
  done = _run(command(workdir), cache_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  # Resumed after the round's mining and first update with its buffer, SFT
  # sampler, task iterators, params and key: every metric, the last
  # checkpoint's extra and the report equal the uninterrupted run's.
  _assert_same_metrics(workdir, straight)
  assert _extra(workdir, 5) == _extra(straight, 5)
  assert _report_after(workdir) == _report_after(straight)
