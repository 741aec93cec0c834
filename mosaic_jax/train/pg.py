"""The policy-gradient step both methods take, from a rollout to an update.

MOSAIC (`methods.mosaic`) and FATE's PFPO (`methods.fate`) differ only in
their rewards (`rewards.py`); around them they share the sampling settings
(`rl_rollout_config`, `step_seed`), the step settings (`pg_config`), the
update (`pg_update`: π_old at the sampling temperature, π_ref for the KL,
the jitted step) and what a step logs (`step_metrics`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mosaic_jax import batches as batches_lib, rewards, sharding
from mosaic_jax.batches import PGBatch
from mosaic_jax.eval import builtin
from mosaic_jax.models import decoder
from mosaic_jax.rollout import Rollout, RolloutConfig
from mosaic_jax.train import state as state_lib, steps as steps_lib

def rl_rollout_config(config: ml_collections.ConfigDict,
                      seed: int | None = None) -> RolloutConfig:
  """The rollout settings of RL: `rollout.*` with `rl.group_size` episodes
  per task, seeded by `seed` (default `rollout.seed`); the evaluation's are
  `eval.heldout.eval_rollout_config`."""
  rc = RolloutConfig.from_config(config.rollout)
  return dataclasses.replace(rc, group_size=config.rl.group_size,
                             seed=rc.seed if seed is None else seed)


def step_seed(rng: jax.Array, step: int) -> int:
  """A per-step sampling seed from the train state's key and the step."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  return int(jax.random.bits(key, dtype=jnp.uint32) >> 1)


def logprob_temperature(config: ml_collections.ConfigDict) -> float:
  """The temperature of the PG log-probs: the RL sampling temperature when
  `rl.temper_logprobs` (1 for greedy sampling), else 1."""
  ro = config.rollout
  if not config.rl.get("temper_logprobs", True) or ro.strategy == "greedy":
    return 1.0
  return float(ro.temperature)


def pg_config(config: ml_collections.ConfigDict) -> steps_lib.PGConfig:
  """The PG step settings of `config.rl`, at `logprob_temperature`; the
  "sequence-sum" constant `rl.seq_norm` (0: `rollout.max_total_length`)."""
  cfg = steps_lib.PGConfig.from_config(config.rl)
  seq_norm = config.rl.get("seq_norm", 0.0) or config.rollout.max_total_length
  return dataclasses.replace(cfg, temperature=logprob_temperature(config),
                             seq_norm=float(seq_norm))

def pg_update(state: state_lib.TrainState, batch: PGBatch,
              reference: decoder.Decoder, pg_step: Any,
              cfg: steps_lib.PGConfig, kl_beta: float
              ) -> tuple[state_lib.TrainState, dict[str, Any], jax.Array]:
  """One PG update: π_old recomputed at `cfg.temperature` by the sampling
  policy (`steps.old_logprobs`), π_ref when `kl_beta`, then `pg_step`.

  Returns:
    The new state, the step's metrics (waited for: dispatch is
    asynchronous, so a step's wall time includes the update) and the
    policy's token-mean entropy on the batch's loss tokens (`[]`).
  """
  batch, entropy = steps_lib.old_logprobs(state, batch, cfg)
  if kl_beta:
    batch = steps_lib.reference_logprobs(
        reference, batch, microbatch=cfg.microbatch,
        chunk_size=cfg.chunk_size, temperature=cfg.temperature)
  state, metrics = pg_step(state, batch)
  return state, jax.block_until_ready(metrics), entropy

def rollout_batch(out: Rollout, advantages: np.ndarray,
                  mesh: jax.sharding.Mesh) -> PGBatch:
  """The PG batch of a rollout: trajectories and advantages `[B, G]` (rows
  in group order, computed on every process from the whole step), placed
  on the mesh; `pg_update` adds π_old and π_ref."""
  traj = out.trajectories
  fields = dict(tokens=traj.tokens, loss_mask=traj.loss_mask,
                attention_mask=traj.attention_mask, old_logp=traj.logprobs)
  if jax.process_count() == 1:
    # Several processes' trajectories are global (sharded) already.
    fields = sharding.shard_batch(fields, mesh)
  return PGBatch(**fields, advantages=batches_lib.place_global(
      np.asarray(advantages, np.float32).reshape(-1), mesh))


def rollout_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh | None:
  """The mesh `rollout` places its arrays on: the run's with several
  processes (each contributes its rows), none with one (`rollout_batch`
  shards them)."""
  return mesh if jax.process_count() > 1 else None


def completion_metrics(out: Rollout) -> dict[str, float]:
  """TRL's completion metrics: generated tokens per episode (mean, min,
  max) and `completions/clipped_ratio`, the share of episodes that ended on
  a limit (turns, tokens per turn or total length) rather than an answer or
  refusal."""
  lengths = rewards.generated_lengths(out)
  return {"completions/mean_length": float(lengths.mean()),
          "completions/min_length": float(lengths.min()),
          "completions/max_length": float(lengths.max()),
          "completions/clipped_ratio": float(np.mean(
              [e.end_reason != "terminal" for e in out.episodes]))}


def rollout_stats(out: Rollout) -> dict[str, float]:
  """Batch statistics of the step's RL episodes (logged every step)."""
  m = builtin.episode_metrics([e.record for e in out.episodes])
  stats = {}
  for name in ("harmful_compliance", "harmful_executed", "injection_asr",
               "refusal_rate",
               "over_refusal", "utility", "validity"):
    s = m[name]
    if s.den.sum():
      stats[f"batch/{name}"] = float(s.num.sum() / s.den.sum())
  stats["batch/generated_tokens"] = float(out.stats["generated_tokens"])
  # Episodes ended by an environment or verifier that raised (0 normally).
  for name in ("env_errors", "verifier_errors"):
    stats[f"batch/{name}"] = float(out.stats.get(name, 0))
  stats["batch/mean_length"] = float(np.mean([e.length for e in out.episodes]))
  return stats


def step_metrics(metrics: Mapping[str, Any], entropy: jax.Array,
                 out: Rollout, components: Mapping[str, np.ndarray],
                 step_rewards: np.ndarray, signal: np.ndarray,
                 advantages: np.ndarray) -> dict[str, Any]:
  """What a PG step logs: the update's metrics, the entropy, the reward
  metrics (`rewards.reward_metrics`), the completions' and the batch's."""
  return {**metrics, "entropy": float(entropy),
          **rewards.reward_metrics(components, step_rewards, signal,
                                   advantages),
          **completion_metrics(out), **rollout_stats(out)}
