"""Host memory of a training run over many steps (`bench.py rss`).

Runs the MOSAIC loop in this process on a minuscule model (2 layers of
width 32, the tiny tokenizer): `SFT_STEPS` SFT steps, then `RL_STEPS` RL steps
(rollout of 2 tasks x G=2 one-turn episodes, verifier judge, PPO-clip step
with KL), checkpoints every 50 steps and a 4-task evaluation before and
after RL. The loop logs this process's resident set size after every step
(`host/rss_mib` in metrics.jsonl). A leak shows as growth, measured per
phase after its first `WARMUP` steps (compiles and first-use caches): the
least-squares slope in MiB per step, and the drift, the median of the
phase's last 20 steps minus the median of its first 20 (robust to the
step-to-step jitter of the allocator and to one-off releases, which a
slope over a phase with a step change in it is not).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from mosaic_jax import data as data_lib
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.models import ModelConfig, RopeConfig, convert, init_model
from mosaic_jax.methods import mosaic
from mosaic_jax.train import metrics as metrics_lib, run as run_lib

SFT_STEPS = RL_STEPS = 100
WARMUP = 10
_MODEL = ModelConfig(
    family="qwen3", vocab_size=2048, hidden_size=32, intermediate_size=64,
    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
    rope=RopeConfig(theta=1e4), qk_norm=True, tie_embeddings=True,
    max_position_embeddings=1024)


def _config(root: str):
  from configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.workdir = os.path.join(root, "run")
  config.model.path = os.path.join(root, "model")
  config.data.data_dir = os.path.join(root, "data")
  config.sft.update(steps=SFT_STEPS, batch=2, microbatch=0)
  config.rl.update(steps=RL_STEPS, group_size=2, tasks_per_step=2,
                   microbatch=0)
  config.rollout.update(max_turns=1, max_tokens_per_turn=16,
                        max_total_length=512)
  config.eval.update(max_tasks=4, batch=4, every=0)
  config.checkpoint.update(every=50, keep=2)
  return config


def slope(steps: np.ndarray, values: np.ndarray) -> float:
  """Least-squares slope of values over steps (units of values per step)."""
  return float(np.polyfit(steps, values, 1)[0])


def drift(values: np.ndarray, window: int = 20) -> float:
  """Median of the last `window` values minus median of the first."""
  return float(np.median(values[-window:]) - np.median(values[:window]))


def bench_rss() -> dict[str, object]:
  """RSS over `SFT_STEPS + RL_STEPS` steps of the loop (module docstring)."""
  with tempfile.TemporaryDirectory() as root:
    config = _config(root)
    convert.save_orbax(init_model(_MODEL, seed=0), config.model.path,
                       tokenizer=load_tiny_tokenizer())
    data_lib.prepare(config.data, [data_lib.TASKS])
    mosaic.run(config)
    rss = {}
    path = os.path.join(config.workdir, metrics_lib.METRICS_FILE)
    with open(path, encoding="utf-8") as f:
      for record in map(json.loads, f):
        if run_lib.HOST_PREFIX + "rss_mib" in record:
          rss[record["step"]] = record[run_lib.HOST_PREFIX + "rss_mib"]
  steps = np.asarray(sorted(rss))
  values = np.asarray([rss[s] for s in steps])
  figures: dict[str, object] = {
      "steps": len(steps), "model": "qwen3 2L d32 (minuscule)",
      "warmup_steps_excluded_per_phase": WARMUP,
      "rss_first_mib": round(float(values[0]), 1),
      "rss_last_mib": round(float(values[-1]), 1),
      "rss_peak_mib": round(float(values.max()), 1)}
  for name, phase in (("sft", (steps > WARMUP) & (steps <= SFT_STEPS)),
                      ("rl", steps > SFT_STEPS + WARMUP)):
    figures[f"{name}_slope_mib_per_step"] = round(
        slope(steps[phase], values[phase]), 4)
    figures[f"{name}_drift_mib"] = round(drift(values[phase]), 1)
  return figures
