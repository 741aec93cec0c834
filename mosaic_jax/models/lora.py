"""LoRA adapters on the decoder's stacked projections.

A target projection `W` (stacked over layers, e.g. `wq_ldnh` [L, D, N, H])
gets two factors, created as `LoRAParam` (an `nnx.Param` subclass) on the
`Blocks` module beside it:

  A: `wq_lora_a_ldr`  [L, D, R]      the base weight's input axes, then rank
  B: `wq_lora_b_lrnh` [L, R, N, H]   rank, then the base weight's output axes

and the projection computes `x·W + (alpha / R) · (x·A)·B`. B starts at zero,
so a fresh adapter leaves the model's outputs exactly as they were. The factors
carry the base weight's logical axes (the rank axis is replicated), so they
shard like the weight they adapt.

Training keeps the base frozen by splitting the model three ways,
`nnx.split(model, LoRAParam, nnx.Param)`: the train state's `params` (the
differentiated, optimized and checkpointed part) are the adapters only and the
base weights ride along as `frozen` (`train.state.TrainState`). `merge` folds
the adapters into the base weights (for `convert.save_pretrained` and the
frozen reference policy).

Why not qwix (0.1.8): its LoRA provider intercepts `einsum` / `dot_general`
calls inside Flax modules and recognises a weight by the identity of the
module parameter passed in, creating the factors lazily on the first call.
Here every weight reaches its einsum as a per-layer slice of a stacked array
inside `lax.scan` (`decoder._block` is a pure function of a dict of arrays),
so qwix would find no parameter to adapt, and lazily created variables
inside a scan body would leak from the trace. Adapting it would mean
restructuring the decoder; the adapter itself is a few lines.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mosaic_jax import sections

# Target -> (stacked base parameter, number of its input axes after layers).
TARGETS: dict[str, tuple[str, int]] = {
    "q": ("wq_ldnh", 1),
    "k": ("wk_ldkh", 1),
    "v": ("wv_ldkh", 1),
    "o": ("wo_lnhd", 2),
    "gate": ("w_gate_ldf", 1),
    "up": ("w_up_ldf", 1),
    "down": ("w_down_lfd", 1),
}
ALL_TARGETS = tuple(TARGETS)
# Static attribute of `Blocks` that holds alpha / rank once adapters exist.
SCALE_ATTR = "lora_scale"


class LoRAParam(nnx.Param):
  """A LoRA factor: the trained part of a model whose `nnx.Param`s are frozen."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig(sections.Section):
  """`model.lora` of a config.

  Attributes:
    rank: adapter rank R; 0 disables LoRA (full fine-tuning).
    alpha: the update is scaled by alpha / rank.
    targets: projections to adapt, keys of `TARGETS`.
  """
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ALL_TARGETS

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  SECTION = "model.lora"

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """A rank >= 0; with LoRA on (rank > 0) a finite alpha > 0 and known,
    distinct, non-empty targets."""
    p: list[str] = []
    rank = values["rank"]
    sections.at_least(p, "model.lora.rank", rank, 0)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
      return p
    sections.finite(p, "model.lora.alpha", values["alpha"], 0.0, strict=True)
    targets = values["targets"]
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)):
      p.append(f"model.lora.targets: must be a tuple of projection names "
               f"({', '.join(TARGETS)}), got {targets!r}")
      return p
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
      p.append(f"model.lora.targets: unknown "
               f"{', '.join(map(repr, unknown))}; choose from "
               f"{', '.join(TARGETS)}")
    elif not targets or len(set(targets)) != len(targets):
      p.append(f"model.lora.targets: {tuple(targets)!r} must name at least "
               "one projection, each once")
    return p

  @classmethod
  def section_problems(cls, section: Mapping[str, Any] | Any | None
                       ) -> list[str]:
    return [] if section is None else super().section_problems(section)

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | Any | None) -> LoRAConfig:
    """`model.lora` (absent: rank 0, full fine-tuning)."""
    return cls() if section is None else sections.from_section(cls, section)


def factor_names(base: str) -> tuple[str, str]:
  """`wq_ldnh` -> (`wq_lora_a_ldr`, `wq_lora_b_lrnh`): names with dims."""
  n_in = next(n for name, n in TARGETS.values() if name == base)
  prefix, dims = base.rsplit("_", 1)
  return (f"{prefix}_lora_a_{dims[:1 + n_in]}r",
          f"{prefix}_lora_b_{dims[0]}r{dims[1 + n_in:]}")


def _n_in(a: jax.Array) -> int:
  """Input axes of a per-layer A factor [*in, R]."""
  return a.ndim - 1


def delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """The adapter's contribution `scale · (x·A)·B` for one layer.

  Args:
    x: [B, T, *in] activations (the base projection's input).
    a: [*in, R]; b: [R, *out] (one layer's factors, compute dtype).
    scale: alpha / R.

  Returns:
    [B, T, *out], the base projection's output shape.
  """
  bt = x.shape[:2]
  xm = x.reshape(-1, *x.shape[2:])
  xa = jnp.tensordot(xm, a, axes=_n_in(a)) * jnp.asarray(scale, x.dtype)
  out = jnp.tensordot(xa, b, axes=1)
  return out.reshape(*bt, *out.shape[1:])


def has_adapters(model: nnx.Module) -> bool:
  return bool(jax.tree.leaves(nnx.state(model, LoRAParam)))


def apply(model: nnx.Module, cfg: LoRAConfig, *, seed: int = 0) -> nnx.Module:
  """Adds fresh adapters to a `Decoder`, in place (a no-op at rank 0).

  A ~ N(0, 1 / fan_in) per layer (fan_in: the product of the input axes;
  NumPy's generator seeded with `seed`), B = 0, both float32 whatever the
  base dtype (cast to the compute dtype in the forward pass). Works on
  abstract models too (`nnx.eval_shape`).

  Returns:
    `model`, for chaining.

  Raises:
    ValueError: unknown target, or the model has adapters already.
  """
  if not cfg.enabled:
    return model
  unknown = [t for t in cfg.targets if t not in TARGETS]
  if unknown:
    raise ValueError(f"model.lora.targets: unknown {unknown}; choose from "
                     f"{list(TARGETS)}")
  if has_adapters(model):
    raise ValueError("model already has LoRA adapters")
  blocks = model.blocks
  specs = []
  for target in cfg.targets:
    base_name, n_in = TARGETS[target]
    base = getattr(blocks, base_name)
    specs.append((base_name, n_in, tuple(base.get_value().shape),
                  tuple(base.get_metadata()["logical_axes"])))
  factors = _init_factors(seed, cfg.rank,
                          tuple((shape, n_in) for _, n_in, shape, _ in specs))
  for (base_name, n_in, _, axes), (a, b) in zip(specs, factors):
    a_name, b_name = factor_names(base_name)
    setattr(blocks, a_name, LoRAParam(
        a, logical_axes=(*axes[:1 + n_in], None)))
    setattr(blocks, b_name, LoRAParam(
        b, logical_axes=(axes[0], None, *axes[1 + n_in:])))
  setattr(blocks, SCALE_ATTR, cfg.scale)
  return model


def _init_factors(seed: int, rank: int,
                  bases: tuple[tuple[tuple[int, ...], int], ...]
                  ) -> list[tuple[jax.Array, jax.Array]]:
  """(A, B) per (base shape, input axes): A ~ N(0, 1 / fan_in), B = 0.

  Drawn with NumPy on the host: the same values on every process (the
  mesh placement then takes each device's slice), and no compile (jitted
  `jax.random` took seconds per set of shapes on CPU).
  """
  rng = np.random.default_rng(seed)
  out = []
  for shape, n_in in bases:
    in_shape, out_shape = shape[1:1 + n_in], shape[1 + n_in:]
    a = rng.standard_normal((shape[0], *in_shape, rank), np.float32)
    out.append((jnp.asarray(a * np.float32(math.prod(in_shape) ** -0.5)),
                jnp.zeros((shape[0], rank, *out_shape), jnp.float32)))
  return out


def _merged_weight(w: jax.Array, a: jax.Array, b: jax.Array,
                   scale: float) -> jax.Array:
  """W + scale · A·B per layer, in float32, cast to W's dtype.

  Args: w [L, *in, *out]; a [L, *in, R]; b [L, R, *out].
  """
  ab = jax.vmap(lambda x, y: jnp.tensordot(x, y, axes=1))(
      a.astype(jnp.float32), b.astype(jnp.float32))
  return (w.astype(jnp.float32) + scale * ab).astype(w.dtype)


def merged(model: nnx.Module) -> nnx.Module:
  """`merge` of a new module sharing `model`'s arrays; `model` is unchanged."""
  if not has_adapters(model):
    return model
  return merge(nnx.merge(*nnx.split(model)))


def merge(model: nnx.Module) -> nnx.Module:
  """The adapters folded into the base weights; adapters removed from `model`.

  The model's modules are changed in place, its Variables are not (a merged
  weight is a new Variable), so a train state `model` was merged from keeps
  its values.

  The result is a plain `Decoder` (what `convert.save_pretrained` and
  `convert.save_orbax` write). Each merged weight keeps its base weight's
  sharding. A model without adapters is returned unchanged.
  """
  if not has_adapters(model):
    return model
  blocks = model.blocks
  scale = getattr(blocks, SCALE_ATTR)
  for base_name, _ in TARGETS.values():
    a_name, b_name = factor_names(base_name)
    if not hasattr(blocks, a_name):
      continue
    base = getattr(blocks, base_name)
    w = base.get_value()
    merged = jax.jit(_merged_weight, static_argnums=3,
                     out_shardings=getattr(w, "sharding", None))(
        w, getattr(blocks, a_name).get_value(),
        getattr(blocks, b_name).get_value(), scale)
    # A new Variable, not set_value: modules built by nnx.merge share their
    # Variables with the state they came from (a train state's, say).
    setattr(blocks, base_name, base.replace(merged))
    delattr(blocks, a_name)
    delattr(blocks, b_name)
  delattr(blocks, SCALE_ATTR)
  return model
