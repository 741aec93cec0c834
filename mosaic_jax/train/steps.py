"""Jitted training steps: SFT and the PPO-clipped policy-gradient step.

Both steps take a `TrainState` and a batch of `B` rows and return the new state
and a dict of scalar metrics. Shared machinery:

* Log-probs are token-aligned: `logp[:, t] = log π(tokens[t] | tokens[<t])`
  for t ≥ 1 and 0 at t = 0, the layout of the sampler's log-probs and of
  `loss_mask` (1 on the tokens the loss trains). They come from the model's
  final hidden states times the unembedding one chunk of tokens at a time
  (`losses.chunked_token_logprobs`), so no `[B, T, V]` array is ever built.
* Micro-batches and gradient accumulation: the batch is split into
  `B / microbatch` micro-batches scanned in one jitted step. Each contributes
  the gradient of its loss *numerator* and its *count* (the losses'
  `SumCount`); the step divides the summed gradient by the summed count once,
  so any split gives the full-batch gradient exactly (up to float summation
  order), for every aggregation mode.
* Non-finite guard: if the loss, the gradient norm or the updated params or
  optimizer state are not finite, the update is skipped (params and
  optimizer state are kept, bit for bit) and `metrics["skipped"]` is 1. The
  step counter still advances.
* The state argument is donated (`donate`, on by default): its buffers are
  reused for the new state, so params and optimizer state exist once in
  memory, not twice.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mosaic_jax import losses
from mosaic_jax.train.state import TrainState, from_section

Array = jax.Array
Metrics = dict[str, Array]


class SFTBatch(NamedTuple):
  """Supervised examples.

  Attributes:
    tokens: `[B, T]` int32 token ids (right-padded).
    loss_mask: `[B, T]` 1 on the target (assistant) tokens.
    attention_mask: `[B, T]` 1 on real tokens, 0 on padding.
  """
  tokens: Array
  loss_mask: Array
  attention_mask: Array


class PGBatch(NamedTuple):
  """Sampled trajectories with their advantages.

  Attributes:
    tokens: `[B, T]` int32 token ids.
    loss_mask: `[B, T]` 1 on model-generated tokens (not prompt, tool output
      or padding).
    attention_mask: `[B, T]` 1 on real tokens, 0 on padding.
    advantages: `[B]` float32 sequence advantages.
    old_logp: `[B, T]` token-aligned log π_old (from the sampler).
    ref_logp: `[B, T]` token-aligned log π_ref (`reference_logprobs`), or
      None when no KL is computed.
  """
  tokens: Array
  loss_mask: Array
  attention_mask: Array
  advantages: Array
  old_logp: Array
  ref_logp: Array | None = None


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """SFT step settings.

  Attributes:
    microbatch: rows per micro-batch (0: the whole batch at once).
    aggregation: key of `losses.AGGREGATIONS`.
    seq_norm: constant of the "sequence-sum" aggregation.
    chunk_size: tokens per chunk of the log-prob computation.
    donate: donate the state to the step, so params and optimizer state
      exist once in memory; off only when the caller keeps the old state.
  """
  microbatch: int = 0
  aggregation: str = "token-mean"
  seq_norm: float = 1.0
  chunk_size: int = 128
  donate: bool = True

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | Any) -> SFTConfig:
    return from_section(cls, section)


@dataclasses.dataclass(frozen=True)
class PGConfig:
  """Policy-gradient step settings (see `losses.policy_loss`).

  Attributes:
    clip_eps_lo, clip_eps_hi: PPO clip range `[1 − ε_lo, 1 + ε_hi]`.
    dual_clip: dual-clip constant c (> 1), or None.
    kl_beta: β of the KL penalty; 0 disables it.
    kl_estimator: key of `losses.KL_ESTIMATORS`.
    aggregation: key of `losses.AGGREGATIONS`.
    seq_norm: constant of the "sequence-sum" aggregation.
    microbatch: rows per micro-batch (0: the whole batch at once).
    chunk_size: tokens per chunk of the log-prob computation.
    donate: donate the state to the step (see `SFTConfig.donate`).
  """
  clip_eps_lo: float = 0.2
  clip_eps_hi: float = 0.2
  dual_clip: float | None = None
  kl_beta: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"
  seq_norm: float = 1.0
  microbatch: int = 0
  chunk_size: int = 128
  donate: bool = True

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | Any) -> PGConfig:
    return from_section(cls, section)


# ----------------------------------------------------------------------------
# Log-probs.


def model_logprobs(model: nnx.Module, tokens: Array, attention_mask: Array,
                   chunk_size: int = 128) -> Array:
  """Token-aligned log-probs of `tokens` under `model`, chunked over T.

  Args:
    model: a `models.Decoder`.
    tokens: `[B, T]` int32.
    attention_mask: `[B, T]` 1 on real tokens.
    chunk_size: tokens per logits chunk.

  Returns:
    `[B, T]` float32; column 0 is 0 (the first token has no prediction).
  """
  hidden = model(tokens, mask=attention_mask, return_hidden=True)
  logp = losses.chunked_token_logprobs(hidden[:, :-1], model.unembedding(),
                                       tokens[:, 1:], chunk_size=chunk_size)
  return jnp.pad(logp, ((0, 0), (1, 0)))


def _num_micro(batch_size: int, microbatch: int) -> int:
  if microbatch <= 0:
    return 1
  if batch_size % microbatch:
    raise ValueError(f"batch of {batch_size} rows does not split into "
                     f"micro-batches of {microbatch}")
  return batch_size // microbatch


def _split(x: Array | None, n: int) -> Array | None:
  """`[B, ...]` -> `[n, B / n, ...]`, micro-batch k holding rows k, k + n, ….

  Strided rather than contiguous: a batch sharded over devices on its first
  axis keeps every device busy in every micro-batch.
  """
  if x is None:
    return None
  return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "microbatch",
                                             "chunk_size"))
def compute_logprobs(graphdef: nnx.GraphDef, params: nnx.State,
                     tokens: Array, attention_mask: Array, *,
                     microbatch: int = 0, chunk_size: int = 128) -> Array:
  """Token-aligned log-probs of a model given as (graphdef, params).

  Used once per batch for the frozen reference policy (and for π_old when
  the sampler's log-probs are not used), outside the differentiated step so
  its forward passes are neither differentiated nor repeated per epoch.

  Args:
    graphdef, params: `nnx.split(model, nnx.Param)`.
    tokens: `[B, T]` int32.
    attention_mask: `[B, T]` 1 on real tokens.
    microbatch: rows per forward pass (0: all at once).
    chunk_size: tokens per logits chunk.

  Returns:
    `[B, T]` float32 log-probs, in the rows' original order.
  """
  n = _num_micro(tokens.shape[0], microbatch)
  model = nnx.merge(graphdef, params)
  out = jax.lax.map(
      lambda xs: model_logprobs(model, xs[0], xs[1], chunk_size),
      (_split(tokens, n), _split(attention_mask, n)))
  return out.swapaxes(0, 1).reshape(tokens.shape)


def reference_logprobs(ref_model: nnx.Module, batch: PGBatch, *,
                       microbatch: int = 0, chunk_size: int = 128) -> PGBatch:
  """`batch` with `ref_logp` filled in by the frozen reference model."""
  graphdef, params = nnx.split(ref_model, nnx.Param)
  ref = compute_logprobs(graphdef, params, batch.tokens, batch.attention_mask,
                         microbatch=microbatch, chunk_size=chunk_size)
  return batch._replace(ref_logp=ref)


# ----------------------------------------------------------------------------
# Accumulation and update.

# A micro-batch loss: (params, micro-batch) -> (numerator, (count, aux sums)).
MicroLoss = Callable[[nnx.State, Any], tuple[Array, tuple[Array, Metrics]]]


def _accumulate(loss_fn: MicroLoss, params: nnx.State, batch: Any,
                n: int) -> tuple[Array, Array, nnx.State, Metrics]:
  """Sums numerator, count, gradient and aux sums over n micro-batches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  micro = jax.tree.map(lambda x: _split(x, n), batch)

  def body(carry, mb):
    (total, (count, aux)), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, carry, (total, count, grads, aux)), None

  (total, (count, aux)), grads = jax.eval_shape(
      grad_fn, params, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       (total, count, grads, aux))
  (total, count, grads, aux), _ = jax.lax.scan(body, zeros, micro)
  return total, count, grads, aux


def all_finite(tree: Any) -> Array:
  """Whether every floating-point leaf of `tree` is finite: `[]` bool."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _apply_update(state: TrainState, total: Array, count: Array,
                  grads: nnx.State) -> tuple[TrainState, Metrics]:
  """One optimizer update with the exact-mean gradient, or none if non-finite."""
  denom = jnp.maximum(count, 1.0)
  loss = total / denom
  grads = jax.tree.map(lambda g: g / denom, grads)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  old = (state.params, state.opt_state)

  def update(_):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # optax computes in float32 and may hand bf16 params/moments back
    # promoted; both cond branches (and the next step's jit key) need the
    # stored dtypes.
    keep = lambda new, old: new.astype(old.dtype)
    new = (jax.tree.map(keep, params, state.params),
           jax.tree.map(keep, opt_state, state.opt_state))
    # A finite gradient can still give a non-finite result (an overflowing
    # learning rate or moment); it is dropped like a non-finite gradient, so
    # params are never written with NaN or inf.
    applied = all_finite(new)
    return jax.lax.cond(applied, lambda: (*new, applied),
                        lambda: (*old, applied))

  # lax.cond, not jnp.where: the skipped branch returns the old buffers
  # untouched and the NaN gradient never reaches the optimizer moments.
  params, opt_state, applied = jax.lax.cond(
      finite, update, lambda _: (*old, jnp.asarray(False)), None)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": grad_norm,
                     "skipped": 1.0 - applied.astype(jnp.float32)}


# ----------------------------------------------------------------------------
# SFT.


def _sft_step(state: TrainState, batch: SFTBatch, *,
              cfg: SFTConfig) -> tuple[TrainState, Metrics]:
  n = _num_micro(batch.tokens.shape[0], cfg.microbatch)

  def loss_fn(params, mb: SFTBatch):
    model = state.merge(params)  # + frozen base weights with LoRA
    logp = model_logprobs(model, mb.tokens, mb.attention_mask, cfg.chunk_size)
    nll = losses.sft_nll(logp, mb.loss_mask, aggregation=cfg.aggregation,
                         seq_norm=cfg.seq_norm)
    return nll.total, (nll.count, {"tokens": jnp.sum(
        mb.loss_mask.astype(jnp.float32))})

  total, count, grads, aux = _accumulate(loss_fn, state.params, batch, n)
  new_state, metrics = _apply_update(state, total, count, grads)
  return new_state, {**metrics, **aux}


def make_sft_step(cfg: SFTConfig
                  ) -> Callable[[TrainState, SFTBatch], tuple[TrainState,
                                                              Metrics]]:
  """The jitted SFT step `(state, batch) -> (state, metrics)`.

  Loss: `losses.sft_nll` of the model's log-probs on `batch.loss_mask`,
  aggregated by `cfg.aggregation`. Metrics: loss, grad_norm (before
  clipping), tokens (loss tokens in the batch), skipped (1 if the update was
  dropped as non-finite). `state` is donated when `cfg.donate`.
  """
  return jax.jit(functools.partial(_sft_step, cfg=cfg),
                 donate_argnums=0 if cfg.donate else ())


# ----------------------------------------------------------------------------
# Policy gradient.


def _pg_step(state: TrainState, batch: PGBatch, *,
             cfg: PGConfig) -> tuple[TrainState, Metrics]:
  if cfg.kl_beta and batch.ref_logp is None:
    raise ValueError("kl_beta > 0 needs batch.ref_logp "
                     "(fill it with reference_logprobs)")
  n = _num_micro(batch.tokens.shape[0], cfg.microbatch)

  def loss_fn(params, mb: PGBatch):
    model = state.merge(params)  # + frozen base weights with LoRA
    logp = model_logprobs(model, mb.tokens, mb.attention_mask, cfg.chunk_size)
    loss = losses.policy_loss(
        logp, mb.old_logp, mb.ref_logp, mb.advantages, mb.loss_mask,
        eps_lo=cfg.clip_eps_lo, eps_hi=cfg.clip_eps_hi,
        dual_clip=cfg.dual_clip, kl_beta=cfg.kl_beta,
        kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
        seq_norm=cfg.seq_norm)
    # Diagnostics are token sums here and token means after accumulation,
    # whatever the loss's aggregation.
    logp = jax.lax.stop_gradient(logp)
    m = mb.loss_mask.astype(jnp.float32)
    ratio = jnp.exp(logp - mb.old_logp)
    adv = mb.advantages[:, None]
    clipped = (((ratio > 1.0 + cfg.clip_eps_hi) & (adv > 0))
               | ((ratio < 1.0 - cfg.clip_eps_lo) & (adv < 0)))
    aux = {"tokens": jnp.sum(m), "clip_sum": jnp.sum(clipped * m),
           "ratio_sum": jnp.sum(ratio * m)}
    if mb.ref_logp is not None:
      kl = losses.KL_ESTIMATORS[cfg.kl_estimator](logp, mb.ref_logp)
      aux["kl_sum"] = jnp.sum(kl * m)
    return loss.total, (loss.count, aux)

  total, count, grads, aux = _accumulate(loss_fn, state.params, batch, n)
  new_state, metrics = _apply_update(state, total, count, grads)
  tokens = jnp.maximum(aux["tokens"], 1.0)
  metrics.update(tokens=aux["tokens"], clip_fraction=aux["clip_sum"] / tokens,
                 ratio_mean=aux["ratio_sum"] / tokens)
  if "kl_sum" in aux:
    metrics["kl"] = aux["kl_sum"] / tokens
  return new_state, metrics


def make_pg_step(cfg: PGConfig
                 ) -> Callable[[TrainState, PGBatch], tuple[TrainState,
                                                            Metrics]]:
  """The jitted policy-gradient step `(state, batch) -> (state, metrics)`.

  Loss: `losses.policy_loss` (PPO-clipped ratio with the sequence advantages
  on `loss_mask` tokens, plus `kl_beta` times the chosen KL estimator against
  `batch.ref_logp`), aggregated by `cfg.aggregation`. Metrics: loss,
  grad_norm, tokens, skipped, clip_fraction (share of loss tokens whose clip
  is active, i.e. with zero gradient), ratio_mean, and kl (token mean of the
  estimator) when `ref_logp` is given. `state` is donated when `cfg.donate`.
  """
  return jax.jit(functools.partial(_pg_step, cfg=cfg),
                 donate_argnums=0 if cfg.donate else ())
