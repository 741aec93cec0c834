"""Multi-host training equals single-host training.

The minuscule MOSAIC and FATE jobs of `tests/test_train_loop.py` (SFT, RL or
a FATE round with its mining, repairs and both PFPO updates, the held-out
evaluations, checkpoints) run as 2 processes x 1 CPU device, joined over
gloo by `experiments.launch`, and as 1 process x 2 devices: the same mesh
shape, so the same global program. Every process draws the step's global
batch, plays its own block of it and receives every episode's metadata
(`train.run`'s ownership rule; sampling keys are per global row), so every
logged metric, the reports and the final parameters agree (to 1e-5; on CPU
they are bit-equal). The MOSAIC job runs with the LLM judge (on the mesh,
its cache checkpointed); its 2-process run has one process killed mid-run
and both relaunched: it resumes from the last checkpoint, and its metrics
still equal the uninterrupted 1-process run's.
"""
import json
import os
import signal
import subprocess
import sys
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import launch
from mosaic_jax.train import faults
from tests import test_train_loop as loop

# The module fixtures of the loop tests: the minuscule model, the task
# dataset and a compilation cache shared by this module's runs.
assets, cache_dir = loop.assets, loop.cache_dir
TOL = 1e-5
# A run takes 30-90 s of CPU; the limit leaves room for a loaded machine.
TIMEOUT_S = 900
# Killed after RL step 5's update, before its checkpoint: the newest
# checkpoint is step 4 (checkpoint.every = 2).
KILL_STEP = loop.TOTAL


# The MOSAIC job with the LLM judge (the frozen reference policy as judge):
# every process scores the whole step's pairs, sharded over all devices.
LLM_JUDGE = ["--config.judge.kind=llm", "--config.judge.transcript_tokens=32",
             "--config.judge.bucket=128", "--config.judge.pair_batch=4"]


def _mosaic_args(model_dir, data_dir, workdir):
  return loop._command(model_dir, data_dir, workdir)[1:] + LLM_JUDGE


def _fate_args(model_dir, data_dir, workdir):
  # No sampled evaluation (the MOSAIC test has it): the round is the point.
  return (loop._fate_command(model_dir, data_dir, workdir)[1:]
          + ["--config.fate.rounds=1", "--config.eval.claim_samples=0"])


# XLA's CPU backend without LLVM optimisation: the runs are dominated by
# compiles, and both sides compile alike.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def _env(cache):
  return {**loop._env(cache), "XLA_FLAGS": FAST_COMPILE}


def _one_process(args, cache):
  """1 process x 2 CPU devices."""
  env = _env(cache)
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  out = subprocess.run([sys.executable, *args], cwd=loop.ROOT, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT_S,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]


def _two_processes(args, cache, log, flags=()):
  """2 processes x 1 CPU device through `experiments.launch`; the exit
  status (the launcher's output goes to `log`)."""
  with open(log, "w", encoding="utf-8") as f:
    return subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--processes=2",
         "--grace_s=5", *flags, "--", *args], cwd=loop.ROOT,
        env=_env(cache), stdout=f,
        stderr=subprocess.STDOUT, timeout=TIMEOUT_S, check=False).returncode


def _tail(log):
  with open(log, encoding="utf-8") as f:
    return f.read()[-4000:]


def _assert_close_metrics(got_dir, want_dir, tol=TOL):
  got, want = loop._metrics(got_dir), loop._metrics(want_dir)
  assert got.keys() == want.keys()
  for key in sorted(want):
    if isinstance(want[key], float):
      assert abs(got[key] - want[key]) <= tol, (key, got[key], want[key])
    else:
      assert got[key] == want[key], key


def _final_params(workdir):
  """The params of the newest checkpoint, read onto one device."""
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  path = os.path.join(directory, str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = ocp.StandardCheckpointer()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    meta = ckpt.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        meta)
    return step, ckpt.restore(path, abstract)["params"]


def _assert_same_params(got_dir, want_dir):
  got_step, got = _final_params(got_dir)
  want_step, want = _final_params(want_dir)
  assert got_step == want_step
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), atol=TOL, rtol=0)


def _report(workdir):
  with open(os.path.join(workdir, loop.run_lib.REPORT_FILE),
            encoding="utf-8") as f:
    report = json.load(f)
  return {k: report[k] for k in ("before", "after", "eval_tasks")}


def test_two_processes_equal_one_in_mosaic_across_a_kill(
    assets, cache_dir, tmp_path):
  # One test, not a fixture shared by two: under `pytest -n 2` two tests
  # of a module may land on different workers, which would run the three
  # launches twice.
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _one_process(_mosaic_args(*assets, one), cache_dir)
  args = _mosaic_args(*assets, two)
  # Process 1 dies after step KILL_STEP's update; the launcher stops
  # process 0, which waits on it in a collective.
  killed = _two_processes(
      args, cache_dir, tmp_path / "killed.log",
      flags=[f"--process_env=1:{faults.FAULT_ENV}=kill@update:{KILL_STEP}"])
  assert killed == 128 + signal.SIGKILL, _tail(tmp_path / "killed.log")
  assert loop._latest(two) == KILL_STEP - 1
  assert not os.path.exists(os.path.join(two, loop.run_lib.REPORT_FILE))
  # Both relaunched: they restore step 4 (process 0 says so) and finish.
  status = _two_processes(args, cache_dir, tmp_path / "resumed.log")
  assert status == 0, _tail(tmp_path / "resumed.log")
  with open(tmp_path / "resumed.log", encoding="utf-8") as f:
    assert f"(resumed at step {KILL_STEP - 1})" in f.read()

  # The killed and relaunched 2-process run against the uninterrupted
  # 1-process run: equal across processes and across the kill. SFT, RL,
  # the judge and the periodic evaluation: every step's metrics.
  logged = loop._metrics(two)
  assert {step for step, _ in logged} == set(range(1, loop.TOTAL + 1))
  assert {"rl/loss", "rl/reward", "rl/batch/validity", "rl/judge/forwards",
          "eval/harmful_compliance"} <= {name for _, name in logged}
  _assert_close_metrics(two, one)
  _assert_same_params(two, one)
  # The reports: before/after on every split, over the same tasks.
  assert _report(two) == _report(one)


def test_two_processes_equal_one_in_a_fate_round(assets, cache_dir,
                                                 tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _one_process(_fate_args(*assets, one), cache_dir)
  status = _two_processes(_fate_args(*assets, two), cache_dir,
                          tmp_path / "two.log")
  assert status == 0, _tail(tmp_path / "two.log")
  logged = loop._metrics(two)
  # The round mined failures, kept repairs (the scripted expert's) and
  # trained on them: both PFPO updates ran.
  assert logged[loop.SFT_STEPS, "fate/kept"] > 0
  assert {"fate_sft/loss", "fate_pg/loss"} <= {n for _, n in logged}
  _assert_close_metrics(two, one)
  _assert_same_params(two, one)
  assert _report(two) == _report(one)


def test_launch_stops_the_others_when_one_fails(tmp_path):
  # Process 1 exits 3 at once; process 0 would wait forever.
  script = tmp_path / "job.py"
  script.write_text(
      "import os, sys, time\n"
      f"if os.environ['{launch.distributed.ENV_PROCESS_ID}'] == '1':\n"
      "  sys.exit(3)\n"
      "time.sleep(600)\n")
  status = launch.launch([str(script)], processes=2, grace_s=0.5,
                         env=dict(os.environ))
  assert status == 3
  with pytest.raises(ValueError, match="nothing to run"):
    launch.launch([], processes=2)
  assert launch.parse_process_env(["1:A=x=y", "1:B=", "0:C=z"]) == {
      1: {"A": "x=y", "B": ""}, 0: {"C": "z"}}
  with pytest.raises(ValueError, match="PID:NAME=VALUE"):
    launch.parse_process_env(["MOSAIC_FAULT=kill@update:5"])
