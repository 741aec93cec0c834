"""Rewards, advantages and losses for MOSAIC / FATE post-training, in pure jnp.

Every function here is a pure function of arrays: no models, environments or
Flax. Shapes use `B` for sequences (or pairs), `T` for tokens, `V` for the
vocabulary, `D` for the model width, `G` for the group size and `[*B]` for any
leading batch dimensions. docs/losses.md lists every formula with its function.

Losses return a `SumCount(total, count)` instead of a mean: with gradient
accumulation over micro-batches the exact full-batch loss is
`Σ total / Σ count`, which a per-micro-batch mean cannot give when micro-batches
hold different numbers of tokens. The count never depends on parameters, so the
same holds for gradients: `grad(full) = Σ grad(total) / Σ count`.

Registries (`ADVANTAGE_ESTIMATORS`, `KL_ESTIMATORS`, `AGGREGATIONS`) map a
config string to the function that implements it.
"""
from collections.abc import Callable
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SumCount(NamedTuple):
  """A loss as numerator and denominator, so accumulation averages exactly.

  Attributes:
    total: scalar, sum of per-unit losses (a unit is a token, a sequence or a
      pair, depending on the loss and aggregation mode).
    count: scalar, number of units `total` is to be divided by.
  """
  total: Array
  count: Array

  def mean(self) -> Array:
    """`total / max(count, 1)`: zero, not NaN, for an empty batch."""
    return self.total / jnp.maximum(self.count, 1.0)


# ----------------------------------------------------------------------------
# Rewards.


def pairwise_win_rewards(prefs: Array, mask: Array | None = None) -> Array:
  """Win count of each group member from pairwise preferences.

  `R_i = Σ_{j≠i, j valid} P(i, j)`, where `P(i, j) ∈ [0, 1]` is the probability
  that trajectory i is preferred to j (`P(i, j) + P(j, i) = 1`, ties are ½).
  The diagonal is ignored whatever it holds.

  Args:
    prefs: `[*B, G, G]` preferences P.
    mask: optional `[*B, G]` bool, False for padded group members; padded
      members neither earn nor give wins, and get reward 0.

  Returns:
    `[*B, G]` float32 win counts, in `[0, G − 1]`.
  """
  prefs = prefs.astype(jnp.float32)
  g = prefs.shape[-1]
  weights = 1.0 - jnp.eye(g, dtype=jnp.float32)
  if mask is not None:
    m = mask.astype(jnp.float32)
    weights = weights * m[..., :, None] * m[..., None, :]
  return jnp.sum(prefs * weights, axis=-1)


def length_penalty(lengths: Array, l0: float = 400.0) -> Array:
  """Length penalty `max(0, (L − L0) / L0)`, elementwise.

  Args:
    lengths: `[*B]` generated-token counts L.
    l0: free length L0 in tokens (MOSAIC: 400).

  Returns:
    `[*B]` float32 penalties, 0 up to L0 then linear.
  """
  lengths = lengths.astype(jnp.float32)
  return jnp.maximum(0.0, (lengths - l0) / l0)


def mosaic_rewards(prefs: Array, format_bonus: Array, lengths: Array, *,
                   l0: float = 400.0, mask: Array | None = None) -> Array:
  """MOSAIC reward `R_i = Σ_{j≠i} P(i,j) + r_fmt,i − max(0, (L_i − L0)/L0)`.

  Args:
    prefs: `[*B, G, G]` pairwise preferences P.
    format_bonus: `[*B, G]` format bonus r_fmt (MOSAIC: 0..2).
    lengths: `[*B, G]` generated-token counts L.
    l0: free length L0 of the length penalty.
    mask: optional `[*B, G]` bool, False for padded members (reward 0).

  Returns:
    `[*B, G]` float32 rewards.
  """
  rewards = (pairwise_win_rewards(prefs, mask)
             + format_bonus.astype(jnp.float32)
             - length_penalty(lengths, l0))
  if mask is not None:
    rewards = jnp.where(mask, rewards, 0.0)
  return rewards


def scalar_rewards(objectives: Array, weights: Array) -> Array:
  """Scalar reward `R_i = Σ_m w_m z_{i,m}` for the scalar-vs-pairwise ablation.

  Args:
    objectives: `[*B, M]` verifier objectives z (higher is better).
    weights: `[M]` weights w.

  Returns:
    `[*B]` float32 rewards.
  """
  return jnp.einsum("...m,m->...", objectives.astype(jnp.float32),
                    jnp.asarray(weights, jnp.float32))


# ----------------------------------------------------------------------------
# Advantages.


def _group_moments(rewards: Array, mask: Array | None,
                   ddof: int) -> tuple[Array, Array, Array]:
  """Masked mean, standard deviation and constancy over the last axis."""
  rewards = rewards.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(rewards.shape, bool)
  m = mask.astype(jnp.float32)
  n = jnp.sum(m, axis=-1, keepdims=True)
  mean = jnp.sum(rewards * m, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
  centred = (rewards - mean) * m
  var = (jnp.sum(centred**2, axis=-1, keepdims=True)
         / jnp.maximum(n - ddof, 1.0))
  # Constancy is tested exactly (max == min) because a float mean of equal
  # values can differ from them by an ulp, which ε would not cancel.
  hi = jnp.max(jnp.where(mask, rewards, -jnp.inf), axis=-1, keepdims=True)
  lo = jnp.min(jnp.where(mask, rewards, jnp.inf), axis=-1, keepdims=True)
  constant = (hi <= lo) | (n - ddof <= 0)
  return mean, jnp.sqrt(var), constant


def group_advantages(rewards: Array, mask: Array | None = None, *,
                     ddof: int = 0, eps: float = 1e-6) -> Array:
  """GRPO advantages `A_i = (R_i − mean_g R) / (std_g R + ε)` per group.

  `std_g` uses `n − ddof` in its denominator, with n the number of valid
  members. A group whose valid rewards are all equal (or has `n ≤ ddof`)
  carries no signal and gets `A = 0` exactly, even with `ε = 0`.

  Args:
    rewards: `[*B, G]` rewards; the last axis is the group.
    mask: optional `[*B, G]` bool, False for padded members (advantage 0,
      excluded from the mean and std).
    ddof: delta degrees of freedom of the std (0: population, 1: sample).
    eps: ε added to the std.

  Returns:
    `[*B, G]` float32 advantages.
  """
  mean, std, constant = _group_moments(rewards, mask, ddof)
  adv = (rewards.astype(jnp.float32) - mean) / (std + eps)
  adv = jnp.where(constant, 0.0, adv)
  return adv if mask is None else jnp.where(mask, adv, 0.0)


def group_mean_advantages(rewards: Array, mask: Array | None = None, *,
                          ddof: int = 0, eps: float = 1e-6) -> Array:
  """Dr. GRPO advantages `A_i = R_i − mean_g R` (no std normalisation).

  Same signature as `group_advantages` so the registry can swap them; `ddof`
  and `eps` are unused by the formula.

  Args:
    rewards: `[*B, G]` rewards; the last axis is the group.
    mask: optional `[*B, G]` bool, False for padded members (advantage 0).
    ddof: unused.
    eps: unused.

  Returns:
    `[*B, G]` float32 advantages.
  """
  del eps
  mean, _, _ = _group_moments(rewards, mask, ddof)
  adv = rewards.astype(jnp.float32) - mean
  return adv if mask is None else jnp.where(mask, adv, 0.0)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Array]] = {
    "grpo": group_advantages,
    "dr_grpo": group_mean_advantages,
}


# ----------------------------------------------------------------------------
# Token log-probabilities.


def token_logprobs(logits: Array, targets: Array) -> Array:
  """`log softmax(logits)[target]` in float32.

  Args:
    logits: `[*B, T, V]` logits (any float dtype).
    targets: `[*B, T]` int token ids.

  Returns:
    `[*B, T]` float32 log-probabilities.
  """
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def chunked_token_logprobs(hidden: Array, unembed: Array, targets: Array, *,
                           chunk_size: int = 128,
                           vocab_chunk_size: int = 4096) -> Array:
  """`token_logprobs(hidden @ unembed, targets)` without `[B, T, V]` logits.

  The forward pass forms float32 logits one `[B, chunk_size, V]` chunk at a
  time (`lax.map` over the sequence) and keeps only each token's log-sum-exp.
  The backward pass (a custom VJP) recomputes them one
  `[B, chunk_size, vocab_chunk_size]` tile at a time and writes each tile's
  share of the `[D, V]` unembedding gradient into one float32 buffer in
  place. Plain autodiff of the chunked forward would instead form a whole
  `[D, V]` product per chunk before adding it to the running sum, which is as
  large as `B · T · V / n_chunks` logits or larger whenever `D ≥ B · chunk`.

  Args:
    hidden: `[B, T, D]` final hidden states (after the final norm).
    unembed: `[D, V]` unembedding matrix (the lm_head kernel).
    targets: `[B, T]` int token ids.
    chunk_size: tokens per chunk; T is padded up to a multiple of it.
    vocab_chunk_size: vocabulary entries per backward tile (a last, shorter
      tile takes the remainder of V).

  Returns:
    `[B, T]` float32 log-probabilities.
  """
  t = hidden.shape[1]
  chunk_size = min(chunk_size, t)
  vocab_chunk_size = min(vocab_chunk_size, unembed.shape[1])
  return _chunked_logprobs(hidden, unembed, targets, chunk_size,
                           vocab_chunk_size)


def _to_chunks(x: Array, chunk_size: int) -> Array:
  """`[B, T, ...]` -> `[n_chunks, B, chunk_size, ...]`, zero-padding T."""
  b, t = x.shape[:2]
  n = -(-t // chunk_size)
  x = jnp.pad(x, ((0, 0), (0, n * chunk_size - t)) + ((0, 0),) * (x.ndim - 2))
  return x.reshape(b, n, chunk_size, *x.shape[2:]).swapaxes(0, 1)


def _from_chunks(x: Array, t: int) -> Array:
  """Inverse of `_to_chunks`: `[n, B, C, ...]` -> `[B, T, ...]`."""
  n, b, c = x.shape[:3]
  return x.swapaxes(0, 1).reshape(b, n * c, *x.shape[3:])[:, :t]


def _chunked_logprobs_fwd(hidden, unembed, targets, chunk_size,
                          vocab_chunk_size):
  del vocab_chunk_size  # The forward pass uses whole-vocabulary chunks.

  def one_chunk(args):
    h, tgt = args
    logits = jnp.einsum("bcd,dv->bcv", h, unembed,
                        preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    return picked - lse, lse

  logp, lse = jax.lax.map(
      one_chunk, (_to_chunks(hidden, chunk_size),
                  _to_chunks(targets, chunk_size)))
  t = hidden.shape[1]
  # Residuals: the inputs and one float per token; no logits.
  return _from_chunks(logp, t), (hidden, unembed, targets, lse)


def _chunked_logprobs_bwd(chunk_size, vocab_chunk_size, residuals, g):
  hidden, unembed, targets, lse = residuals
  d, v = unembed.shape
  cdt = hidden.dtype
  n_full, rest = divmod(v, vocab_chunk_size)

  def tile(h, tgt, lse_c, g_c, dh, dw, start, size):
    """Adds one [B, C, size] tile's gradient to dh [B, C, D] and dw [D, V]."""
    w = jax.lax.dynamic_slice_in_dim(unembed, start, size, axis=1)
    logits = jnp.einsum("bcd,dv->bcv", h, w,
                        preferred_element_type=jnp.float32)
    # d logp / d logits = onehot(target) - softmax(logits).
    onehot = (tgt - start)[..., None] == jnp.arange(size)
    dlogits = (g_c[..., None] * (onehot - jnp.exp(logits - lse_c[..., None]))
               ).astype(cdt)
    dh = dh + jnp.einsum("bcv,dv->bcd", dlogits, w,
                         preferred_element_type=jnp.float32)
    dw_tile = jnp.einsum("bcd,bcv->dv", h, dlogits,
                         preferred_element_type=jnp.float32)
    dw = jax.lax.dynamic_update_slice_in_dim(
        dw, jax.lax.dynamic_slice_in_dim(dw, start, size, axis=1) + dw_tile,
        start, axis=1)
    return dh, dw

  def one_chunk(dw, args):
    h, tgt, lse_c, g_c = args
    carry = (jnp.zeros(h.shape, jnp.float32), dw)
    carry = jax.lax.fori_loop(
        0, n_full,
        lambda j, c: tile(h, tgt, lse_c, g_c, *c, j * vocab_chunk_size,
                          vocab_chunk_size),
        carry)
    if rest:
      carry = tile(h, tgt, lse_c, g_c, *carry, n_full * vocab_chunk_size, rest)
    dh, dw = carry
    return dw, dh

  # Padded tokens carry g = 0, so they add nothing to either gradient.
  dw, dh = jax.lax.scan(
      one_chunk, jnp.zeros((d, v), jnp.float32),
      (_to_chunks(hidden, chunk_size), _to_chunks(targets, chunk_size), lse,
       _to_chunks(g, chunk_size)))
  return (_from_chunks(dh, hidden.shape[1]).astype(hidden.dtype),
          dw.astype(unembed.dtype), None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_logprobs(hidden: Array, unembed: Array, targets: Array,
                      chunk_size: int, vocab_chunk_size: int) -> Array:
  return _chunked_logprobs_fwd(hidden, unembed, targets, chunk_size,
                               vocab_chunk_size)[0]


_chunked_logprobs.defvjp(_chunked_logprobs_fwd, _chunked_logprobs_bwd)


def sequence_logprobs(logp: Array, mask: Array) -> Array:
  """Sequence log-probability `Σ_t mask_t · logp_t`.

  Args:
    logp: `[*B, T]` token log-probabilities.
    mask: `[*B, T]` loss mask (1 on the tokens of the response).

  Returns:
    `[*B]` float32 sequence log-probabilities.
  """
  return jnp.sum(logp.astype(jnp.float32) * mask, axis=-1)


# ----------------------------------------------------------------------------
# Aggregation of per-token losses.


def token_mean(per_token: Array, mask: Array, *,
               seq_norm: float = 1.0) -> SumCount:
  """Token-mean: `Σ_{b,t} m·ℓ / Σ_{b,t} m`; count = number of mask tokens.

  Args:
    per_token: `[B, T]` per-token losses ℓ.
    mask: `[B, T]` loss mask m.
    seq_norm: unused (shared signature).

  Returns:
    SumCount(total=`Σ m·ℓ`, count=`Σ m`).
  """
  del seq_norm
  mask = mask.astype(jnp.float32)
  return SumCount(jnp.sum(per_token * mask), jnp.sum(mask))


def sequence_mean_token_mean(per_token: Array, mask: Array, *,
                             seq_norm: float = 1.0) -> SumCount:
  """Mean over sequences of the per-sequence token-mean.

  total = `Σ_b (Σ_t m·ℓ) / (Σ_t m)`, count = number of sequences with at least
  one mask token (fully masked padding rows count for nothing).

  Args:
    per_token: `[B, T]` per-token losses ℓ.
    mask: `[B, T]` loss mask m.
    seq_norm: unused (shared signature).

  Returns:
    SumCount of per-sequence means over non-empty sequences.
  """
  del seq_norm
  mask = mask.astype(jnp.float32)
  n_tok = jnp.sum(mask, axis=-1)
  seq_mean = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(n_tok, 1.0)
  return SumCount(jnp.sum(seq_mean), jnp.sum(n_tok > 0).astype(jnp.float32))


def sequence_sum(per_token: Array, mask: Array, *,
                 seq_norm: float = 1.0) -> SumCount:
  """Mean over sequences of the per-sequence token-sum divided by a constant.

  total = `Σ_b (Σ_t m·ℓ) / seq_norm`, count = number of sequences with at
  least one mask token. With `seq_norm` = the maximum response length this
  is Dr. GRPO's "sequence-sum / constant"; with 1 it is a plain sum per
  sequence. The constant (not the sequence's own length) keeps long and short
  responses weighted by their token counts.

  Args:
    per_token: `[B, T]` per-token losses ℓ.
    mask: `[B, T]` loss mask m.
    seq_norm: the constant divisor.

  Returns:
    SumCount of per-sequence normalised sums over non-empty sequences.
  """
  mask = mask.astype(jnp.float32)
  n_tok = jnp.sum(mask, axis=-1)
  total = jnp.sum(per_token * mask) / seq_norm
  return SumCount(total, jnp.sum(n_tok > 0).astype(jnp.float32))


AGGREGATIONS: dict[str, Callable[..., SumCount]] = {
    "token-mean": token_mean,
    "sequence-mean-token-mean": sequence_mean_token_mean,
    "sequence-sum": sequence_sum,
}


# ----------------------------------------------------------------------------
# KL estimators.


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1 estimator of KL(π‖π_ref): `logp − logp_ref` (unbiased, can be < 0).

  Args:
    logp: `[*B, T]` log π of the sampled tokens.
    ref_logp: `[*B, T]` log π_ref of the same tokens.

  Returns:
    `[*B, T]` per-token estimates.
  """
  return logp - ref_logp


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2 estimator: `½ (logp − logp_ref)²` (biased, ≥ 0, low variance).

  Args:
    logp: `[*B, T]` log π of the sampled tokens.
    ref_logp: `[*B, T]` log π_ref of the same tokens.

  Returns:
    `[*B, T]` per-token estimates.
  """
  return 0.5 * (logp - ref_logp)**2


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 estimator: `exp(logp_ref − logp) − (logp_ref − logp) − 1`.

  Unbiased and ≥ 0 per token (Schulman 2020).

  Args:
    logp: `[*B, T]` log π of the sampled tokens.
    ref_logp: `[*B, T]` log π_ref of the same tokens.

  Returns:
    `[*B, T]` per-token estimates.
  """
  log_ratio = ref_logp - logp
  return jnp.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# ----------------------------------------------------------------------------
# Policy, SFT and DPO losses.


def ppo_clip_token_loss(logp: Array, old_logp: Array, advantages: Array, *,
                        eps_lo: float = 0.2, eps_hi: float = 0.2,
                        dual_clip: float | None = None) -> Array:
  """Per-token PPO-clipped policy loss (to minimise).

  With `r = exp(logp − logp_old)` and the sequence advantage A:
  `ℓ = −min(r·A, clip(r, 1 − ε_lo, 1 + ε_hi)·A)`. The `min` makes the clip
  one-sided in the right direction for either sign of A: for A > 0 the gain
  stops at `r > 1 + ε_hi`, for A < 0 at `r < 1 − ε_lo`; outside those the
  gradient is zero, inside (and on the other side) it is `−A·∇r`.
  Dual clip (Ye et al. 2020), for A < 0 only: `ℓ = min(ℓ, −c·A)` with c > 1,
  which bounds the loss (and zeroes the gradient) when `r > c`.

  Args:
    logp: `[B, T]` log π_θ of the sampled tokens (differentiated).
    old_logp: `[B, T]` log π_old from the sampler (constant).
    advantages: `[B]` sequence advantages, broadcast over tokens.
    eps_lo: lower clip ε_lo.
    eps_hi: upper clip ε_hi (ε_hi > ε_lo is DAPO's clip-higher).
    dual_clip: the constant c, or None to disable.

  Returns:
    `[B, T]` float32 per-token losses (unmasked; aggregate with a mask).
  """
  ratio = jnp.exp(logp.astype(jnp.float32) - old_logp.astype(jnp.float32))
  adv = advantages.astype(jnp.float32)[..., None]
  clipped = jnp.clip(ratio, 1.0 - eps_lo, 1.0 + eps_hi)
  loss = -jnp.minimum(ratio * adv, clipped * adv)
  if dual_clip is not None:
    loss = jnp.where(adv < 0, jnp.minimum(loss, -dual_clip * adv), loss)
  return loss


def policy_loss(logp: Array, old_logp: Array, ref_logp: Array | None,
                advantages: Array, mask: Array, *, eps_lo: float = 0.2,
                eps_hi: float = 0.2, dual_clip: float | None = None,
                kl_beta: float = 0.0, kl_estimator: str = "k3",
                aggregation: str = "token-mean",
                seq_norm: float = 1.0) -> SumCount:
  """GRPO loss: PPO-clipped ratio term plus `β·KL(π‖π_ref)`, aggregated.

  Per token `ℓ_t = ppo_clip_token_loss_t + β · KL_ESTIMATORS[kl_estimator]_t`,
  counted on model tokens only (`mask`), then
  `AGGREGATIONS[aggregation](ℓ, mask, seq_norm=seq_norm)`.

  Args:
    logp: `[B, T]` log π_θ of the sampled tokens.
    old_logp: `[B, T]` log π_old from the sampler.
    ref_logp: `[B, T]` log π_ref, or None when `kl_beta == 0`.
    advantages: `[B]` sequence advantages.
    mask: `[B, T]` 1 on model-generated tokens, 0 on prompt/tool/padding.
    eps_lo: lower clip ε_lo.
    eps_hi: upper clip ε_hi.
    dual_clip: dual-clip constant c, or None.
    kl_beta: β; 0 skips the KL term.
    kl_estimator: key of KL_ESTIMATORS.
    aggregation: key of AGGREGATIONS.
    seq_norm: constant for the "sequence-sum" aggregation.

  Returns:
    SumCount; the loss is `total / count`, accumulated over micro-batches.
  """
  per_token = ppo_clip_token_loss(logp, old_logp, advantages, eps_lo=eps_lo,
                                  eps_hi=eps_hi, dual_clip=dual_clip)
  if kl_beta:
    per_token = per_token + kl_beta * KL_ESTIMATORS[kl_estimator](
        logp.astype(jnp.float32), ref_logp.astype(jnp.float32))
  return AGGREGATIONS[aggregation](per_token, mask, seq_norm=seq_norm)


def sft_nll(logp: Array, mask: Array, *, aggregation: str = "token-mean",
            seq_norm: float = 1.0) -> SumCount:
  """SFT negative log-likelihood `−log π(a*|·)` on masked tokens.

  Per token `ℓ_t = −logp_t`, aggregated by `AGGREGATIONS[aggregation]`.

  Args:
    logp: `[B, T]` log π_θ of the target tokens.
    mask: `[B, T]` 1 on the target (response) tokens.
    aggregation: key of AGGREGATIONS.
    seq_norm: constant for the "sequence-sum" aggregation.

  Returns:
    SumCount of the NLL.
  """
  return AGGREGATIONS[aggregation](-logp.astype(jnp.float32), mask,
                                   seq_norm=seq_norm)


def dpo_loss(policy_chosen: Array, policy_rejected: Array, ref_chosen: Array,
             ref_rejected: Array, *, beta: float = 0.1,
             mask: Array | None = None) -> SumCount:
  """DPO loss for offline preference pairs.

  `ℓ = −log σ(β · ((π_c − r_c) − (π_r − r_r)))`, where π_c, π_r, r_c, r_r are
  the sequence log-probabilities (see `sequence_logprobs`) of the chosen and
  rejected responses under the policy and the reference.

  Args:
    policy_chosen: `[B]` log π_θ(chosen).
    policy_rejected: `[B]` log π_θ(rejected).
    ref_chosen: `[B]` log π_ref(chosen).
    ref_rejected: `[B]` log π_ref(rejected).
    beta: inverse temperature β.
    mask: optional `[B]` bool, False for padding pairs.

  Returns:
    SumCount(total=`Σ ℓ`, count=number of pairs).
  """
  margin = ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
  loss = -jax.nn.log_sigmoid(beta * margin.astype(jnp.float32))
  m = (jnp.ones(loss.shape, jnp.float32) if mask is None
       else mask.astype(jnp.float32))
  return SumCount(jnp.sum(loss * m), jnp.sum(m))
