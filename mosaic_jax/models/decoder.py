"""One Flax NNX decoder for Qwen2, Qwen3, Phi-3 and Llama.

Parameter names carry their dimensions (Tunix style), so a reader sees the
layout in the name:

  v vocab · d embed (hidden) · n query heads · k kv heads · h head_dim
  f mlp (intermediate) · l layers

All L blocks live in one `Blocks` module whose parameters are stacked on a
leading layer axis and run with `lax.scan`, so compile time does not grow with
depth. Every parameter carries `logical_axes` metadata that
`mosaic_jax.sharding` maps to mesh axes.

Decode steps are the exception: a scan inside the sampler's `while_loop`
dynamic-slices every stacked weight into a fresh buffer per layer per token
(XLA:CPU materialises each slice before its matmul), so a step moved each
weight three times. The sampler instead takes the per-layer slices once per
call (`Blocks.per_layer`), with each layer's K/V window as its own
kv-head-major buffer (`KVCache.windowed`), and passes them as
`layer_params`: the layers run as a Python loop over loop-invariant buffers
that every step reads in place (docs/benchmarks.md, "Decode: where the
step's time goes").
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from mosaic_jax import sharding
from mosaic_jax.models import lora as lora_lib
from mosaic_jax.models import rope as rope_lib
from mosaic_jax.models.config import ModelConfig

# Finite "minus infinity": a fully masked row (a pad query) softmaxes to a
# uniform distribution instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...],
           dtype, init: str = "normal", std: float = 0.02) -> nnx.Param:
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, cast back to x's dtype, then scaled (no 1+w).

  A custom VJP keeps only x and one float per row for the backward pass;
  plain autodiff kept the float32 copy of x, the normalised x and their
  products: several [B, T, D] arrays per norm and layer.
  """
  return _rms_norm_fwd(x, weight, eps)[0]


def _rms_norm_fwd(x, weight, eps):
  x32 = x.astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  out = weight.astype(x.dtype) * (x32 * inv).astype(x.dtype)
  return out, (x, weight, inv)


def _rms_norm_bwd(eps, res, g):
  del eps  # inv already holds its effect.
  x, weight, inv = res
  normed = x.astype(jnp.float32) * inv
  g = g.astype(jnp.float32)
  d_weight = jnp.sum(g * normed, axis=tuple(range(x.ndim - 1)))
  d_normed = g * weight.astype(jnp.float32)
  # d(x · inv(x)) / dx applied to d_normed: inv · (dn − n · mean(dn · n)).
  dx = inv * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1,
                                           keepdims=True))
  return dx.astype(x.dtype), d_weight.astype(weight.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) · up, keeping only gate and up for the backward pass.

  Plain autodiff also kept sigmoid(gate), silu(gate) and their products with
  up: four more [B, T, F] arrays per layer, the largest activations of the
  step, for an elementwise op the backward pass recomputes in one fusion.
  """
  return _swiglu_fwd(gate, up)[0]


def _swiglu_fwd(gate, up):
  return jax.nn.silu(gate) * up, (gate, up)


def _swiglu_bwd(res, g):
  gate, up = res
  sig = jax.nn.sigmoid(gate)
  # silu'(x) = σ(x) · (1 + x · (1 − σ(x))).
  return g * up * (sig * (1 + gate * (1 - sig))), g * gate * sig


_swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for a batch of sequences.

  Slots are filled left to right; `index` is the next slot to write, shared by
  the batch (prompts are left-padded, observations appended together). Rows can
  hold holes (padding inside a row), so `valid` marks the slots that hold real
  tokens and `pos` counts each row's real tokens, giving contiguous RoPE
  positions per row whatever the padding.

  Attributes:
    k, v: [L, B, S, K, H] keys / values in the compute dtype (a windowed
      cache, inside a decode loop: tuples of L [B, K, W, H]; `windowed`).
    valid: [B, S] bool, slot holds a real token.
    index: [] int32, next slot to write.
    pos: [B] int32, position of each row's next real token.
  """
  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array
  pos: jax.Array

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, length: int) -> "KVCache":
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return cls(k=jnp.zeros(shape, cfg.jnp_dtype), v=jnp.zeros(shape, cfg.jnp_dtype),
               valid=jnp.zeros((batch, length), bool),
               index=jnp.zeros((), jnp.int32), pos=jnp.zeros((batch,), jnp.int32))

  @property
  def capacity(self) -> int:
    """Slots per row (a windowed cache: its window)."""
    return self.k[0].shape[2] if isinstance(self.k, tuple) else self.k.shape[2]

  def windowed(self, window: int) -> "KVCache":
    """The first `window` slots as one kv-head-major array per layer.

    For a decode loop: k, v become tuples of L [B, K, W, H] arrays (a copy,
    once per call) that the loop updates in place and attention reads as
    they lie; `merge_window` writes them back. valid is cut to the window.
    """
    cut = lambda x: tuple(x[i, :, :window].transpose(0, 2, 1, 3)
                          for i in range(x.shape[0]))
    return KVCache(k=cut(self.k), v=cut(self.v), valid=self.valid[:, :window],
                   index=self.index, pos=self.pos)

  def merge_window(self, windowed: "KVCache") -> "KVCache":
    """This cache with `windowed`'s slots, validity, index and pos written
    back (the inverse of `windowed` after a decode loop)."""
    put = lambda full, parts: jax.lax.dynamic_update_slice(
        full, jnp.stack(parts).transpose(0, 1, 3, 2, 4).astype(full.dtype),
        (0, 0, 0, 0, 0))
    return KVCache(k=put(self.k, windowed.k), v=put(self.v, windowed.v),
                   valid=jax.lax.dynamic_update_slice(self.valid, windowed.valid,
                                                      (0, 0)),
                   index=windowed.index, pos=windowed.pos)


class Blocks(nnx.Module):
  """The L decoder blocks, each parameter stacked on a leading layer axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    l, d, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = cfg.jnp_param_dtype
    self.attn_norm_ld = _param(rngs, (l, d), ("layers", "embed"), pd, "ones")
    self.wq_ldnh = _param(rngs, (l, d, n, h), ("layers", "embed", "heads", "head_dim"), pd)
    self.wk_ldkh = _param(rngs, (l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), pd)
    self.wv_ldkh = _param(rngs, (l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), pd)
    self.wo_lnhd = _param(rngs, (l, n, h, d), ("layers", "heads", "head_dim", "embed"), pd)
    if cfg.qkv_bias:
      self.bq_lnh = _param(rngs, (l, n, h), ("layers", "heads", "head_dim"), pd, "zeros")
      self.bk_lkh = _param(rngs, (l, k, h), ("layers", "kv_heads", "head_dim"), pd, "zeros")
      self.bv_lkh = _param(rngs, (l, k, h), ("layers", "kv_heads", "head_dim"), pd, "zeros")
    if cfg.o_bias:
      self.bo_ld = _param(rngs, (l, d), ("layers", "embed"), pd, "zeros")
    if cfg.qk_norm:
      self.q_norm_lh = _param(rngs, (l, h), ("layers", "head_dim"), pd, "ones")
      self.k_norm_lh = _param(rngs, (l, h), ("layers", "head_dim"), pd, "ones")
    self.mlp_norm_ld = _param(rngs, (l, d), ("layers", "embed"), pd, "ones")
    self.w_gate_ldf = _param(rngs, (l, d, f), ("layers", "embed", "mlp"), pd)
    self.w_up_ldf = _param(rngs, (l, d, f), ("layers", "embed", "mlp"), pd)
    self.w_down_lfd = _param(rngs, (l, f, d), ("layers", "mlp", "embed"), pd)
    if cfg.mlp_bias:
      self.b_gate_lf = _param(rngs, (l, f), ("layers", "mlp"), pd, "zeros")
      self.b_up_lf = _param(rngs, (l, f), ("layers", "mlp"), pd, "zeros")
      self.b_down_ld = _param(rngs, (l, d), ("layers", "embed"), pd, "zeros")

  def stacked(self) -> dict[str, jax.Array]:
    """Name -> stacked array for every parameter, LoRA factors included
    (the scan's xs)."""
    return {name: value[...] for name, value in vars(self).items()
            if isinstance(value, nnx.Param)}

  def per_layer(self) -> list[dict[str, jax.Array]]:
    """One name -> [*shape] dict per layer (the stacked arrays' static
    slices), LoRA factors included.

    Take it once outside a decode loop and pass it to `Decoder(...,
    layer_params=...)`: the slices are then loop-invariant buffers, read in
    place by every step, instead of per-token copies.
    """
    stacked = self.stacked()
    return [{name: value[i] for name, value in stacked.items()}
            for i in range(next(iter(stacked.values())).shape[0])]


def _attention(cfg: ModelConfig, q, k, v, q_slot, k_valid):
  """Causal grouped-query attention over key slots.

  Args:
    q: [B, T, N, H] queries; k, v: [B, S, K, H] keys and values.
    q_slot: [T] slot index of each query (keys at slots <= it are visible), or
      None when the keys are the queries' own T positions (no cache), which
      takes the block-causal path.
    k_valid: [B, S] bool, slot holds a real token.

  Returns:
    [B, T, N, H] in the compute dtype.
  """
  b, t, n, hd = q.shape
  if cfg.attention != "reference":
    return _fused_attention(cfg, q, k, v, q_slot, k_valid)
  groups = n // cfg.num_kv_heads
  # Query head i uses kv head i // groups: grouping the heads as [K, G] does so.
  q = q.reshape(b, t, cfg.num_kv_heads, groups, hd)
  if q_slot is None:
    # Queries as [B, K, T·G, H] (row t·G + g is position t, head g of the kv
    # group), keys and values as [B, K, S, H]: batch axes lead and every
    # contraction is over one axis, so each einsum is a plain batched matmul
    # (two contracted axes made XLA:CPU write transposed copies), and a block
    # of positions is a contiguous block of rows.
    qr = q.transpose(0, 2, 1, 3, 4).reshape(b, cfg.num_kv_heads, t * groups, hd)
    out = _causal_attention(qr, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                            k_valid, groups)
    out = out.reshape(b, cfg.num_kv_heads, t, groups, hd).transpose(0, 2, 1, 3, 4)
    return out.reshape(b, t, n, hd)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k,
                      preferred_element_type=jnp.float32) * hd ** -0.5
  visible = (jnp.arange(k.shape[1])[None, :] <= q_slot[:, None])[None] & k_valid[:, None, :]
  scores = jnp.where(visible[:, None, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return out.reshape(b, t, n, hd)


def _visible(q_slot, k_valid, keys: int):
  """[B, T, S] bool: key slot s is at or before query t's slot and real."""
  return ((jnp.arange(keys)[None, :] <= q_slot[:, None])[None]
          & k_valid[:, None, :keys])


def _fused_attention(cfg: ModelConfig, q, k, v, q_slot, k_valid):
  """`_attention` through `jax.nn.dot_product_attention` (cfg.attention is
  its implementation, 'xla' or 'cudnn').

  The mask is the reference's: causal (by position without a cache, by slot
  with one) and key padding. Only rows of real queries agree with the
  reference: a pad query sees no key, and the implementations spread such a
  row differently (nothing reads it: its loss weight is zero and the cache
  marks its slot invalid).
  """
  impl = cfg.attention
  if q_slot is None:
    # Causal by position, plus the key padding as a [B, 1, 1, S] mask.
    return jax.nn.dot_product_attention(
        q, k, v, mask=k_valid[:, None, None, :], is_causal=True,
        implementation=impl)
  visible = _visible(q_slot, k_valid, k.shape[1])
  return jax.nn.dot_product_attention(q, k, v, mask=visible[:, None],
                                      implementation=impl)


def _window_attention(cfg: ModelConfig, q, k, v, q_slot, k_valid):
  """`_attention` for a few queries against one layer's kv-head-major window.

  Args:
    q: [B, T, N, H] queries; k, v: [B, K, W, H] the layer's window
      (`KVCache.windowed`), whose [B, K] lead so both einsums are plain
      batched matmuls over contiguous operands: XLA:CPU reads the window where
      it lies instead of copying (and transposing) it first.
    q_slot: [T] slot of each query; k_valid: [B, W].

  Returns:
    [B, T, N, H] in the compute dtype.
  """
  b, t, n, hd = q.shape
  kh = cfg.num_kv_heads
  groups = n // kh
  # Rows t·G + g of kv head k, as in `_attention`'s block path.
  qr = q.reshape(b, t, kh, groups, hd).transpose(0, 2, 1, 3, 4).reshape(
      b, kh, t * groups, hd)
  scores = jnp.einsum("bkrh,bksh->bkrs", qr, k,
                      preferred_element_type=jnp.float32) * hd ** -0.5
  slot = jnp.repeat(q_slot, groups)
  visible = ((jnp.arange(k.shape[2])[None, :] <= slot[:, None])[None, None]
             & k_valid[:, None, None, :])
  scores = jnp.where(visible, scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("bkrs,bksh->bkrh", probs, v)
  return out.reshape(b, kh, t, groups, hd).transpose(0, 2, 1, 3, 4).reshape(
      b, t, n, hd)


# Positions per query block of `_causal_attention`. Block i attends to keys
# [0, (i + 1) * block) only, so at T = 512 the four blocks compute 10/16 of
# the full [T, T] scores; smaller blocks skip more but run smaller matmuls.
_QUERY_BLOCK = 128


def _block_scores(q, k, valid, start, groups):
  """Masked f32 scores [B, K, C·G, E] of the positions [start, start + C)."""
  rows, e = q.shape[2], k.shape[2]
  s = jnp.einsum("bkrh,bksh->bkrs", q, k,
                 preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
  position = start + jnp.arange(rows) // groups
  visible = ((jnp.arange(e)[None, :] <= position[:, None])[None, None]
             & valid[:, None, None, :e])
  return jnp.where(visible, s, _MASK_VALUE)


def _query_blocks(t: int):
  """(start, end) positions of each query block; its keys are [0, end)."""
  return [(s, min(s + _QUERY_BLOCK, t)) for s in range(0, t, _QUERY_BLOCK)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _causal_attention(q, k, v, valid, groups):
  """Causal attention of T positions over their own keys.

  Queries go in blocks that skip the keys after the block; the backward pass
  recomputes each block's probabilities from the saved log-sum-exp instead of
  keeping the [B, N, T, T] probabilities of every layer (flash attention's
  trade, without its online softmax: a block sees all its keys at once).

  Args:
    q: [B, K, T·G, H] queries, G per kv head; k, v: [B, K, T, H];
    valid: [B, T] bool, position holds a real token.
    groups: G.

  Returns:
    [B, K, T·G, H] in the compute dtype.
  """
  return _causal_attention_fwd(q, k, v, valid, groups)[0]


def _causal_attention_fwd(q, k, v, valid, groups):
  outs, lses = [], []
  for start, end in _query_blocks(k.shape[2]):
    rows = slice(start * groups, end * groups)
    s = _block_scores(q[:, :, rows], k[:, :, :end], valid, start, groups)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    total = jnp.sum(p, axis=-1, keepdims=True)
    outs.append(jnp.einsum("bkrs,bksh->bkrh", (p / total).astype(q.dtype),
                           v[:, :, :end]))
    lses.append((m + jnp.log(total))[..., 0])
  out = jnp.concatenate(outs, axis=2)
  return out, (q, k, v, valid, out, jnp.concatenate(lses, axis=2))


def _causal_attention_bwd(groups, res, d_out):
  q, k, v, valid, out, lse = res
  dt, f32 = q.dtype, jnp.float32
  # Σ_s p·dp = d_out·out per query: the softmax backward without [.., S] sums.
  delta = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1)
  dk = jnp.zeros(k.shape, f32)
  dv = jnp.zeros(v.shape, f32)
  dqs = []
  for start, end in _query_blocks(k.shape[2]):
    rows = slice(start * groups, end * groups)
    qb, dob = q[:, :, rows], d_out[:, :, rows]
    kb, vb = k[:, :, :end], v[:, :, :end]
    p = jnp.exp(_block_scores(qb, kb, valid, start, groups)
                - lse[:, :, rows, None])
    dv = dv.at[:, :, :end].add(jnp.einsum(
        "bkrs,bkrh->bksh", p.astype(dt), dob, preferred_element_type=f32))
    dp = jnp.einsum("bkrh,bksh->bkrs", dob, vb, preferred_element_type=f32)
    ds = (p * (dp - delta[:, :, rows, None])
          * q.shape[-1] ** -0.5).astype(dt)
    dqs.append(jnp.einsum("bkrs,bksh->bkrh", ds, kb,
                          preferred_element_type=f32))
    dk = dk.at[:, :, :end].add(jnp.einsum(
        "bkrs,bkrh->bksh", ds, qb, preferred_element_type=f32))
  return (jnp.concatenate(dqs, axis=2).astype(dt), dk.astype(k.dtype),
          dv.astype(v.dtype), None)


_causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


def _token_einsum(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """`jnp.einsum(equation, x, w)` with x's [B, T] axes merged into one, "m".

  Why: autodiff's weight gradient then contracts a single [B·T] axis, which
  XLA:CPU runs as one plain matmul. Contracting (b, t) as two axes made it
  write each [B, T, F] activation gradient a second time, transposed, in a
  loop fusion ~14x slower than the untransposed one: the largest non-matmul
  cost of the CPU train step (docs/benchmarks.md).
  """
  b, t = x.shape[:2]
  out = jnp.einsum(equation, x.reshape(b * t, *x.shape[2:]), w)
  return out.reshape(b, t, *out.shape[1:])


def _project(p: dict[str, jax.Array], name: str, equation: str, x: jax.Array,
             lora_scale: float | None) -> jax.Array:
  """`x` times the weight `p[name]`, plus its LoRA update if `p` holds one.

  Args:
    p: one layer's parameters; name: the weight's key.
    equation: the base einsum with x's [B, T] merged into "m".
    x: [B, T, *in] in the compute dtype.
    lora_scale: alpha / rank of the adapters (None: no adapters).
  """
  out = _token_einsum(equation, x, p[name].astype(x.dtype))
  if lora_scale is None:
    return out
  a, b = lora_lib.factor_names(name)
  if a not in p:
    return out
  return out + lora_lib.delta(x, p[a].astype(x.dtype), p[b].astype(x.dtype),
                              lora_scale)


def _merged_lora(p: dict[str, jax.Array], name: str, rows: int) -> dict:
  """The LoRA A factor of `name` with its input axes merged into `rows`
  (empty when `p` has no adapter for it)."""
  a, _ = lora_lib.factor_names(name)
  return {a: p[a].reshape(rows, -1)} if a in p else {}


def _block(cfg: ModelConfig, p: dict[str, jax.Array], x, cos, sin, q_slot,
           kv_write, lora_scale: float | None = None, attend=None):
  """One pre-norm decoder block: x += attn(norm(x)); x += mlp(norm(x)).

  Args:
    p: one layer's parameters (the stacked names, layer axis removed).
    x: [B, T, D] residual stream.
    cos, sin: [B, T, R] rotary tables.
    q_slot: [T] slots of the queries.
    kv_write: function (k_new, v_new) -> (k_all, v_all, k_valid) that merges
      this step's keys/values with the cache (or returns them alone).
    lora_scale: alpha / rank when `p` holds LoRA factors (`models.lora`).
    attend: attention function (q, k, v, q_slot, k_valid) -> [B, T, N, H]
      (default `_attention` for this cfg).

  Returns:
    (new x, (k_all, v_all)) -- the layer's full keys/values for the cache.
  """
  dt = x.dtype
  w = lambda name: p[name].astype(dt)
  h = rms_norm(x, p["attn_norm_ld"], cfg.norm_eps)
  q = _project(p, "wq_ldnh", "md,dnh->mnh", h, lora_scale)
  k = _project(p, "wk_ldkh", "md,dkh->mkh", h, lora_scale)
  v = _project(p, "wv_ldkh", "md,dkh->mkh", h, lora_scale)
  if cfg.qkv_bias:
    q, k, v = q + w("bq_lnh"), k + w("bk_lkh"), v + w("bv_lkh")
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm_lh"], cfg.norm_eps)
    k = rms_norm(k, p["k_norm_lh"], cfg.norm_eps)
  q = sharding.constrain(rope_lib.apply_rope(q, cos, sin),
                         ("batch", "length", "heads", "head_dim"))
  kv_names = ("batch", "length", "kv_heads", "head_dim")
  k = sharding.constrain(rope_lib.apply_rope(k, cos, sin), kv_names)
  v = sharding.constrain(v, kv_names)
  k_all, v_all, k_valid = kv_write(k, v)
  attend = attend or functools.partial(_attention, cfg)
  attn = attend(q, k_all, v_all, q_slot, k_valid)
  # Heads and head_dim merged into one contracted axis: contracting (n, h)
  # as two axes made XLA:CPU contract them as (h, n), transposing wo (a
  # weight-sized copy per layer, every decode step) and the activation.
  b, t, n, hd = attn.shape
  out = _project({**p, "wo_lnhd": p["wo_lnhd"].reshape(n * hd, -1),
                  **_merged_lora(p, "wo_lnhd", n * hd)},
                 "wo_lnhd", "mi,id->md", attn.reshape(b, t, n * hd), lora_scale)
  if cfg.o_bias:
    out = out + w("bo_ld")
  x = sharding.constrain(x + out, ("batch", "length", "embed"))
  h = rms_norm(x, p["mlp_norm_ld"], cfg.norm_eps)
  gate = _project(p, "w_gate_ldf", "md,df->mf", h, lora_scale)
  up = _project(p, "w_up_ldf", "md,df->mf", h, lora_scale)
  if cfg.mlp_bias:
    gate, up = gate + w("b_gate_lf"), up + w("b_up_lf")
  act = sharding.constrain(_swiglu(gate, up), ("batch", "length", "mlp"))
  down = _project(p, "w_down_lfd", "mf,fd->md", act, lora_scale)
  x = x + (down + w("b_down_ld") if cfg.mlp_bias else down)
  return sharding.constrain(x, ("batch", "length", "embed")), (k_all, v_all)


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nnx.Module):
  """Token ids -> next-token logits, optionally against a KV cache."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = cfg.jnp_param_dtype
    self.embed_vd = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
    self.blocks = Blocks(cfg, rngs=rngs)
    self.final_norm_d = _param(rngs, (cfg.hidden_size,), ("embed",), pd, "ones")
    if not cfg.tie_embeddings:
      self.lm_head_dv = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

  def unembedding(self) -> jax.Array:
    """[D, V] output projection in the compute dtype."""
    w = self.embed_vd[...].T if self.cfg.tie_embeddings else self.lm_head_dv[...]
    return w.astype(self.cfg.jnp_dtype)

  def __call__(self, tokens: jax.Array, *, mask: jax.Array | None = None,
               positions: jax.Array | None = None, cache: KVCache | None = None,
               cache_window: int | None = None, return_hidden: bool = False,
               layer_params: list[dict[str, jax.Array]] | None = None) -> Any:
    """Runs the decoder.

    Args:
      tokens: [B, T] int32 token ids.
      mask: [B, T] 1 for real tokens, 0 for padding (default: all real).
      positions: [B, T] RoPE positions. Default: each row's count of real
        tokens before this one (so left padding does not shift positions),
        continuing from `cache.pos` when a cache is given.
      cache: KV cache to attend to and extend; the T tokens are written at
        slots [cache.index, cache.index + T).
      cache_window: static number of leading cache slots attention reads
        (default: all). Callers that know `cache.index + T <= window` pass a
        bucketed window so a step costs O(used slots), not O(capacity).
      return_hidden: return final-norm hidden states [B, T, D] instead of
        logits (for the fused log-prob path that never builds [B, T, V]).
      layer_params: `self.blocks.per_layer()` taken outside a decode loop,
        with `cache` a windowed cache (`KVCache.windowed`). The layers then
        run as a Python loop over these buffers and attend to their own
        kv-head-major windows: no per-layer copy of a weight or of the window
        inside the loop. Same tokens as the scan; for decode steps, not for
        training (the loop unrolls L layers into the compiled program).

    Returns:
      logits [B, T, V] (or hidden [B, T, D]); with a cache, (that, new cache).
    """
    cfg = self.cfg
    b, t = tokens.shape
    mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
    start = cache.pos[:, None] if cache is not None else 0
    if positions is None:
      positions = start + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
      if cache is not None:
        # A pad before a row's first new token would otherwise sit at pos-1.
        positions = start + jnp.cumsum(mask, axis=1) - mask
    cos, sin = rope_lib.rope_tables(cfg, positions, cfg.jnp_dtype)
    lora_scale = getattr(self.blocks, lora_lib.SCALE_ATTR, None)
    x = self.embed_vd[...].astype(cfg.jnp_dtype)[tokens]
    x = sharding.constrain(x, ("batch", "length", "embed"))

    if cache is None:
      q_slot = None
      kv_write = lambda k, v: (k, v, mask)
      xs = self.blocks.stacked()
      carry = x
    else:
      q_slot = cache.index + jnp.arange(t)
      window = cache.capacity if cache_window is None else min(cache_window, cache.capacity)
      k_valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, cache.index))
      # The whole [L, ...] cache rides in the scan carry and each layer writes
      # its T new slots in place; as scan xs/ys every decode step would copy
      # the full cache twice (slice in, stack out).
      xs = (self.blocks.stacked(), jnp.arange(cfg.num_layers))
      carry = (x, cache.k, cache.v)

    def body(carry, layer):
      if cache is None:
        return _block(cfg, layer, carry, cos, sin, q_slot, kv_write,
                      lora_scale)[0], None
      x, ck, cv = carry
      p, i = layer
      at = (i, 0, cache.index, 0, 0)
      written = {}

      def write(k, v):
        written["k"] = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), at)
        written["v"] = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), at)
        return (written["k"][i][:, :window], written["v"][i][:, :window],
                k_valid[:, :window])
      x = _block(cfg, p, x, cos, sin, q_slot, write, lora_scale)[0]
      return (x, written["k"], written["v"]), None

    if layer_params is not None:
      if cache is None:
        raise ValueError("Decoder: layer_params are for decode steps and "
                         "need a cache")
      x, new_kv = _unrolled_layers(cfg, layer_params, x, cos, sin, q_slot,
                                   cache, k_valid, lora_scale)
    else:
      if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT[cfg.remat])
      carry, _ = jax.lax.scan(body, carry, xs)
      x, new_kv = (carry, None) if cache is None else (carry[0], carry[1:])
    x = sharding.constrain(rms_norm(x, self.final_norm_d[...], cfg.norm_eps),
                           ("batch", "length", "embed"))
    out = x if return_hidden else sharding.constrain(
        jnp.einsum("btd,dv->btv", x, self.unembedding()), ("batch", "length", "vocab"))
    if cache is None:
      return out
    new_cache = KVCache(k=new_kv[0], v=new_kv[1], valid=k_valid,
                        index=cache.index + t, pos=cache.pos + mask.sum(1, dtype=jnp.int32))
    return out, new_cache


def _unrolled_layers(cfg: ModelConfig, layer_params, x, cos, sin, q_slot,
                     cache: KVCache, k_valid, lora_scale: float | None):
  """The blocks as a Python loop over per-layer parameters and windows.

  Args:
    cache: a windowed cache (`KVCache.windowed`): k, v are tuples of L
      [B, K, W, H] arrays. Each layer writes its T new keys/values into its
      own window in place and attends to the whole window.

  Returns:
    (x [B, T, D], (k, v) the updated tuples).
  """
  ks, vs = list(cache.k), list(cache.v)
  attend = functools.partial(_window_attention, cfg)
  for i, p in enumerate(layer_params):
    def write(k, v, i=i):
      at = (0, 0, cache.index, 0)
      put = lambda buf, new: jax.lax.dynamic_update_slice(
          buf, new.transpose(0, 2, 1, 3).astype(buf.dtype), at)
      ks[i], vs[i] = put(ks[i], k), put(vs[i], v)
      return ks[i], vs[i], k_valid

    x = _block(cfg, p, x, cos, sin, q_slot, write, lora_scale, attend)[0]
  return x, (tuple(ks), tuple(vs))


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialised decoder (for tests and from-scratch runs)."""
  return Decoder(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Decoder:
  """The decoder with ShapeDtypeStruct leaves: shapes without allocation."""
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(params=0)))


def count_params(model: Decoder) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
