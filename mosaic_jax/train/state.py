"""The train state: model params, AdamW state, step and RNG key as one pytree.

The model is split once into a static `nnx.GraphDef` and its `nnx.Param`
state; jitted steps merge them back inside the trace. Keeping params, optimizer
state, step and key in one pytree lets a step donate all of them at once and
lets the checkpointer save and restore them together.

With a mesh, params are placed by their `logical_axes` metadata
(`sharding.shard_params`) and AdamW's moments take the params' shardings leaf
for leaf (`sharding.opt_state_shardings`): the optimizer state is FSDP-sharded
exactly like the weights it tracks.

With LoRA adapters (`models.lora`), `params` are the adapters only: they are
what the steps differentiate, the optimizer tracks and the checkpointer
saves; the base weights are the state's `frozen` part, merged back in by
`TrainState.merge` and never updated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from mosaic_jax import sections, sharding
from mosaic_jax.models import lora as lora_lib


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(sections.Section):
  """AdamW with linear warm-up, cosine decay and global-norm clipping.

  Attributes:
    lr: peak learning rate.
    warmup_steps: steps of linear warm-up from 0 to `lr`.
    total_steps: length of the schedule; cosine decays from `lr` at
      `warmup_steps` to `lr * final_lr_ratio` at `total_steps`.
    final_lr_ratio: end of the cosine, as a fraction of `lr`.
    clip_norm: global gradient norm clip (0 or less: no clipping).
    weight_decay: decoupled weight decay on matrices and embeddings (not on
      norm scales or biases).
    b1, b2, eps: Adam moments' decay rates and ε.
  """
  lr: float = 1e-5
  warmup_steps: int = 10
  total_steps: int = 1000
  final_lr_ratio: float = 0.1
  clip_norm: float = 1.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8

  SECTION = "optimizer"

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """A finite learning rate > 0 and a warm-up of >= 0 steps."""
    p: list[str] = []
    sections.finite(p, "optimizer.lr", values["lr"], 0, strict=True)
    sections.at_least(p, "optimizer.warmup_steps", values["warmup_steps"], 0)
    return p


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Linear warm-up to `cfg.lr`, then cosine decay to `lr * final_lr_ratio`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
      end_value=cfg.lr * cfg.final_lr_ratio)


def _decay_mask(params: nnx.State) -> Any:
  """True for params that take weight decay: not norm scales, not biases.

  Decoder leaf names carry their role (`*_norm_*`, `b*_…` biases), so the
  name decides; stacked norms are 2-D, so a rank test would not.
  """
  def decays(path, _):
    name = next(str(k.key) for k in reversed(path)
                if isinstance(k, jax.tree_util.DictKey))
    return "norm" not in name and not name.startswith("b")
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the schedule."""
  adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                      eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=_decay_mask)
  if cfg.clip_norm <= 0:
    return adamw
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates.

  Attributes:
    step: `[]` int32, number of steps taken (skipped non-finite steps
      included, so checkpoint and eval cadences follow the loop).
    params: the model's `nnx.Param` state.
    opt_state: the optax state over `params`.
    rng: `[2]` uint32 PRNG key (raw key data, so orbax saves it as an array).
    graphdef: the model's static structure (not a pytree leaf).
    tx: the optimizer (not a pytree leaf).
    frozen: with LoRA, the base weights (`nnx.Param`s that are not
      `LoRAParam`s): passed through every step, never optimized nor
      checkpointed; None without LoRA (then `params` is the whole model).
  """
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  frozen: nnx.State | None = None

  def merge(self, params: nnx.State) -> nnx.Module:
    """The model with `params` (as trained) and the frozen weights, if any."""
    if self.frozen is None:
      return nnx.merge(self.graphdef, params)
    return nnx.merge(self.graphdef, params, self.frozen)

  def model(self) -> nnx.Module:
    """The model with the current params (a fresh module, outside jit)."""
    return self.merge(self.params)


def create_train_state(model: nnx.Module, cfg: OptimizerConfig, *,
                       seed: int = 0, mesh: Mesh | None = None,
                       rules: sharding.Rules = sharding.DEFAULT_RULES
                       ) -> TrainState:
  """A fresh train state around `model`'s current params.

  Args:
    model: a `models.Decoder` (every variable must be an `nnx.Param`). If
      it has LoRA adapters, only they are trained (`params`); the rest is
      `frozen`.
    cfg: optimizer settings.
    seed: seed of the state's PRNG key (sampling, dropout of later steps).
    mesh: when given, params are moved onto it (in place, the model's too)
      and the optimizer state is created directly in the matching layout.
    rules: logical-axis rules for the mesh.

  Returns:
    The state at step 0.
  """
  tx = make_optimizer(cfg)
  if mesh is not None:
    sharding.shard_params(model, mesh, rules)
  frozen = None
  if lora_lib.has_adapters(model):
    graphdef, params, frozen = nnx.split(model, lora_lib.LoRAParam, nnx.Param)
  else:
    graphdef, params = nnx.split(model, nnx.Param)
  if mesh is None:
    opt_state = tx.init(params)
    replicated = None
  else:
    param_sh = sharding.param_shardings(params, mesh, rules)
    opt_sh = sharding.opt_state_shardings(jax.eval_shape(tx.init, params),
                                          param_sh, mesh)
    # Created in place on the mesh: the full moments never exist on one device.
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
  rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated)
  return TrainState(step=step, params=params, opt_state=opt_state, rng=rng,
                    graphdef=graphdef, tx=tx, frozen=frozen)
