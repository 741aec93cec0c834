"""The FATE loop: MOSAIC's warm start, then self-evolution rounds with PFPO.

`run(config)` (`config.method == "fate"`), every output under
`config.workdir`, set-up, SFT warm-up, reference policy, `before`
evaluation and report shared with `mosaic_jax.train.mosaic`
(`mosaic.warm_start`, `mosaic.Run`):

1. model, tokenizer, datasets; SFT warm-up (`sft.*`) exactly as MOSAIC;
2. `before`: the warm start on `eval.split` and `eval.final_splits`;
3. `fate.rounds` rounds, each:
   a. mining and repair (`mosaic_jax.fate.run_round`): `fate.tasks_per_round`
      train tasks, `fate.mine_group_size` episodes each; failures get
      `fate.num_candidates` repairs from the same policy; the Pareto-selected
      a* go to the replay buffer; the round's counts are logged under
      `fate/` (failures, failures per objective, candidates, valid, selected,
      improved, kept, duplicates, improved_share, front sizes, buffer size);
   b. PFPO SFT: `fate.sft_steps` steps on `fate.sft_batch` buffer entries
      drawn uniformly (context per `fate.conditioning`);
   c. PFPO PG: `fate.pg_steps` PPO-clip steps on `rl.tasks_per_step` train
      tasks x `rl.group_size` episodes, advantages from the Pareto reward
      over each group's z with R_pf tie-break (`fate.reward = "pareto"`) or
      the scalarised baseline (`"scalar"`), KL to the warm start (`rl.*`);
4. `after` and `report.json` (`mosaic.training_report`) as the MOSAIC run
   writes (FATE evaluates no split between `before` and `after`).

Both PFPO parts share one AdamW state at `optimizer.lr`, scheduled over all
rounds' steps. A checkpoint is written after every round (the train state;
as JSON the phase, the round, both task iterators and the replay buffer), so
a restart resumes at the next round; SIGTERM likewise takes effect at the end
of the round in progress (`mosaic_jax.train.faults`). Single process: the
PFPO batch is built from one process's rollout.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mosaic_jax import data as data_lib
from mosaic_jax import distributed, fate as fate_lib, losses
from mosaic_jax.rollout import ModelPolicy, rollout
from mosaic_jax.train import faults, mosaic, validate
from mosaic_jax.train import state as state_lib, steps as steps_lib

PHASE = "fate"


def _iterator(config: ml_collections.ConfigDict, batch_size: int, offset: int,
              saved: Any) -> Any:
  """A seeded train-task iterator (seed + offset), at its saved position."""
  it = iter(data_lib.task_pipeline(config.data, "train", batch_size=batch_size,
                                   seed=config.seed + offset))
  if saved:
    it.set_state(saved)
  return it


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or resumes) the whole FATE job; returns the report.

  Args:
    config: a config with a `fate` section (e.g. `configs/fate_tiny.py`).

  Returns:
    `mosaic.training_report(...)` with `buffer_size`, as written to
    `workdir/report.json`.

  Raises:
    ValueError: with several processes (see the module docstring).
    faults.Preempted, faults.NonFiniteError: as `mosaic.run`.
  """
  validate.check_start(config)
  distributed.initialize_from_config(config.distributed)
  if jax.process_count() > 1:
    raise ValueError("the FATE loop runs on one process")
  c = config
  fcfg = fate_lib.FateConfig.from_config(c.fate)
  per_round = c.fate.sft_steps + c.fate.pg_steps
  total = c.sft.steps + c.fate.rounds * per_round
  ws = mosaic.warm_start(c, total)
  try:
    return _rounds(ws, fcfg, per_round)
  finally:
    ws.run.close()


def _rounds(ws: mosaic.WarmStart, fcfg: fate_lib.FateConfig, per_round: int
            ) -> dict[str, Any]:
  """The FATE rounds from the warm start to the report (see `run`)."""
  r, reference, extra = ws.run, ws.reference, ws.extra
  c = r.config
  pg_cfg = mosaic.pg_config(c)
  # The schedule counts optimizer updates: a PG step makes pg_cfg.updates.
  opt = dataclasses.replace(
      state_lib.OptimizerConfig.from_config(c.optimizer),
      total_steps=c.fate.rounds * (c.fate.sft_steps
                                   + c.fate.pg_steps * pg_cfg.updates))
  schedule = state_lib.learning_rate_schedule(opt)
  state = mosaic.second_phase_state(ws, PHASE, opt)
  if extra.get("phase") != PHASE:
    extra = {"round": 0}
  buffer = (fate_lib.ReplayBuffer.from_json(extra["buffer"])
            if "buffer" in extra else fate_lib.ReplayBuffer(fcfg.buffer_size))
  mine_it = _iterator(c, c.fate.tasks_per_round, 2, extra.get("data_mine"))
  pg_it = _iterator(c, c.rl.tasks_per_step, 3, extra.get("data_pg"))
  sft_step = steps_lib.make_sft_step(steps_lib.SFTConfig.from_config(c.sft),
                                     schedule)
  pg_step = steps_lib.make_pg_step(pg_cfg, schedule)
  pad_rows = c.fate.sft_batch
  step = int(state.step)
  for round_index in range(extra["round"], c.fate.rounds):
    start = time.perf_counter()
    mine_config = dataclasses.replace(
        mosaic.rollout_config(c, seed=mosaic.step_seed(state.rng, step)),
        group_size=c.fate.mine_group_size)
    result = fate_lib.run_round(
        ModelPolicy(state.model(), r.tokenizer, name="policy"),
        next(mine_it), r.tokenizer, mine_config, fcfg, buffer,
        round_index=round_index)
    faults.fault_point("rollout", step + 1)
    r.log(step, result.stats, "fate/")
    r.log(step, {"round_s": time.perf_counter() - start},
          mosaic.TIME_PREFIX + "fate/")
    rng = np.random.default_rng([c.seed, round_index])
    for _ in range(c.fate.sft_steps if len(buffer) else 0):
      start = time.perf_counter()
      entries = buffer.sample(pad_rows, rng)
      batch, n = fate_lib.sft_batch(
          entries, r.tokenizer, fcfg.conditioning, rows=pad_rows,
          length=c.fate.sft_max_len)
      state, metrics = sft_step(state, mosaic.to_global(batch, r.mesh))
      # Dispatch is asynchronous: wait, so step_s includes the update.
      metrics = jax.block_until_ready(metrics)
      step += 1
      faults.fault_point("update", step)
      r.log_step("fate_sft", step, {**metrics, "examples": n},
                 {"step_s": time.perf_counter() - start},
                 [e.task_id for e in entries])
    for _ in range(c.fate.pg_steps):
      start = time.perf_counter()
      tasks = next(pg_it)
      out = rollout(ModelPolicy(state.model(), r.tokenizer, name="policy"),
                    tasks, r.tokenizer,
                    mosaic.rollout_config(
                        c, seed=mosaic.step_seed(state.rng, step)))
      faults.fault_point("rollout", step + 1)
      batch, rewards = fate_lib.pg_batch(
          out, fcfg, ddof=c.rl.adv_ddof, eps=c.rl.adv_eps,
          tie=c.rl.get("tie_advantage", "zero"))
      batch = mosaic.to_global(batch, r.mesh)
      # π_old recomputed at the sampling temperature (steps.old_logprobs).
      batch, entropy = steps_lib.old_logprobs(state, batch, pg_cfg)
      if c.rl.kl_beta:
        batch = steps_lib.reference_logprobs(
            reference, batch, microbatch=pg_cfg.microbatch,
            chunk_size=pg_cfg.chunk_size, temperature=pg_cfg.temperature)
      state, metrics = pg_step(state, batch)
      # Dispatch is asynchronous: wait, so step_s includes the update.
      metrics = jax.block_until_ready(metrics)
      step += 1
      faults.fault_point("update", step)
      z = np.asarray(out.trajectories.z).reshape(rewards.shape + (-1,))
      signal = np.asarray(losses.group_has_signal(z))
      r.log_step("fate_pg", step, {
          **metrics, "entropy": float(entropy),
          **mosaic.reward_metrics({"pareto" if fcfg.reward == "pareto"
                                   else "scalar": rewards}, rewards, signal,
                                  np.asarray(batch.advantages)),
          **mosaic.completion_metrics(out), **mosaic.rollout_stats(out)},
                 {"step_s": time.perf_counter() - start},
                 [t.task_id for t in tasks])
    r.ckpt.save(state, {"phase": PHASE, "round": round_index + 1,
                        "data_mine": mine_it.get_state(),
                        "data_pg": pg_it.get_state(),
                        "buffer": buffer.to_json()}, force=True)
    # Checkpoints hold whole rounds: SIGTERM takes effect at a round's end.
    r.stop_if_preempted(step)
  after = r.evaluate(state.model(), "final", step, final=True)
  result = mosaic.training_report(ws.before, after, r.eval_sizes(), c,
                                  method="fate", final_step=step,
                                  buffer_size=len(buffer))
  r.write_json(mosaic.REPORT_FILE, result)
  return result
