"""MOSAIC: the warm start (`train.run`), then pairwise-reward RL.

`run(config)` (`config.method == "mosaic"`, the default):

1. `train.run.warm_start`: set-up, SFT warm-up, reference policy, `before`;
2. `rl.steps` RL steps (`rl_phase`): `rl.tasks_per_step` train tasks
   (grain, seeded) -> `rl.group_size` episodes each (`rollout`) -> judge
   (the `judge` section, `make_judge`) -> rewards
   (`rewards.reward_components`) -> group
   advantages (`rewards.task_advantages`) -> one PPO-clip step with KL to
   the frozen SFT policy (`train.pg.pg_update`);
3. evaluation on `eval.split` only (validation: where settings are chosen)
   every `eval.every` RL steps (`train.hooks.PeriodicEval`), and `after`
   at the end on every split; `report.json`.

RL steps are numbered after SFT's: S+1..S+R.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import jax
import ml_collections

from mosaic_jax import distributed, judge as judge_lib, rewards
from mosaic_jax.eval import heldout
from mosaic_jax.models import convert, decoder
from mosaic_jax.rollout import ModelPolicy, rollout
from mosaic_jax.train import faults, pg, run as run_lib
from mosaic_jax.train import state as state_lib, steps as steps_lib
from mosaic_jax.train import validate

PHASE = "rl"
# The checkpoint's extra-dict key of the LLM judge's cache.
JUDGE_CACHE_KEY = "judge_cache"


def rl_optimizer(config: ml_collections.ConfigDict,
                 schedule_steps: int) -> state_lib.OptimizerConfig:
  """The `optimizer` section over `schedule_steps` loop steps of RL, in
  optimizer updates: each step makes `rl.epochs × rl.minibatches`."""
  updates = (int(config.rl.get("epochs", 1))
             * int(config.rl.get("minibatches", 1)))
  return dataclasses.replace(
      state_lib.OptimizerConfig.from_config(config.optimizer),
      total_steps=schedule_steps * updates)


def make_judge(config: ml_collections.ConfigDict,
               reference: decoder.Decoder, tokenizer: Any,
               mesh: jax.sharding.Mesh | None = None) -> Any:
  """The judge of the `judge` section (`judge.JudgeConfig`, with the
  deprecated `rl.judge` mapped): "verifier_rank", or "llm"/"hybrid" with the
  model at `judge.model_path` (`convert.load_model`, on `mesh`) and its own
  tokenizer, else the frozen reference policy (placed on the run's mesh
  already) with the policy's tokenizer. With a `mesh` every judge forward's
  rows are sharded over its batch axes."""
  cfg = judge_lib.JudgeConfig.from_config(config)
  if cfg.kind == "verifier_rank":
    return judge_lib.make_judge(cfg.kind)
  model = reference
  if cfg.model_path:
    # pylint: disable-next=import-outside-toplevel
    from mosaic_jax.eval import harness
    model = convert.load_model(cfg.model_path, mesh=mesh)
    tokenizer = harness.load_tokenizer(cfg.model_path)
  return judge_lib.make_judge(cfg.kind, model=model, tokenizer=tokenizer,
                              mesh=mesh, **cfg.llm_kwargs())


def rl_phase(r: run_lib.Run, state: state_lib.TrainState,
             reference: decoder.Decoder, extra: Mapping[str, Any]
             ) -> tuple[state_lib.TrainState, dict[str, Any] | None]:
  """RL steps to the end: the final state, and the last periodic evaluation
  if it fell on the final step (then `after` is not recomputed), else
  None."""
  c = r.config
  total = c.sft.steps + c.rl.steps
  it = r.iterator(PHASE, extra, c.rl.tasks_per_step)
  pg_cfg = pg.pg_config(c)
  pg_step = steps_lib.make_pg_step(
      pg_cfg, state_lib.learning_rate_schedule(rl_optimizer(c, c.rl.steps)))
  judge = make_judge(c, reference, r.tokenizer, r.mesh)
  cached = hasattr(judge, "cache_state")
  if cached and extra.get("phase") == PHASE:
    # The cache as the uninterrupted run had it at this step (a rescored
    # pair could land in a forward of another row count, and so differ in
    # its last bits): a resumed run equals it exactly.
    judge.load_cache(extra.get(JUDGE_CACHE_KEY, []))
  step, last_eval = int(state.step), None
  if step < total:
    r.progress.phase("RL", c.rl.steps, initial=step - c.sft.steps)
  while step < total:
    start = time.perf_counter()
    tasks = next(it)
    policy = ModelPolicy(state.model(), r.tokenizer, name="policy")
    out = rollout(policy, tasks, r.tokenizer,
                  pg.rl_rollout_config(c, seed=pg.step_seed(state.rng, step)),
                  mesh=pg.rollout_mesh(r.mesh))
    rollout_s = time.perf_counter() - start
    faults.fault_point("rollout", step + 1)
    components = rewards.reward_components(out, judge, c.rl)
    step_rewards = rewards.total_reward(components, c.rl.reward)
    judged = {f"judge/{k}": v for k, v in judge_lib.take_stats(judge).items()}
    adv, signal = rewards.task_advantages(components, c.rl)
    state, metrics, entropy = pg.pg_update(
        state, pg.rollout_batch(out, adv, r.mesh), reference, pg_step, pg_cfg,
        c.rl.kl_beta)
    step += 1
    faults.fault_point("update", step)
    r.log_step(PHASE, step, {**pg.step_metrics(
        metrics, entropy, out, components, step_rewards, signal, adv),
                             **judged},
               {"rollout_s": rollout_s,
                "step_s": time.perf_counter() - start},
               [t.task_id for t in tasks])
    last_eval = r.evaluation.after_step(state.model(), step)
    r.save(state, PHASE, it, force=step == total,
           extra={JUDGE_CACHE_KEY: judge.cache_state()} if cached else None)
  return state, last_eval


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or resumes) the whole MOSAIC job; returns the report.

  Args:
    config: a `configs/*.py` config (see `configs/base.py`).

  Returns:
    `eval.heldout.training_report(...)` as written to `workdir/report.json`.

  Raises:
    validate.ConfigError: the config, tokenizer, model directory, lengths
      or workdir cannot run.
    checkpoint.UnreadableCheckpoint: the newest checkpoint is damaged.
    faults.Preempted: SIGTERM arrived (the newest step is checkpointed).
    faults.NonFiniteError: `max_nonfinite_steps` non-finite updates in a row.
  """
  validate.check_start(config)
  distributed.initialize_from_config(config.distributed)
  ws = run_lib.warm_start(config)
  r = ws.run
  try:
    # RL starts from the SFT params with a fresh optimizer; steps continue.
    state = run_lib.second_phase_state(
        ws, PHASE, rl_optimizer(config, config.rl.steps))
    state, last = rl_phase(r, state, ws.reference, ws.extra)
    after = r.heldout.evaluate(state.model(), "final", int(state.step),
                               final=True, done=last)
    result = heldout.training_report(ws.before, after, r.heldout.sizes(),
                                     config, method="mosaic",
                                     final_step=int(state.step))
    r.write_json(run_lib.REPORT_FILE, result)
  finally:
    r.close()
  return result
