r"""Repair success with and without FATE's oracle hint, one round, paired.

  python -m experiments.fate_hint_ablation --tasks=40 --out=/tmp/hint.json

One `fate.run_round` per arm (`fate.oracle_hints` False, then True) with the
policy of `--config` (default configs/fate_tiny.py: its `model.path`, the
committed tiny base, *without* the SFT warm-up) on the same `--tasks` train
tasks (drawn with `--seed`) and the same sampling seeds, so both arms mine
the same failures and differ only in the repair prompt. Per arm: the round's
stats (`fate.run_round`), `repair_success` = improved / failures (a* beats
the failure), and, over the failures that missed some goal check
(utility < 1, where the hint can help), how many a* raised utility.
"""
import dataclasses
import json
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli

from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.rollout import ModelPolicy
from mosaic_jax.methods import fate
from mosaic_jax.train import pg, run as run_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/fate_tiny.py",
                                          "a config with a fate section")
_TASKS = flags.DEFINE_integer("tasks", 40, "train tasks mined")
_SEED = flags.DEFINE_integer("seed", 0, "task draw and sampling seed")
_OUT = flags.DEFINE_string("out", "", "JSON results (also printed)")


def draw_tasks(n: int, seed: int) -> list:
  """n train tasks, drawn without replacement, in a seeded order."""
  train = tasks_lib.all_tasks("train")
  picks = np.random.default_rng(seed).choice(len(train), n, replace=False)
  return [train[i] for i in picks]


def arm(policy, task_list, tokenizer, config, fcfg, hints: bool,
        seed: int) -> dict:
  """One round with `oracle_hints=hints`; its stats and utility repairs."""
  start = time.perf_counter()
  # Every failure's best repair is recorded, kept or not.
  cfg = dataclasses.replace(fcfg, oracle_hints=hints,
                            require_improvement=False)
  buffer = fate.ReplayBuffer(10_000)
  rc = dataclasses.replace(pg.rl_rollout_config(config, seed=seed),
                           group_size=config.fate.mine_group_size)
  result = fate.run_round(policy, task_list, tokenizer, rc, cfg, buffer,
                          repair_seed=seed + 1)
  stats = dict(result.stats)
  utility_failures = int(np.sum(fate.failed(result.rollout_z)
                                & (result.rollout_z[:, 1] < 1)))
  raised = sum(e.z[1] > e.failure_z[1] for e in result.added)
  return {"oracle_hints": hints, **stats,
          "repair_success": (stats["improved"] / stats["failures"]
                             if stats["failures"] else 0.0),
          "utility_failures": utility_failures,
          "utility_raised": int(raised),
          "utility_raised_share": (raised / utility_failures
                                   if utility_failures else 0.0),
          "wall_s": round(time.perf_counter() - start, 1)}


def main(argv):
  del argv
  config = _CONFIG.value
  fcfg = fate.FateConfig.from_config(config.fate)
  model = run_lib.build_model(config)
  tokenizer = run_lib.build_tokenizer(config)
  policy = ModelPolicy(model, tokenizer, name="policy")
  task_list = draw_tasks(_TASKS.value, _SEED.value)
  results = {"model": config.model.path, "tasks": _TASKS.value,
             "seed": _SEED.value, "num_candidates": fcfg.num_candidates,
             "temperature": config.rollout.temperature,
             "arms": [arm(policy, task_list, tokenizer, config, fcfg, h,
                          _SEED.value) for h in (False, True)]}
  text = json.dumps(results, indent=2)
  print(text, flush=True)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.main(main)
