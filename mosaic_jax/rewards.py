"""Rewards of both methods, registered by name, and their group advantages.

MOSAIC (`rl.reward`, `MOSAIC_COMPARISONS`): per episode

  `R_i = c_i + r_fmt,i − max(0, (L_i − L0)/L0)`

with c_i the comparison term, "pairwise" (`Σ_{j≠i} P(i,j)` from the judge,
`losses.pairwise_win_rewards`) or "scalar" (`Σ_m w_m z_{i,m}`,
`losses.scalar_rewards`), r_fmt the format bonus (`format_bonus`) and L_i
the episode's generated tokens (`reward_components`, `total_reward`).

FATE (`fate.reward`, `FATE_REWARDS`): per group, from the objectives z and
the scalar R_pf (`repair_scores`): "pareto" (`pareto.pareto_rewards`: front
rank, R_pf breaking ties inside a front) or "scalar" (`Σ_m w_m z_m` minus
R_pf's length term) (`fate_group_rewards`).

The pure formulas are in `losses.py` and `pareto.py`; this module composes
them from rollouts.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mosaic_jax import judge as judge_lib, losses, pareto
from mosaic_jax.agent.actions import InvalidAction
from mosaic_jax.envs.transcripts import episode_transcript
from mosaic_jax.rollout import EpisodeInfo, Rollout

def format_bonus(info: EpisodeInfo, *, think_bonus: float,
                 valid_bonus: float) -> float:
  """r_fmt of one episode, in [0, think_bonus + valid_bonus].

  `think_bonus` when every assistant turn opens with a non-empty `<think>`
  plan; `valid_bonus` when every turn parsed into a protocol action and the
  episode ended on a final answer or refusal (not on a limit).
  """
  turns = info.record.turns
  planned = bool(turns) and all(t.plan and t.plan.strip() for t in turns)
  valid = (info.end_reason == "terminal"
           and not any(isinstance(t.action, InvalidAction) for t in turns))
  return think_bonus * planned + valid_bonus * valid


def generated_lengths(out: Rollout) -> np.ndarray:
  """Generated (loss) tokens of each episode, `[N]`, in row order."""
  return np.asarray([e.generated for e in out.episodes], np.int64)



def pairwise_comparison(infos: list[EpisodeInfo], g: int, judge: Any,
                        rl: ml_collections.ConfigDict) -> jax.Array:
  """`Σ_{j≠i} P(i,j)` `[B, G]`, P from the judge over each group's episodes,
  all groups of the step in one `judge.judge_groups` call (judge-readable
  text: `episode_transcript`)."""
  del rl
  prefs = judge_lib.judge_groups(judge, [
      (infos[b].record.task, [e.record for e in infos[b:b + g]],
       [episode_transcript(e) for e in infos[b:b + g]])
      for b in range(0, len(infos), g)])
  return losses.pairwise_win_rewards(jnp.asarray(prefs))


def scalar_comparison(infos: list[EpisodeInfo], g: int, judge: Any,
                      rl: ml_collections.ConfigDict) -> jax.Array:
  """`Σ_m w_m z_{i,m}` `[B, G]` with `rl.scalar_weights` (the ablation)."""
  del judge
  z = np.stack([e.record.z for e in infos]).reshape(-1, g, 4)
  return losses.scalar_rewards(jnp.asarray(z),
                               jnp.asarray(rl.scalar_weights))


# rl.reward -> the comparison term of MOSAIC's reward:
# (episodes, G, judge, rl section) -> [B, G].
MOSAIC_COMPARISONS: dict[str, Callable[..., jax.Array]] = {
    "pairwise": pairwise_comparison, "scalar": scalar_comparison}


def reward_components(out: Rollout, judge: Any,
                      rl: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The terms of the step's rewards, each `[B, G]` float32.

  `rl.reward` (`MOSAIC_COMPARISONS`: "pairwise", `Σ_{j≠i} P(i,j)` from the
  judge; "scalar", `Σ_m w_m z_{i,m}` with `rl.scalar_weights`), "format"
  (r_fmt) and "length_penalty" (`max(0, (L_i − L0)/L0)`, L_i the episode's
  generated tokens). The reward is `comparison + format − length_penalty`.
  """
  g = rl.group_size
  infos = out.episodes
  lengths = generated_lengths(out).reshape(-1, g)
  fmt = np.asarray([format_bonus(e, think_bonus=rl.format_think_bonus,
                                 valid_bonus=rl.format_valid_bonus)
                    for e in infos], np.float32).reshape(-1, g)
  if rl.reward not in MOSAIC_COMPARISONS:
    raise ValueError(f"unknown rl.reward {rl.reward!r}; expected 'pairwise' "
                     "or 'scalar'")
  comparison = MOSAIC_COMPARISONS[rl.reward](infos, g, judge, rl)
  return {rl.reward: np.asarray(comparison, np.float32), "format": fmt,
          "length_penalty": np.asarray(
              losses.length_penalty(jnp.asarray(lengths), rl.l0), np.float32)}


def mosaic_group_rewards(out: Rollout, judge: Any,
                         rl: ml_collections.ConfigDict
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Rewards of the step's episodes, `[B, G]`, and the format bonuses.

  pairwise (MOSAIC): `R_i = Σ_{j≠i} P(i,j) + r_fmt,i − max(0, (L_i − L0)/L0)`
  with P from the judge and L_i the episode's generated tokens.
  scalar (ablation): the pairwise term is replaced by `Σ_m w_m z_{i,m}`
  (`rl.scalar_weights` over the verifier objectives); format bonus and
  length penalty are kept, so the two differ only in the comparison.
  """
  c = reward_components(out, judge, rl)
  return total_reward(c, rl.reward), c["format"]


def total_reward(components: Mapping[str, np.ndarray], reward: str
                 ) -> np.ndarray:
  """`comparison + format − length_penalty` of `reward_components`."""
  return (components[reward] + components["format"]
          - components["length_penalty"]).astype(np.float32)


def task_advantages(components: Mapping[str, np.ndarray],
                    rl: ml_collections.ConfigDict
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Group advantages `[B, G]` of the rewards, and each group's signal `[B]`.

  `ADVANTAGE_ESTIMATORS[rl.advantage]` of `total_reward`; a group has
  signal when its length-free rewards (comparison + format) differ
  (`losses.group_has_signal`). `rl.tie_advantage="zero"` gives the groups
  without signal A = 0 (their spread is the length penalty's alone);
  "keep" leaves them as the estimator made them.
  """
  rewards = jnp.asarray(total_reward(components, rl.reward))
  adv = losses.ADVANTAGE_ESTIMATORS[rl.advantage](
      rewards, ddof=rl.adv_ddof, eps=rl.adv_eps)
  verdict = components[rl.reward] + components["format"]
  signal = losses.group_has_signal(jnp.asarray(verdict)[..., None])
  adv = losses.tie_advantages(adv, signal, rl.get("tie_advantage", "zero"))
  return np.asarray(adv, np.float32), np.asarray(signal)


def reward_metrics(components: Mapping[str, np.ndarray], rewards: np.ndarray,
                   signal: np.ndarray, advantages: np.ndarray
                   ) -> dict[str, float]:
  """TRL's reward metrics of one step (all its groups).

  reward (mean), reward_std (mean within-group std), `rewards/<term>/mean`
  and `/std` per `reward_components` term (std over all episodes),
  frac_reward_zero_std (groups whose rewards are all equal),
  frac_tied_groups (groups without signal, `task_advantages`),
  adv_abs_mean.
  """
  out = {"reward": float(rewards.mean()),
         "reward_std": float(rewards.std(axis=-1).mean()),
         "frac_reward_zero_std": float(np.mean(
             rewards.max(-1) == rewards.min(-1))),
         "frac_tied_groups": float(np.mean(~signal)),
         "adv_abs_mean": float(np.abs(advantages).mean())}
  for name, value in components.items():
    out[f"rewards/{name}/mean"] = float(value.mean())
    out[f"rewards/{name}/std"] = float(value.std())
  return out

# ------------------------------------------------------------------ FATE --


def repair_scores(z: jax.Array, lengths: jax.Array, *, length_coef: float,
                  l0: float) -> jax.Array:
  """R_pf `[*B]` of objectives `[*B, 4]` and generated tokens `[*B]` (see
  the module docstring)."""
  return (jnp.sum(jnp.asarray(z, jnp.float32), axis=-1)
          - length_coef * losses.length_penalty(jnp.asarray(lengths), l0))


def pareto_group_rewards(z: jax.Array, r_pf: jax.Array, fate: Any
                         ) -> jax.Array:
  """`pareto.pareto_rewards` per group `[B, G]` (front rank, R_pf inside a
  front; `fate.tie_break_scale`, `fate.first_front_only`)."""
  return jax.vmap(lambda zg, rg: pareto.pareto_rewards(
      zg, rg, tie_break_scale=fate.tie_break_scale,
      first_front_only=fate.first_front_only))(z, r_pf)


def scalar_group_rewards(z: jax.Array, r_pf: jax.Array, fate: Any
                         ) -> jax.Array:
  """`Σ_m w_m z_m` (`fate.scalar_weights`) minus R_pf's length term `[B, G]`
  (so it differs from "pareto" only in how objectives are combined)."""
  length_term = jnp.sum(z, axis=-1) - r_pf
  return losses.scalar_rewards(z, jnp.asarray(fate.scalar_weights)) - (
      length_term)


# fate.reward -> (z [B, G, 4], R_pf [B, G], FATE settings) -> rewards [B, G].
FATE_REWARDS: dict[str, Callable[..., jax.Array]] = {
    "pareto": pareto_group_rewards, "scalar": scalar_group_rewards}


def fate_group_rewards(z: jax.Array, r_pf: jax.Array, fate: Any
                       ) -> jax.Array:
  """PFPO rewards `[B, G]` of objectives `[B, G, 4]` and R_pf `[B, G]`:
  `FATE_REWARDS[fate.reward]`."""
  return FATE_REWARDS[fate.reward](jnp.asarray(z, jnp.float32),
                                   jnp.asarray(r_pf, jnp.float32), fate)


def fate_group_advantages(z: jax.Array, r_pf: jax.Array, fate: Any, *,
                          ddof: int = 0, eps: float = 1e-6) -> jax.Array:
  """`losses.group_advantages` of `fate_group_rewards`, `[B, G]`."""
  return losses.group_advantages(fate_group_rewards(z, r_pf, fate),
                                 ddof=ddof, eps=eps)
