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

Registries (`ADVANTAGE_ESTIMATORS`, `KL_ESTIMATORS`, `AGGREGATIONS`,
`POLICY_RATIOS`) map a config string to the function that implements it;
`OBJECTIVE_PRESETS` names whole objectives (GRPO, Dr. GRPO, DAPO, GSPO,
RLOO) as `rl` settings.

Masked positions never reach an `exp` or a product with the mask: inputs are
replaced by 0 there with `jnp.where` first, so a `−inf` log-prob on a padding
token gives a finite loss and finite gradients (inf·0 would be NaN).
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


def leave_one_out_advantages(rewards: Array, mask: Array | None = None, *,
                             ddof: int = 0, eps: float = 1e-6) -> Array:
  """RLOO advantages `A_i = R_i − mean_{j≠i} R_j` (leave-one-out baseline).

  Equal to `n/(n − 1) · (R_i − mean_g R)` with n valid members: the baseline
  of each member is independent of its own sample, so the policy gradient is
  unbiased (Kool et al. 2019; Ahmadian et al. 2024). A group with fewer than
  two valid members gets 0. Same signature as `group_advantages`; `ddof`
  and `eps` are unused.

  Args:
    rewards: `[*B, G]` rewards; the last axis is the group.
    mask: optional `[*B, G]` bool, False for padded members (advantage 0,
      excluded from every baseline).
    ddof: unused.
    eps: unused.

  Returns:
    `[*B, G]` float32 advantages.
  """
  del ddof, eps
  rewards = rewards.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(rewards.shape, bool)
  r = jnp.where(mask, rewards, 0.0)
  n = jnp.sum(mask.astype(jnp.float32), axis=-1, keepdims=True)
  others = (jnp.sum(r, axis=-1, keepdims=True) - r) / jnp.maximum(n - 1, 1.0)
  adv = jnp.where(n >= 2, rewards - others, 0.0)
  return jnp.where(mask, adv, 0.0)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Array]] = {
    "grpo": group_advantages,
    "dr_grpo": group_mean_advantages,
    "rloo": leave_one_out_advantages,
}


def group_has_signal(verdicts: Array, mask: Array | None = None) -> Array:
  """Whether a group's verdicts differ at all: `[*B]` bool.

  A group whose valid members all received the same verdict (every pairwise
  judgement a tie and equal format bonuses, or, for PFPO, equal objective
  vectors z) has nothing to learn from: any advantage it gets comes from the
  length penalty alone, which group normalisation blows up to ±1 or more
  (two members 1 token apart above L0 get ±1 whatever ε). Equality is exact.

  Args:
    verdicts: `[*B, G, K]` per-member verdicts, K numbers each (anything
      equal exactly when two members are judged alike; K = 1 for a scalar).
    mask: optional `[*B, G]` bool, False for padded members (ignored).

  Returns:
    `[*B]` True where two valid members differ.
  """
  v = verdicts.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(v.shape[:-1], bool)
  m = mask[..., None]
  hi = jnp.max(jnp.where(m, v, -jnp.inf), axis=-2)
  lo = jnp.min(jnp.where(m, v, jnp.inf), axis=-2)
  return jnp.any(hi > lo, axis=-1)


TIE_ADVANTAGES = ("zero", "keep")


def tie_advantages(advantages: Array, signal: Array, mode: str = "zero"
                   ) -> Array:
  """`rl.tie_advantage`: zero the advantages of groups without signal.

  Args:
    advantages: `[*B, G]` advantages.
    signal: `[*B]` bool from `group_has_signal`.
    mode: "zero" (groups without signal get A = 0) or "keep" (the old
      behaviour: the length penalty ranks tied groups).

  Returns:
    `[*B, G]` advantages.
  """
  if mode == "keep":
    return advantages
  if mode != "zero":
    raise ValueError(f"unknown tie mode {mode!r}; expected one of "
                     f"{TIE_ADVANTAGES}")
  return jnp.where(signal[..., None], advantages, 0.0)


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


def chunked_token_entropy(hidden: Array, unembed: Array, *,
                          chunk_size: int = 128) -> Array:
  """Entropy `H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v z_t,v` of `z = h @ W`.

  Forward only (not differentiated: it is a diagnostic), one
  `[B, chunk_size, V]` chunk of float32 logits at a time. Scale `hidden` by
  1/T for the entropy at temperature T.

  Args:
    hidden: `[B, T, D]` final hidden states.
    unembed: `[D, V]` unembedding matrix.
    chunk_size: tokens per chunk.

  Returns:
    `[B, T]` float32 entropies in nats.
  """
  t = hidden.shape[1]
  chunk_size = min(chunk_size, t)

  def one_chunk(h):
    logits = jnp.einsum("bcd,dv->bcv", h, unembed,
                        preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    p = jnp.exp(logits - lse[..., None])
    return lse - jnp.sum(p * logits, axis=-1)

  out = jax.lax.map(one_chunk, _to_chunks(jax.lax.stop_gradient(hidden),
                                          chunk_size))
  return _from_chunks(out, t)


def sequence_logprobs(logp: Array, mask: Array) -> Array:
  """Sequence log-probability `Σ_t mask_t · logp_t`.

  Args:
    logp: `[*B, T]` token log-probabilities.
    mask: `[*B, T]` loss mask (1 on the tokens of the response).

  Returns:
    `[*B]` float32 sequence log-probabilities.
  """
  return jnp.sum(_masked(logp.astype(jnp.float32), mask), axis=-1)


def _masked(x: Array, mask: Array) -> Array:
  """`x · mask` where mask > 0, exactly 0 elsewhere (also for inf or NaN x)."""
  m = mask.astype(jnp.float32)
  return jnp.where(m > 0, x * m, 0.0)


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
  return SumCount(jnp.sum(_masked(per_token, mask)), jnp.sum(mask))


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
  seq_mean = (jnp.sum(_masked(per_token, mask), axis=-1)
              / jnp.maximum(n_tok, 1.0))
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
  total = jnp.sum(_masked(per_token, mask)) / seq_norm
  return SumCount(total, jnp.sum(n_tok > 0).astype(jnp.float32))


AGGREGATIONS: dict[str, Callable[..., SumCount]] = {
    "token-mean": token_mean,
    "sequence-mean-token-mean": sequence_mean_token_mean,
    "sequence-sum": sequence_sum,
}


# ----------------------------------------------------------------------------
# KL estimators.
#
# Each takes the log-probs of tokens sampled from π (π_old = π at the update)
# and returns a per-token estimate whose expectation is KL(π‖π_ref) (k1, k3)
# or close to it (k2). As *loss terms*, differentiated through logp with the
# sampling distribution held fixed, their expected gradients differ
# (tests/test_losses.py computes each exactly on a categorical):
#   k1: E_π[∇ log π] = 0, no gradient at all (use it as a reward penalty,
#       `kl_reward_advantages`, where its gradient is ∇KL(π‖π_ref));
#   k2: E_π[(log π − log π_ref) ∇ log π] = ∇KL(π‖π_ref);
#   k3: E_π[(1 − π_ref/π) ∇ log π] = −Σ_y π_ref ∇ log π = ∇KL(π_ref‖π).


def kl_k1(logp: Array, ref_logp: Array) -> Array:
  """k1: `logp − logp_ref`; unbiased for KL(π‖π_ref), can be < 0.

  Gradient as a loss term: zero in expectation (`E_π[∇ log π] = 0`), so
  `β·k1` in the loss does not regularise. As a reward penalty (subtracted
  from the return, not differentiated) its policy gradient is
  `β·∇KL(π‖π_ref)` exactly: `kl_reward_advantages`.

  Args:
    logp: `[*B, T]` log π of the sampled tokens.
    ref_logp: `[*B, T]` log π_ref of the same tokens.

  Returns:
    `[*B, T]` per-token estimates.
  """
  return logp - ref_logp


def kl_k2(logp: Array, ref_logp: Array) -> Array:
  """k2: `½ (logp − logp_ref)²`; biased for KL(π‖π_ref), ≥ 0.

  Gradient as a loss term: `E_π[(log π − log π_ref) ∇ log π]`, which is
  exactly `∇KL(π‖π_ref)` (the KL's own gradient, since `E_π[∇ log π] = 0`).

  Args:
    logp: `[*B, T]` log π of the sampled tokens.
    ref_logp: `[*B, T]` log π_ref of the same tokens.

  Returns:
    `[*B, T]` per-token estimates.
  """
  return 0.5 * (logp - ref_logp)**2


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3: `exp(logp_ref − logp) − (logp_ref − logp) − 1` (Schulman 2020).

  Unbiased for the value of KL(π‖π_ref) and ≥ 0 per token. Gradient as a
  loss term: `E_π[(1 − π_ref/π) ∇ log π] = −Σ_y π_ref(y) ∇ log π(y)`, which
  is `∇KL(π_ref‖π)`, the *reverse* KL's gradient, not `∇KL(π‖π_ref)` (the
  two agree to first order near π = π_ref). This is what GRPO's loss uses.

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
# Which KL each estimator's loss gradient follows (docs/losses.md).
KL_GRADIENTS = {"k1": "none (0)", "k2": "KL(π‖π_ref)", "k3": "KL(π_ref‖π)"}


def sequence_kl(logp: Array, ref_logp: Array, mask: Array) -> Array:
  """`Σ_t m_t (logp_t − logp_ref,t)`: k1 of whole sequences, `[*B]`.

  Unbiased for the sequence-level KL(π‖π_ref) of a response sampled from π.

  Args:
    logp: `[*B, T]` log π of the sampled tokens (the sampling policy's).
    ref_logp: `[*B, T]` log π_ref.
    mask: `[*B, T]` 1 on the response's model tokens.

  Returns:
    `[*B]` float32.
  """
  d = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
  return jnp.sum(_masked(d, mask), axis=-1)


def kl_reward_advantages(seq_kl: Array, beta: float,
                         mask: Array | None = None) -> Array:
  """The advantage of the reward penalty `−β·k1`: `−β (K_i − mean_{j≠i} K_j)`.

  Added to the task advantages (after their normalisation, so β keeps its
  meaning whatever the reward scale). With K the sequence k1
  (`sequence_kl`) of responses sampled from π, the policy gradient of this
  advantage is `−β ∇KL(π‖π_ref)` in expectation: the leave-one-out baseline
  is independent of each member's own sample, so it adds no bias. (Exact
  with a constant loss normaliser, e.g. "sequence-sum"; the per-sequence
  token-mean weights each response by 1/length.)

  Args:
    seq_kl: `[*B, G]` sequence k1 estimates.
    beta: β.
    mask: optional `[*B, G]` bool, False for padded members.

  Returns:
    `[*B, G]` float32 advantages.
  """
  return -beta * leave_one_out_advantages(seq_kl, mask)


# ----------------------------------------------------------------------------
# Policy losses.


def token_ratios(logp: Array, old_logp: Array, mask: Array) -> Array:
  """PPO/GRPO importance ratio per token, `r_t = exp(logp_t − logp_old,t)`.

  Masked positions get ratio 1 (their log-ratio is replaced by 0 before the
  `exp`, so an infinite log-ratio there cannot produce inf or NaN).

  Args:
    logp: `[B, T]` log π_θ (differentiated).
    old_logp: `[B, T]` log π_old.
    mask: `[B, T]` loss mask.

  Returns:
    `[B, T]` float32 ratios.
  """
  d = logp.astype(jnp.float32) - old_logp.astype(jnp.float32)
  return jnp.exp(jnp.where(mask > 0, d, 0.0))


def sequence_ratios(logp: Array, old_logp: Array, mask: Array) -> Array:
  """GSPO's sequence ratio `s_i = exp((1/|y_i|) Σ_t (logp − logp_old))`.

  The geometric mean of the token ratios of sequence i (Zheng et al. 2025,
  "Group Sequence Policy Optimization"), broadcast to every token of the
  sequence, so one clip decision covers the whole response; its gradient
  reaches every token as `s_i/|y_i| · ∇logp_t`. Masked positions are left
  out (and get the sequence's value, which the aggregation drops).

  Args:
    logp: `[B, T]` log π_θ (differentiated).
    old_logp: `[B, T]` log π_old.
    mask: `[B, T]` loss mask.

  Returns:
    `[B, T]` float32 ratios, constant along T.
  """
  d = logp.astype(jnp.float32) - old_logp.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0)
  log_s = jnp.sum(_masked(d, m), axis=-1, keepdims=True) / n
  return jnp.broadcast_to(jnp.exp(log_s), d.shape)


POLICY_RATIOS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "ppo": token_ratios,
    "gspo": sequence_ratios,
}


def clipped_surrogate(ratio: Array, advantages: Array, *, eps_lo: float = 0.2,
                      eps_hi: float = 0.2,
                      dual_clip: float | None = None) -> Array:
  """`−min(r·A, clip(r, 1 − ε_lo, 1 + ε_hi)·A)`, with optional dual clip.

  Args:
    ratio: `[B, T]` importance ratios r (token or sequence).
    advantages: `[B]` sequence advantages, broadcast over tokens.
    eps_lo: lower clip ε_lo.
    eps_hi: upper clip ε_hi.
    dual_clip: dual-clip constant c (A < 0 only), or None.

  Returns:
    `[B, T]` float32 per-token losses.
  """
  adv = advantages.astype(jnp.float32)[..., None]
  clipped = jnp.clip(ratio, 1.0 - eps_lo, 1.0 + eps_hi)
  loss = -jnp.minimum(ratio * adv, clipped * adv)
  if dual_clip is not None:
    loss = jnp.where(adv < 0, jnp.minimum(loss, -dual_clip * adv), loss)
  return loss


def clip_masks(ratio: Array, advantages: Array, *, eps_lo: float,
               eps_hi: float) -> tuple[Array, Array]:
  """Where the clip is active (zero gradient): `(low, high)`, `[B, T]` bool.

  low: `A < 0` and `r < 1 − ε_lo`; high: `A > 0` and `r > 1 + ε_hi` (TRL's
  `clip_ratio/low_mean` and `clip_ratio/high_mean` are their token means).
  """
  adv = advantages[..., None]
  return (ratio < 1.0 - eps_lo) & (adv < 0), (ratio > 1.0 + eps_hi) & (adv > 0)


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
  return clipped_surrogate(ratio, advantages, eps_lo=eps_lo, eps_hi=eps_hi,
                           dual_clip=dual_clip)


def policy_loss(logp: Array, old_logp: Array, ref_logp: Array | None,
                advantages: Array, mask: Array, *, eps_lo: float = 0.2,
                eps_hi: float = 0.2, dual_clip: float | None = None,
                kl_beta: float = 0.0, kl_estimator: str = "k3",
                aggregation: str = "token-mean", seq_norm: float = 1.0,
                ratio: str = "ppo") -> SumCount:
  """Clipped policy loss plus `β·KL` estimator, aggregated.

  Per token `ℓ_t = clipped_surrogate(POLICY_RATIOS[ratio])_t + β ·
  KL_ESTIMATORS[kl_estimator]_t`, counted on model tokens only (`mask`),
  then `AGGREGATIONS[aggregation](ℓ, mask, seq_norm=seq_norm)`. Log-probs
  are replaced by 0 at masked positions before anything else, so no inf or
  NaN there reaches the loss or its gradient. `KL_GRADIENTS` says which KL
  each estimator's gradient follows (k3: KL(π_ref‖π)).

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
    ratio: key of POLICY_RATIOS ("ppo" per token, "gspo" per sequence).

  Returns:
    SumCount; the loss is `total / count`, accumulated over micro-batches.
  """
  on = mask > 0
  logp = jnp.where(on, logp.astype(jnp.float32), 0.0)
  old_logp = jnp.where(on, old_logp.astype(jnp.float32), 0.0)
  r = POLICY_RATIOS[ratio](logp, old_logp, mask)
  per_token = clipped_surrogate(r, advantages, eps_lo=eps_lo, eps_hi=eps_hi,
                                dual_clip=dual_clip)
  if kl_beta:
    ref_logp = jnp.where(on, ref_logp.astype(jnp.float32), 0.0)
    per_token = per_token + kl_beta * KL_ESTIMATORS[kl_estimator](
        logp, ref_logp)
  return AGGREGATIONS[aggregation](per_token, mask, seq_norm=seq_norm)


# Whole objectives as `rl` settings (docs/losses.md): apply with
# `config.rl.update(losses.OBJECTIVE_PRESETS[name])`. Dr. GRPO's
# `seq_norm` should be the longest response (e.g. rollout.max_total_length).
OBJECTIVE_PRESETS: dict[str, dict[str, object]] = {
    # Shao et al. 2024, "DeepSeekMath": std-normalised group advantages, k3.
    "grpo": dict(advantage="grpo", policy_ratio="ppo", clip_eps_lo=0.2,
                 clip_eps_hi=0.2, aggregation="sequence-mean-token-mean",
                 kl_estimator="k3", dynamic_sampling=False),
    # Liu et al. 2025, "Understanding R1-Zero-Like Training": no std, a
    # constant-length normaliser.
    "dr_grpo": dict(advantage="dr_grpo", policy_ratio="ppo",
                    aggregation="sequence-sum", dynamic_sampling=False),
    # Yu et al. 2025, "DAPO": clip-higher, token-mean, groups without signal
    # dropped, no KL.
    "dapo": dict(advantage="grpo", policy_ratio="ppo", clip_eps_lo=0.2,
                 clip_eps_hi=0.28, aggregation="token-mean",
                 dynamic_sampling=True, kl_beta=0.0),
    # Zheng et al. 2025, "GSPO": sequence ratio, sequence mean, tight clip.
    "gspo": dict(advantage="grpo", policy_ratio="gspo", clip_eps_lo=3e-4,
                 clip_eps_hi=4e-4, aggregation="sequence-mean-token-mean",
                 dynamic_sampling=False),
    # Ahmadian et al. 2024, "Back to Basics": leave-one-out baseline.
    "rloo": dict(advantage="rloo", policy_ratio="ppo",
                 aggregation="sequence-mean-token-mean",
                 dynamic_sampling=False),
}


# ----------------------------------------------------------------------------
# SFT and DPO losses.


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
