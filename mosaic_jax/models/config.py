"""`ModelConfig`: the one description of a decoder, for all four families.

Family differences are fields, not subclasses: Qwen2 has q/k/v biases, Qwen3 has
an explicit head_dim and per-head q/k RMSNorm, Phi-3 has partial rotary and fused
projections (the fusion only matters to the converter), Llama has optional
attention and MLP biases and the llama3 / dynamic RoPE scalings.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

# HF `architectures[0]` -> our family name.
ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "LlamaForCausalLM": "llama",
}
FAMILY_TO_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
# HF `model_type` values, used when `architectures` is absent.
MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
               "llama": "llama"}

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Attention of training and prefill: this repo's block-causal einsums
# ("reference", the CPU default) or jax.nn.dot_product_attention with its XLA
# or cuDNN (flash) implementation.
ATTENTION_IMPLS = ("reference", "xla", "cudnn")

_DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


class ModelFileError(ValueError):
  """A model directory's file is missing, malformed or inconsistent; the
  message names the file and the key."""


# HF config.json keys that must be integers >= 1 (when present).
_POSITIVE_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size",
                      "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim",
                      "max_position_embeddings")


def _read_hf_json(path: str) -> Mapping[str, Any]:
  """The JSON object of an HF config.json.

  Raises:
    ModelFileError: not UTF-8 JSON, or not an object.
  """
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ModelFileError(f"{path}: not a JSON config ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
  if not isinstance(config, dict):
    raise ModelFileError(f"{path}: must be a JSON object, got "
                         f"{type(config).__name__}")
  return config


def _check_hf_sizes(config: Mapping[str, Any], source: str) -> None:
  """Fails unless every size key present is an integer >= 1.

  Raises:
    ModelFileError: naming the file, the key and the value.
  """
  for key in _POSITIVE_INT_KEYS:
    value = config.get(key)
    if value is None:
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ModelFileError(f"{source}: {key!r} must be an integer >= 1, got "
                           f"{type(value).__name__} {value!r}")


def dtype_name(dtype: Any) -> str:
  """Canonical string name of a dtype (accepts strings, numpy and jnp dtypes)."""
  name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
  if name not in _DTYPES:
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
  return name


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding settings, as HF's `rope_parameters` describes them.

  Attributes:
    theta: base wavelength.
    partial_rotary_factor: fraction of head_dim that is rotated (Phi-3).
    rope_type: 'default', 'linear', 'dynamic' (NTK, base grown with the
      longest position), 'yarn' (Qwen long context), 'longrope' (Phi-3 long
      context) or 'llama3' (Llama 3.1 frequency bands).
    factor: context extension factor (linear, dynamic, yarn, longrope, llama3).
    original_max_position_embeddings: pre-training context (yarn, longrope,
      llama3).
    beta_fast, beta_slow, truncate, mscale, mscale_all_dim: yarn ramp settings.
    attention_factor: explicit cos/sin scale (yarn, longrope); None = derived.
    short_factor, long_factor: per-frequency longrope factors.
    low_freq_factor, high_freq_factor: llama3 band edges (wavelengths above
      original/low are divided by factor, below original/high kept).
  """
  theta: float = 10000.0
  partial_rotary_factor: float = 1.0
  rope_type: str = "default"
  factor: float | None = None
  original_max_position_embeddings: int | None = None
  beta_fast: float | None = None
  beta_slow: float | None = None
  truncate: bool = True
  mscale: float | None = None
  mscale_all_dim: float | None = None
  attention_factor: float | None = None
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(
          f"rope_type {self.rope_type!r} is not supported; use one of {ROPE_TYPES}")
    if not 0.0 < self.partial_rotary_factor <= 1.0:
      raise ValueError(
          f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
    needs = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings")}
    for field in needs.get(self.rope_type, ()):
      if getattr(self, field) is None:
        raise ValueError(f"rope_type {self.rope_type!r} needs {field!r}")
    if (self.rope_type == "llama3"
        and not self.high_freq_factor > self.low_freq_factor):
      raise ValueError(
          f"llama3 rope: high_freq_factor ({self.high_freq_factor}) must "
          f"exceed low_freq_factor ({self.low_freq_factor})")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of one decoder.

  Attributes:
    family: 'qwen2', 'qwen3', 'phi3' or 'llama' (selects the HF weight names).
    vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
    num_kv_heads, head_dim: sizes (head_dim may differ from hidden/heads).
    rope: rotary embedding settings.
    qkv_bias: q/k/v projections carry a bias (Qwen2; Qwen3 and Llama
      `attention_bias`).
    o_bias: output projection carries a bias (Qwen3 and Llama
      `attention_bias`).
    mlp_bias: gate/up/down projections carry a bias (Llama `mlp_bias`).
    qk_norm: per-head RMSNorm on q and k before RoPE (Qwen3).
    tie_embeddings: lm_head is the transposed token embedding.
    norm_eps: RMSNorm epsilon.
    max_position_embeddings: context the checkpoint was trained for.
    param_dtype: dtype the parameters are stored in ('float32', 'bfloat16').
    dtype: compute dtype of matmuls and activations.
    remat: rematerialisation of each scanned block: 'none', 'full', 'dots'
      (save matmul outputs) or 'dots_no_batch'.
    attention: attention of training and multi-token prefill: 'reference'
      (block-causal einsums, the CPU default), 'xla' or 'cudnn'
      (`jax.nn.dot_product_attention` with that implementation; cudnn needs
      a GPU and bf16/fp16). Single-token decode steps read the cache in place
      whatever this says.
  """
  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope: RopeConfig = RopeConfig()
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  norm_eps: float = 1e-6
  max_position_embeddings: int = 32768
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  attention: str = "reference"

  def __post_init__(self):
    if self.family not in FAMILY_TO_ARCHITECTURE:
      raise ValueError(
          f"family {self.family!r} is not supported; use one of "
          f"{sorted(FAMILY_TO_ARCHITECTURE)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads})")
    if self.rotary_dim % 2:
      raise ValueError(
          f"rotary dimension head_dim*partial_rotary_factor = {self.rotary_dim} "
          "must be even")
    if self.family == "llama" and self.qkv_bias != self.o_bias:
      raise ValueError("llama: qkv_bias and o_bias are one HF flag "
                       f"(attention_bias); got {self.qkv_bias} and {self.o_bias}")
    if self.mlp_bias and self.family != "llama":
      raise ValueError(f"mlp_bias is a llama field; {self.family} has none")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat {self.remat!r}: use one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(
          f"attention {self.attention!r}: use one of {ATTENTION_IMPLS}")
    # Normalise dtypes to names so configs stay hashable and serialisable.
    object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype))
    object.__setattr__(self, "dtype", dtype_name(self.dtype))

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.rope.partial_rotary_factor)

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  # ---------------------------------------------------------------- HF I/O --

  @classmethod
  def from_hf(cls, config: Mapping[str, Any] | str | os.PathLike,
              **overrides) -> "ModelConfig":
    """Builds a config from an HF `config.json` (a dict, a file or a directory).

    Raises:
      FileNotFoundError: the path has no config.json.
      ValueError: the architecture is not Qwen2, Qwen3, Phi3 or Llama, or a required
        field is missing.
    """
    source = "<dict>"
    if not isinstance(config, Mapping):
      path = os.fspath(config)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"no HF config at {path}")
      source = path
      config = _read_hf_json(path)
    _check_hf_sizes(config, source)
    family = _family_of(config, source)

    def get(key, default=dataclasses.MISSING):
      if key in config and config[key] is not None:
        return config[key]
      if default is dataclasses.MISSING:
        raise ValueError(f"{source}: required field {key!r} is missing")
      return default

    hidden, heads = get("hidden_size"), get("num_attention_heads")
    rope_params = dict(get("rope_parameters", None) or get("rope_scaling", None)
                       or {})
    rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
    if rope_type in ("su", "yarn") and family == "phi3":
      rope_type = "longrope"  # Phi-3's legacy names, as transformers maps them.
    theta = rope_params.get("rope_theta", get("rope_theta", 10000.0))
    partial = rope_params.get("partial_rotary_factor",
                              get("partial_rotary_factor", 1.0))
    tupled = lambda x: tuple(float(v) for v in x) if x is not None else None
    rope = RopeConfig(
        theta=float(theta),
        partial_rotary_factor=float(partial),
        rope_type=rope_type,
        factor=rope_params.get("factor"),
        original_max_position_embeddings=rope_params.get(
            "original_max_position_embeddings",
            config.get("original_max_position_embeddings")),
        beta_fast=rope_params.get("beta_fast"),
        beta_slow=rope_params.get("beta_slow"),
        truncate=rope_params.get("truncate", True),
        mscale=rope_params.get("mscale"),
        mscale_all_dim=rope_params.get("mscale_all_dim"),
        attention_factor=rope_params.get("attention_factor"),
        short_factor=tupled(rope_params.get("short_factor")),
        long_factor=tupled(rope_params.get("long_factor")),
        low_freq_factor=rope_params.get("low_freq_factor"),
        high_freq_factor=rope_params.get("high_freq_factor"),
    )
    attention_bias = bool(get("attention_bias", False))
    kwargs = dict(
        family=family,
        vocab_size=get("vocab_size"),
        hidden_size=hidden,
        intermediate_size=get("intermediate_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim", hidden // heads),
        rope=rope,
        qkv_bias=family == "qwen2" or (family in ("qwen3", "llama")
                                        and attention_bias),
        o_bias=family in ("qwen3", "llama") and attention_bias,
        mlp_bias=family == "llama" and bool(get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        tie_embeddings=bool(get("tie_word_embeddings", False)),
        norm_eps=float(get("rms_norm_eps", 1e-6)),
        max_position_embeddings=get("max_position_embeddings", 32768),
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dict that transformers loads into the same model."""
    rope_parameters: dict[str, Any] = {"rope_type": self.rope.rope_type,
                                       "rope_theta": self.rope.theta}
    if self.family == "phi3" or self.rope.partial_rotary_factor != 1.0:
      rope_parameters["partial_rotary_factor"] = self.rope.partial_rotary_factor
    scaled = self.rope.rope_type != "default"
    for field in ("factor", "original_max_position_embeddings", "beta_fast",
                  "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                  "low_freq_factor", "high_freq_factor"):
      value = getattr(self.rope, field)
      if value is not None and scaled:
        rope_parameters[field] = value
    if self.rope.rope_type == "yarn":
      rope_parameters["truncate"] = self.rope.truncate
    for field in ("short_factor", "long_factor"):
      value = getattr(self.rope, field)
      if value is not None:
        rope_parameters[field] = list(value)
    out = {
        "architectures": [FAMILY_TO_ARCHITECTURE[self.family]],
        "model_type": self.family,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.norm_eps,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_embeddings,
        "rope_parameters": rope_parameters,
        "torch_dtype": self.param_dtype,
        "use_cache": True,
    }
    if self.family in ("qwen3", "llama"):
      out["attention_bias"] = self.qkv_bias
    if self.family == "llama":
      out["mlp_bias"] = self.mlp_bias
    if self.family == "phi3":
      out["pad_token_id"] = 0  # Phi3Config's default (32000) may exceed vocab.
      if self.rope.original_max_position_embeddings is not None:
        out["original_max_position_embeddings"] = (
            self.rope.original_max_position_embeddings)
    return out

  def num_params(self) -> int:
    """Parameter count, computed from the sizes (checked against eval_shape)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    n, k = self.num_heads, self.num_kv_heads
    attn = d * h * (n + 2 * k) + n * h * d
    attn += (n + 2 * k) * h * self.qkv_bias + d * self.o_bias
    attn += 2 * h * self.qk_norm
    per_layer = attn + 3 * d * f + 2 * d + (2 * f + d) * self.mlp_bias
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.num_layers * per_layer + self.vocab_size * d + head + d


def _family_of(config: Mapping[str, Any], source: str) -> str:
  archs = config.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
  if archs:
    raise ValueError(
        f"{source}: architecture {archs[0]!r} is not supported; mosaic-jax "
        f"ports {sorted(ARCHITECTURES)}")
  model_type = config.get("model_type")
  if model_type in MODEL_TYPES:
    return MODEL_TYPES[model_type]
  raise ValueError(
      f"{source}: model_type {model_type!r} is not supported; mosaic-jax ports "
      f"{sorted(ARCHITECTURES)}")
