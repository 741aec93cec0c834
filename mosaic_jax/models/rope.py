"""Rotary position embeddings, bit-compatible with transformers' RoPE variants.

Frequencies are computed once on the host in float32 (as transformers does), then
cos/sin are built on device from integer positions. The rotation is the
half-split `rotate_half` form (not interleaved) applied to the first
`rotary_dim` channels of each head; the rest pass through (Phi-3 partial rotary).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax.models.config import ModelConfig


def _base_exponents(dim: int) -> np.ndarray:
  return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim


def _yarn(cfg: ModelConfig, dim: int) -> tuple[np.ndarray, float]:
  r = cfg.rope
  base = r.theta
  orig = r.original_max_position_embeddings
  factor = r.factor or cfg.max_position_embeddings / orig

  def mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention_factor = r.attention_factor
  if attention_factor is None:
    if r.mscale and r.mscale_all_dim:
      attention_factor = mscale(factor, r.mscale) / mscale(factor, r.mscale_all_dim)
    else:
      attention_factor = mscale(factor)

  def correction_dim(rotations):
    return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low, high = correction_dim(r.beta_fast or 32), correction_dim(r.beta_slow or 1)
  if r.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # transformers' guard against a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation_weight = 1 - ramp
  pos_freqs = base ** _base_exponents(dim)
  inv_freq = ((1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight)
              + (1.0 / pos_freqs) * extrapolation_weight)
  return inv_freq.astype(np.float32), float(attention_factor)


def _llama3(cfg: ModelConfig, dim: int) -> np.ndarray:
  """Llama 3.1 bands: long wavelengths (> original/low_freq_factor) divided
  by factor, short ones (< original/high_freq_factor) kept, the band between
  interpolated smoothly in 1/wavelength. [R/2] float32."""
  r = cfg.rope
  inv = (1.0 / (r.theta ** _base_exponents(dim))).astype(np.float32)
  orig = r.original_max_position_embeddings
  low_wavelen = orig / r.low_freq_factor
  high_wavelen = orig / r.high_freq_factor
  wavelen = np.float32(2 * math.pi) / inv
  scaled = np.where(wavelen > low_wavelen, inv / np.float32(r.factor), inv)
  smooth = ((orig / wavelen - r.low_freq_factor)
            / (r.high_freq_factor - r.low_freq_factor)).astype(np.float32)
  smoothed = (1 - smooth) * scaled / np.float32(r.factor) + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _dynamic_inverse_frequencies(cfg: ModelConfig,
                                 positions: jax.Array) -> jax.Array:
  """Dynamic-NTK frequencies [R/2] for the longest position in the batch.

  As transformers' `dynamic` type: the base grows to
  theta * (factor * L / M - (factor - 1)) ** (R / (R - 2)) with
  L = max(M, max position + 1), M = max_position_embeddings, so sequences
  within the trained context get the default frequencies. (transformers keeps
  the grown frequencies in module state between calls; per call they equal
  these whenever the longest position only grows.)
  """
  r, dim, m = cfg.rope, cfg.rotary_dim, cfg.max_position_embeddings
  seq_len = jnp.maximum(jnp.max(positions) + 1, m).astype(jnp.float32)
  base = r.theta * ((r.factor * seq_len / m) - (r.factor - 1)) ** (
      dim / (dim - 2))
  return 1.0 / (base ** jnp.asarray(_base_exponents(dim)))


def inverse_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, float]:
  """Returns (short inv_freq [R/2], long inv_freq [R/2], cos/sin scale).

  Only longrope has distinct short and long frequencies (chosen per forward
  pass by the largest position, as transformers does); for every other type
  both are the same array. For 'dynamic' these are the frequencies within
  the trained context (`rope_tables` grows them with the positions).
  """
  r, dim = cfg.rope, cfg.rotary_dim
  exps = _base_exponents(dim)
  if r.rope_type in ("default", "dynamic"):
    inv = (1.0 / (r.theta ** exps)).astype(np.float32)
    return inv, inv, 1.0
  if r.rope_type == "linear":
    inv = (1.0 / (r.theta ** exps) / r.factor).astype(np.float32)
    return inv, inv, 1.0
  if r.rope_type == "yarn":
    inv, scale = _yarn(cfg, dim)
    return inv, inv, scale
  if r.rope_type == "llama3":
    inv = _llama3(cfg, dim)
    return inv, inv, 1.0
  # longrope
  orig = r.original_max_position_embeddings
  factor = r.factor or cfg.max_position_embeddings / orig
  scale = r.attention_factor
  if scale is None:
    scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
  base = r.theta ** exps
  short = (1.0 / (np.asarray(r.short_factor, np.float32) * base)).astype(np.float32)
  long = (1.0 / (np.asarray(r.long_factor, np.float32) * base)).astype(np.float32)
  return short, long, float(scale)


def rope_tables(cfg: ModelConfig, positions: jax.Array,
                dtype) -> tuple[jax.Array, jax.Array]:
  """cos and sin for integer positions.

  Args:
    cfg: model config.
    positions: [B, T] int32 positions.
    dtype: activation dtype the tables are cast to (as transformers does).

  Returns:
    (cos, sin), each [B, T, rotary_dim].
  """
  short, long, scale = inverse_frequencies(cfg)
  inv_freq = jnp.asarray(short)
  if cfg.rope.rope_type == "longrope":
    # transformers switches the whole batch to the long factors once any
    # position exceeds the pre-training context.
    use_long = jnp.max(positions) + 1 > cfg.rope.original_max_position_embeddings
    inv_freq = jnp.where(use_long, jnp.asarray(long), inv_freq)
  elif cfg.rope.rope_type == "dynamic":
    inv_freq = _dynamic_inverse_frequencies(cfg, positions)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return (jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first rotary_dim channels of x.

  Args:
    x: [B, T, heads, head_dim].
    cos, sin: [B, T, rotary_dim].

  Returns:
    [B, T, heads, head_dim], same dtype as x.
  """
  rot = cos.shape[-1]
  x_rot, x_pass = x[..., :rot], x[..., rot:]
  half = rot // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = x_rot * cos + rotated * sin
  return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
