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
  optimizer state are kept, bit for bit) and `metrics["skipped"]` is 1.
  `state.step` counts loop steps (rollouts) and still advances, so
  checkpoint and evaluation cadences follow the loop; the learning-rate
  schedule follows optax's update count, which a skipped update does not
  advance (`learning_rate` reports its value).
* Several updates per rollout (`PGConfig.epochs`, `minibatches`): one PG
  step makes `epochs × minibatches` optimizer updates against the same
  π_old, so the PPO clip acts (with one update the ratio is 1).
* Temperature: log-probs are those of `softmax(logits / T)`
  (`PGConfig.temperature`, the sampling temperature), for the policy, π_old
  and π_ref alike, so the ratio compares the distribution that sampled.
* The state argument is donated (`donate`, on by default): its buffers are
  reused for the new state, so params and optimizer state exist once in
  memory, not twice.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mosaic_jax import losses, sections
from mosaic_jax.batches import PGBatch, SFTBatch
from mosaic_jax.train.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class SFTConfig(sections.Section):
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

  SECTION = "sft"

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """A known aggregation and a positive chunk size."""
    p: list[str] = []
    sections.at_least(p, "sft.chunk_size", values["chunk_size"], 1)
    sections.choice(p, "sft.aggregation", values["aggregation"],
                    losses.AGGREGATIONS)
    return p


@dataclasses.dataclass(frozen=True)
class PGConfig(sections.Section):
  """Policy-gradient step settings (see `losses.policy_loss`).

  Attributes:
    clip_eps_lo, clip_eps_hi: PPO clip range `[1 − ε_lo, 1 + ε_hi]`.
    dual_clip: dual-clip constant c (> 1), or None.
    kl_beta: β of the KL penalty; 0 disables it.
    kl_estimator: key of `losses.KL_ESTIMATORS`.
    kl_in_reward: the KL is a k1 reward penalty instead of a loss term: the
      step adds `losses.kl_reward_advantages` of the sequence k1 (π_old
      against π_ref, per group of `group_size` rows) to the advantages and
      no KL to the loss. Needs `kl_estimator="k1"`.
    dynamic_sampling: DAPO's dynamic sampling without refill: rows of
      groups whose advantages are all 0 (no signal) are dropped from the
      loss (their loss mask is zeroed, so they leave the token counts).
    group_size: rows per group (consecutive rows); needed by
      `kl_in_reward` and `dynamic_sampling`.
    aggregation: key of `losses.AGGREGATIONS`.
    seq_norm: constant of the "sequence-sum" aggregation.
    policy_ratio: key of `losses.POLICY_RATIOS` ("ppo" per token, "gspo"
      per sequence).
    temperature: log-probs are of `softmax(logits / temperature)`; the loop
      sets the sampling temperature (1 for greedy or `rl.temper_logprobs`
      off).
    epochs: passes over the batch per step.
    minibatches: optimizer updates per pass; minibatch k holds rows
      k, k + minibatches, … (a fixed strided split, no shuffling).
    microbatch: rows per micro-batch of a minibatch (0: all at once).
    chunk_size: tokens per chunk of the log-prob computation.
    donate: donate the state to the step (see `SFTConfig.donate`).
  """
  clip_eps_lo: float = 0.2
  clip_eps_hi: float = 0.2
  dual_clip: float | None = None
  kl_beta: float = 0.0
  kl_estimator: str = "k3"
  kl_in_reward: bool = False
  dynamic_sampling: bool = False
  group_size: int = 0
  aggregation: str = "token-mean"
  seq_norm: float = 1.0
  policy_ratio: str = "ppo"
  temperature: float = 1.0
  epochs: int = 1
  minibatches: int = 1
  microbatch: int = 0
  chunk_size: int = 128
  donate: bool = True

  SECTION = "rl"

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """Finite clip range and KL β >= 0, known estimator / aggregation /
    ratio, k1 for a KL reward, groups for the group-wise options, >= 1
    epochs, minibatches and chunk tokens, a log-prob temperature > 0."""
    v = values
    p: list[str] = []
    sections.finite(p, "rl.kl_beta", v["kl_beta"], 0, strict=False)
    for name in ("clip_eps_lo", "clip_eps_hi"):
      sections.finite(p, f"rl.{name}", v[name], 0, strict=False)
    sections.choice(p, "rl.kl_estimator", v["kl_estimator"],
                    losses.KL_ESTIMATORS)
    sections.choice(p, "rl.policy_ratio", v["policy_ratio"],
                    losses.POLICY_RATIOS)
    sections.choice(p, "rl.aggregation", v["aggregation"],
                    losses.AGGREGATIONS)
    if v["kl_in_reward"] and v["kl_estimator"] != "k1":
      p.append(f"rl.kl_in_reward=True needs rl.kl_estimator='k1' (got "
               f"{v['kl_estimator']!r}): only k1 as a reward penalty has the "
               "gradient of KL(pi || pi_ref); set "
               "--config.rl.kl_estimator=k1")
    group = v["group_size"]
    if ((v["kl_in_reward"] or v["dynamic_sampling"])
        and not (isinstance(group, int) and group >= 1)):
      p.append("rl.kl_in_reward and rl.dynamic_sampling need "
               "rl.group_size >= 1")
    for name in ("epochs", "minibatches", "chunk_size"):
      sections.at_least(p, f"rl.{name}", v[name], 1)
    sections.finite(p, "rl.temperature (log-prob temperature)",
                    v["temperature"], 0, strict=True)
    return p

  @property
  def updates(self) -> int:
    """Optimizer updates per step: `epochs × minibatches`."""
    return self.epochs * self.minibatches

  @property
  def loss_kl_beta(self) -> float:
    """β of the KL loss term (0 when the KL is in the reward)."""
    return 0.0 if self.kl_in_reward else self.kl_beta



# ----------------------------------------------------------------------------
# Log-probs.


def _scaled_hidden(model: nnx.Module, tokens: Array, attention_mask: Array,
                   temperature: float) -> Array:
  """Final hidden states of positions 0..T−2, times 1/T (logits are linear
  in them, so `(h / T) @ W = logits / T`)."""
  hidden = model(tokens, mask=attention_mask, return_hidden=True)[:, :-1]
  if temperature != 1.0:
    hidden = hidden * jnp.asarray(1.0 / temperature, hidden.dtype)
  return hidden


def model_logprobs(model: nnx.Module, tokens: Array, attention_mask: Array,
                   chunk_size: int = 128, temperature: float = 1.0) -> Array:
  """Token-aligned log-probs of `tokens` under `model`, chunked over T.

  Args:
    model: a `models.Decoder`.
    tokens: `[B, T]` int32.
    attention_mask: `[B, T]` 1 on real tokens.
    chunk_size: tokens per logits chunk.
    temperature: log-probs of `softmax(logits / temperature)`.

  Returns:
    `[B, T]` float32; column 0 is 0 (the first token has no prediction).
  """
  hidden = _scaled_hidden(model, tokens, attention_mask, temperature)
  logp = losses.chunked_token_logprobs(hidden, model.unembedding(),
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
                                             "chunk_size", "temperature",
                                             "entropy"))
def compute_logprobs(graphdef: nnx.GraphDef, params: nnx.State,
                     tokens: Array, attention_mask: Array, *,
                     microbatch: int = 0, chunk_size: int = 128,
                     temperature: float = 1.0, entropy: bool = False
                     ) -> Array | tuple[Array, Array]:
  """Token-aligned log-probs of a model given as (graphdef, params).

  Used once per batch for the frozen reference policy and for π_old,
  outside the differentiated step so its forward passes are neither
  differentiated nor repeated per epoch.

  Args:
    graphdef, params: `nnx.split(model, nnx.Param)`.
    tokens: `[B, T]` int32.
    attention_mask: `[B, T]` 1 on real tokens.
    microbatch: rows per forward pass (0: all at once).
    chunk_size: tokens per logits chunk.
    temperature: log-probs of `softmax(logits / temperature)`.
    entropy: also return the token-aligned entropy of that distribution.

  Returns:
    `[B, T]` float32 log-probs, in the rows' original order; with `entropy`,
    `(logp, entropy)`, both `[B, T]` (column 0 is 0).
  """
  n = _num_micro(tokens.shape[0], microbatch)
  model = nnx.merge(graphdef, params)

  def one(xs):
    tok, mask = xs
    hidden = _scaled_hidden(model, tok, mask, temperature)
    logp = losses.chunked_token_logprobs(hidden, model.unembedding(),
                                         tok[:, 1:], chunk_size=chunk_size)
    pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))
    if not entropy:
      return pad(logp)
    ent = losses.chunked_token_entropy(hidden, model.unembedding(),
                                       chunk_size=chunk_size)
    return pad(logp), pad(ent)

  out = jax.lax.map(one, (_split(tokens, n), _split(attention_mask, n)))
  unsplit = lambda x: x.swapaxes(0, 1).reshape(tokens.shape)
  return jax.tree.map(unsplit, out)


def reference_logprobs(ref_model: nnx.Module, batch: PGBatch, *,
                       microbatch: int = 0, chunk_size: int = 128,
                       temperature: float = 1.0) -> PGBatch:
  """`batch` with `ref_logp` filled in by the frozen reference model (at
  `temperature`, like the policy's)."""
  graphdef, params = nnx.split(ref_model, nnx.Param)
  ref = compute_logprobs(graphdef, params, batch.tokens, batch.attention_mask,
                         microbatch=microbatch, chunk_size=chunk_size,
                         temperature=temperature)
  return batch._replace(ref_logp=ref)


def old_logprobs(state: TrainState, batch: PGBatch, cfg: PGConfig
                 ) -> tuple[PGBatch, Array]:
  """`batch` with `old_logp` recomputed by the policy that sampled it, at
  `cfg.temperature`; also the policy's entropy at that temperature, `[]`,
  the mean over the batch's loss tokens.

  The sampler records log-probs of the unscaled logits; at T ≠ 1 those are
  not the sampling distribution's, and even at T = 1 the cached decode
  differs from the training forward by float noise. Recomputed, the ratio
  of the first update is exactly 1.
  """
  if state.frozen is None:
    graphdef, params = state.graphdef, state.params
  else:  # LoRA: the adapters and the frozen base, as one model
    graphdef, params = nnx.split(state.model(), nnx.Param)
  logp, ent = compute_logprobs(
      graphdef, params, batch.tokens, batch.attention_mask,
      microbatch=cfg.microbatch, chunk_size=cfg.chunk_size,
      temperature=cfg.temperature, entropy=True)
  return batch._replace(old_logp=logp), _token_mean(ent, batch.loss_mask)


@jax.jit
def _token_mean(x: Array, mask: Array) -> Array:
  m = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(m > 0, x * m, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


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


def optimizer_count(opt_state: Any) -> Array:
  """Optimizer updates applied so far: optax's `count` (`[]` int32).

  The schedule reads this count, so it is where the learning rate stands;
  skipped (non-finite) updates leave it unchanged. 0 for a stateless
  optimizer.
  """
  has_count = lambda x: "count" in getattr(x, "_fields", ())
  for node in jax.tree.leaves(opt_state, is_leaf=has_count):
    if has_count(node):
      return jnp.asarray(node.count, jnp.int32)
  return jnp.zeros((), jnp.int32)


def _update(tx: optax.GradientTransformation, params: nnx.State,
            opt_state: Any, total: Array, count: Array, grads: nnx.State,
            schedule: optax.Schedule | None
            ) -> tuple[nnx.State, Any, Metrics]:
  """One optimizer update with the exact-mean gradient, or none if
  non-finite: `(params, opt_state, metrics)`."""
  denom = jnp.maximum(count, 1.0)
  loss = total / denom
  grads = jax.tree.map(lambda g: g / denom, grads)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  old = (params, opt_state)
  lr = None if schedule is None else schedule(optimizer_count(opt_state))

  def update(_):
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # optax computes in float32 and may hand bf16 params/moments back
    # promoted; both cond branches (and the next step's jit key) need the
    # stored dtypes.
    keep = lambda new, old: new.astype(old.dtype)
    new = (jax.tree.map(keep, new_params, params),
           jax.tree.map(keep, new_opt, opt_state))
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
  metrics = {"loss": loss, "grad_norm": grad_norm,
             "skipped": 1.0 - applied.astype(jnp.float32)}
  if lr is not None:
    metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
  return params, opt_state, metrics


def _apply_update(state: TrainState, total: Array, count: Array,
                  grads: nnx.State, schedule: optax.Schedule | None = None
                  ) -> tuple[TrainState, Metrics]:
  """`_update` on the state; the loop's step counter advances either way."""
  params, opt_state, metrics = _update(state.tx, state.params,
                                       state.opt_state, total, count, grads,
                                       schedule)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


# ----------------------------------------------------------------------------
# SFT.


def _sft_step(state: TrainState, batch: SFTBatch, *, cfg: SFTConfig,
              schedule: optax.Schedule | None
              ) -> tuple[TrainState, Metrics]:
  n = _num_micro(batch.tokens.shape[0], cfg.microbatch)

  def loss_fn(params, mb: SFTBatch):
    model = state.merge(params)  # + frozen base weights with LoRA
    logp = model_logprobs(model, mb.tokens, mb.attention_mask, cfg.chunk_size)
    nll = losses.sft_nll(logp, mb.loss_mask, aggregation=cfg.aggregation,
                         seq_norm=cfg.seq_norm)
    return nll.total, (nll.count, {"tokens": jnp.sum(
        mb.loss_mask.astype(jnp.float32))})

  total, count, grads, aux = _accumulate(loss_fn, state.params, batch, n)
  new_state, metrics = _apply_update(state, total, count, grads, schedule)
  return new_state, {**metrics, **aux}


def make_sft_step(cfg: SFTConfig, schedule: optax.Schedule | None = None
                  ) -> Callable[[TrainState, SFTBatch], tuple[TrainState,
                                                              Metrics]]:
  """The jitted SFT step `(state, batch) -> (state, metrics)`.

  Loss: `losses.sft_nll` of the model's log-probs on `batch.loss_mask`,
  aggregated by `cfg.aggregation`. Metrics: loss, grad_norm (before
  clipping), tokens (loss tokens in the batch), skipped (1 if the update was
  dropped as non-finite), learning_rate (the update's, from `schedule` at
  optax's count) when `schedule` is given. `state` is donated when
  `cfg.donate`.
  """
  return jax.jit(functools.partial(_sft_step, cfg=cfg, schedule=schedule),
                 donate_argnums=0 if cfg.donate else ())


# ----------------------------------------------------------------------------
# Policy gradient.


def pg_loss_fn(merge: Callable[[nnx.State], nnx.Module], cfg: PGConfig
               ) -> MicroLoss:
  """The policy-gradient micro-batch loss `(params, mb) -> (total, (count,
  token sums))` of `make_pg_step`; `merge(params)` builds the model
  (`TrainState.merge`: the trained params plus any frozen base weights)."""

  def loss_fn(params, mb: PGBatch):
    model = merge(params)
    logp = model_logprobs(model, mb.tokens, mb.attention_mask, cfg.chunk_size,
                          cfg.temperature)
    return pg_objective(logp, mb, cfg)

  return loss_fn


def pg_objective(logp: Array, mb: PGBatch, cfg: PGConfig
                 ) -> tuple[Array, tuple[Array, Metrics]]:
  """`losses.policy_loss` of `logp` on `mb`: `(total, (count, sums))`.

  Diagnostics are token sums here and token means after accumulation,
  whatever the loss's aggregation: tokens, clip_low_sum, clip_high_sum,
  ratio_sum, and kl_sum (the `cfg.kl_estimator` estimate) with `ref_logp`.
  """
  loss = losses.policy_loss(
      logp, mb.old_logp, mb.ref_logp, mb.advantages, mb.loss_mask,
      eps_lo=cfg.clip_eps_lo, eps_hi=cfg.clip_eps_hi,
      dual_clip=cfg.dual_clip, kl_beta=cfg.loss_kl_beta,
      kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
      seq_norm=cfg.seq_norm, ratio=cfg.policy_ratio)
  on = mb.loss_mask > 0
  m = mb.loss_mask.astype(jnp.float32)
  logp = jnp.where(on, jax.lax.stop_gradient(logp), 0.0)
  old = jnp.where(on, mb.old_logp, 0.0)
  ratio = losses.POLICY_RATIOS[cfg.policy_ratio](logp, old, m)
  low, high = losses.clip_masks(ratio, mb.advantages, eps_lo=cfg.clip_eps_lo,
                                eps_hi=cfg.clip_eps_hi)
  tok = lambda x: jnp.sum(jnp.where(on, x, 0.0))
  aux = {"tokens": jnp.sum(m), "clip_low_sum": tok(low.astype(jnp.float32)),
         "clip_high_sum": tok(high.astype(jnp.float32)),
         "ratio_sum": tok(ratio)}
  if mb.ref_logp is not None:
    kl = losses.KL_ESTIMATORS[cfg.kl_estimator](
        logp, jnp.where(on, mb.ref_logp, 0.0))
    aux["kl_sum"] = tok(kl)
  return loss.total, (loss.count, aux)


def ppo_updates(tx: optax.GradientTransformation, params: Any, opt_state: Any,
                batch: Any, loss_fn: MicroLoss, *, epochs: int = 1,
                minibatches: int = 1, microbatch: int = 0,
                schedule: optax.Schedule | None = None
                ) -> tuple[Any, Any, Metrics]:
  """`epochs × minibatches` optimizer updates on one batch (PPO's inner loop).

  Pass e (of `epochs`) makes one update per minibatch k (of `minibatches`,
  rows k, k + minibatches, …), in that order, each with the exact-mean
  gradient of `loss_fn` accumulated over micro-batches of `microbatch` rows
  and the non-finite guard of a single update. Works on any params pytree
  (the tests use a logit table).

  Args:
    tx: the optimizer.
    params, opt_state: its params and state.
    batch: pytree of `[B, ...]` arrays; `loss_fn(params, mb)` returns
      `(total, (count, sums))` for a micro-batch `mb`.
    loss_fn: the micro-batch loss.
    epochs, minibatches, microbatch: as in `PGConfig`.
    schedule: the learning-rate schedule (for the `learning_rate` metric).

  Returns:
    `(params, opt_state, metrics)`; metrics are `[epochs × minibatches]`
    arrays, one entry per update in order: loss, grad_norm, skipped,
    learning_rate and the sums of `loss_fn`'s aux.
  """
  rows = jax.tree.leaves(batch)[0].shape[0]
  if rows % minibatches:
    raise ValueError(f"batch of {rows} rows does not split into "
                     f"{minibatches} minibatches (rl.minibatches)")
  n = _num_micro(rows // minibatches, microbatch)
  parts = jax.tree.map(lambda x: _split(x, minibatches), batch)

  def one(carry, k):
    params, opt_state = carry
    mb = jax.tree.map(lambda x: x[k], parts)
    total, count, grads, aux = _accumulate(loss_fn, params, mb, n)
    params, opt_state, metrics = _update(tx, params, opt_state, total, count,
                                         grads, schedule)
    return (params, opt_state), {**metrics, **aux}

  order = jnp.tile(jnp.arange(minibatches), epochs)
  (params, opt_state), metrics = jax.lax.scan(one, (params, opt_state), order)
  return params, opt_state, metrics


def _pg_step(state: TrainState, batch: PGBatch, *, cfg: PGConfig,
             schedule: optax.Schedule | None
             ) -> tuple[TrainState, Metrics]:
  if cfg.kl_beta and batch.ref_logp is None:
    raise ValueError("kl_beta > 0 needs batch.ref_logp "
                     "(fill it with reference_logprobs)")
  batch = shape_batch(batch, cfg)
  params, opt_state, per = ppo_updates(
      state.tx, state.params, state.opt_state, batch,
      pg_loss_fn(state.merge, cfg), epochs=cfg.epochs,
      minibatches=cfg.minibatches, microbatch=cfg.microbatch,
      schedule=schedule)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, pg_metrics(per, cfg.epochs)


def shape_batch(batch: PGBatch, cfg: PGConfig) -> PGBatch:
  """Dynamic sampling, then the k1 reward penalty (`PGConfig`).

  Groups are `cfg.group_size` consecutive rows. With `dynamic_sampling`,
  a group whose advantages are all 0 gets loss mask 0 (dropped, not
  refilled: shapes stay static and the aggregation's counts shrink). With
  `kl_in_reward`, `losses.kl_reward_advantages(β, sequence k1 of π_old vs
  π_ref)` is added to every kept row's advantage.
  """
  g = cfg.group_size
  adv = batch.advantages.astype(jnp.float32)
  if cfg.dynamic_sampling:
    keep = jnp.any(adv.reshape(-1, g) != 0, axis=-1)
    row_keep = jnp.repeat(keep, g)
    batch = batch._replace(loss_mask=jnp.where(
        row_keep[:, None], batch.loss_mask, jnp.zeros_like(batch.loss_mask)))
  if cfg.kl_in_reward and cfg.kl_beta:
    k = losses.sequence_kl(batch.old_logp, batch.ref_logp, batch.loss_mask)
    adv = adv + losses.kl_reward_advantages(k.reshape(-1, g),
                                            cfg.kl_beta).reshape(-1)
    batch = batch._replace(advantages=adv)
  return batch


def pg_metrics(per: Metrics, epochs: int = 1) -> Metrics:
  """A step's metrics from `ppo_updates`' per-update ones.

  loss, grad_norm, learning_rate: means over the updates; skipped: 1 if any
  update was skipped (`skipped_updates` counts them); tokens: loss tokens
  of the batch; `clip_ratio/low_mean`, `clip_ratio/high_mean`,
  `clip_ratio/region_mean` (their sum), ratio_mean and kl: means over the
  updates of each update's token mean (TRL's names).
  """
  tokens = jnp.maximum(per["tokens"], 1.0)
  low = per["clip_low_sum"] / tokens
  high = per["clip_high_sum"] / tokens
  out = {"loss": jnp.mean(per["loss"]), "grad_norm": jnp.mean(per["grad_norm"]),
         "skipped": jnp.max(per["skipped"]),
         "skipped_updates": jnp.sum(per["skipped"]),
         "tokens": jnp.sum(per["tokens"]) / epochs,
         "clip_ratio/low_mean": jnp.mean(low),
         "clip_ratio/high_mean": jnp.mean(high),
         "clip_ratio/region_mean": jnp.mean(low + high),
         "ratio_mean": jnp.mean(per["ratio_sum"] / tokens)}
  if "kl_sum" in per:
    out["kl"] = jnp.mean(per["kl_sum"] / tokens)
  if "learning_rate" in per:
    out["learning_rate"] = jnp.mean(per["learning_rate"])
  return out


def make_pg_step(cfg: PGConfig, schedule: optax.Schedule | None = None
                 ) -> Callable[[TrainState, PGBatch], tuple[TrainState,
                                                            Metrics]]:
  """The jitted policy-gradient step `(state, batch) -> (state, metrics)`.

  Loss: `losses.policy_loss` (clipped `cfg.policy_ratio` ratio with the
  sequence advantages on `loss_mask` tokens, plus `kl_beta` times the
  chosen KL estimator against `batch.ref_logp` unless `cfg.kl_in_reward`),
  aggregated by `cfg.aggregation`, at `cfg.temperature`; `cfg.epochs ×
  cfg.minibatches` updates against `batch.old_logp` (`ppo_updates`).
  Metrics (`pg_metrics`): loss, grad_norm, learning_rate (with
  `schedule`), tokens, skipped, skipped_updates, clip_ratio/low_mean,
  clip_ratio/high_mean, clip_ratio/region_mean (share of loss tokens whose
  clip is active, i.e. with zero gradient), ratio_mean, and kl (token mean
  of the estimator) when `ref_logp` is given. `state` is donated when
  `cfg.donate`; `state.step` advances by one whatever the update count.
  """
  return jax.jit(functools.partial(_pg_step, cfg=cfg, schedule=schedule),
                 donate_argnums=0 if cfg.donate else ())
