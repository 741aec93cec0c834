"""Memory plan of a config: its real steps compiled ahead of time, per device.

    python -m experiments.plan --config=configs/phi4.py \
        [--mesh=data:1,fsdp:16,tensor:1] [--chip=v5p|v5e|h100|h200]

No weights are allocated and no accelerator is needed. The model is built
abstractly (`models.abstract_model`), params and AdamW state take the
project's shardings (`sharding.param_shardings`, `opt_state_shardings`), and
each step is lowered with `jax.ShapeDtypeStruct` inputs of the config's
shapes on a simulated mesh (`--xla_force_host_platform_device_count`, set
from the mesh size before JAX is imported), then compiled for the host CPU;
`Compiled.memory_analysis()` gives per-device bytes. The steps are the
training code's own:

  sft        `train.steps.make_sft_step`: sft.batch x sft.max_len, sft.microbatch
  ref_logp   `train.steps.compute_logprobs` of the frozen reference policy
             (what `reference_logprobs` runs), rl.microbatch rows a pass
  pg         `train.steps.make_pg_step` with ref log-probs: (rl.tasks_per_step
             x rl.group_size) x rollout.max_total_length
  prefill    the sampler's prefill (`sampling.PREFILL_JIT`) of a later turn:
             every episode's next rollout.max_tokens_per_turn tokens into the
             episode cache (`rollout.cache_capacity` slots)
  decode     the sampler's first-turn decode loop (`sampling.DECODE_GROUPS_JIT`):
             rl.tasks_per_step prompt caches repeated into rl.group_size
             episodes each (both caches live), rollout.max_tokens_per_turn
             tokens per turn
  judge      the LLM judge's forward (`judge.answer_logits`): the G(G-1)
             ordered pairs of one task, 2 transcripts of 1024 tokens plus the
             prompt (2560 tokens); only used with rl.judge="llm"

A step's total is XLA's `arguments + outputs - aliased + temps` plus what
else is resident on the device meanwhile (the optimizer state during the
rollout, the reference policy's params during RL). "Largest that fits":
linear extrapolation from two compiles of each step, at the configured
length and at half of it (bytes = fixed + slope x tokens): the longest
episode at the configured rows, and the most rows at the configured length.
Attention that grows faster than linearly in the length makes the length
estimate optimistic beyond the compiled points.

What CPU compilation cannot tell (docs/pods.md): the TPU/GPU compilers make
their own fusion, layout (tiling pads small dims), rematerialisation and
scheduling decisions, and add buffers for async collectives and the
runtime; treat these numbers as an estimate of the order of the real ones,
and keep a margin.
"""
from __future__ import annotations

import os
import sys


def _parse_mesh(text: str) -> dict[str, int]:
  """"data:1,fsdp:16,tensor:1" -> {"data": 1, "fsdp": 16, "tensor": 1}."""
  sizes = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in filter(None, text.split(",")):
    name, _, value = part.partition(":")
    if name not in sizes or not value.lstrip("-").isdigit():
      raise ValueError(f"--mesh={text!r}: expected data:N,fsdp:N,tensor:N")
    sizes[name] = int(value)
  return sizes


def _argv_value(argv: list[str], flag: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(flag + "="):
      return arg.split("=", 1)[1]
    if arg == flag and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _preset_devices(argv: list[str]) -> None:
  """Sets XLA_FLAGS to the mesh's device count before JAX is imported."""
  count = _argv_value(argv, "--devices")
  mesh = _argv_value(argv, "--mesh")
  if count is None and mesh is not None:
    sizes = _parse_mesh(mesh)
    if all(s > 0 for s in sizes.values()):
      count = str(sizes["data"] * sizes["fsdp"] * sizes["tensor"])
  if count is None:  # the config's own mesh: resolved in main(), re-exec'd
    return
  flags = os.environ.get("XLA_FLAGS", "")
  flags = " ".join(f for f in flags.split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  os.environ["XLA_FLAGS"] = (
      f"{flags} --xla_force_host_platform_device_count={count}").strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


if __name__ == "__main__":
  _preset_devices(sys.argv)

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import importlib.util
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mosaic_jax import judge as judge_lib
from mosaic_jax import sampling, sharding
from mosaic_jax.models import decoder, presets
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.rollout import cache_capacity, RolloutConfig
from mosaic_jax.train import state as state_lib
from mosaic_jax.train import steps as steps_lib

GIB = 1024 ** 3

# HBM per chip, bytes. Sources: Google Cloud TPU docs, "TPU v5e" (16 GiB
# HBM2 per chip) and "TPU v5p" (95 GiB HBM2e per chip),
# cloud.google.com/tpu/docs/v5e and /v5p; NVIDIA H100 SXM datasheet (80 GB
# HBM3) and H200 datasheet (141 GB HBM3e). The GPU figures are taken as GiB
# here (the usable H100 is 79.6 GiB, the H200 about 140 GiB: keep a margin).
CHIP_HBM = {"v5e": 16 * GIB, "v5p": 95 * GIB, "h100": 80 * GIB,
            "h200": 141 * GIB}

# The LLM judge's prompt: two transcripts clipped to LLMJudge's default
# max_transcript_tokens (1024) plus the system/task prompt, padded to its
# bucket (256).
JUDGE_PROMPT_TOKENS = 2560


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Per-device bytes of one compiled step.

  Attributes:
    name: step name (sft, ref_logp, pg, prefill, decode, judge).
    args, outputs, temps, aliased, code: XLA's memory analysis.
    resident: bytes on the device that are not the step's arguments (e.g.
      the optimizer state during the rollout).
    compile_s: seconds to lower and compile.
    length_field, rows_field: config fields of the step's length and rows.
    length, rows: their values in this compile.
    slope: bytes per extra token (rows x length) from the half-length
      compile, or None when not extrapolated.
  """
  name: str
  args: int
  outputs: int
  temps: int
  aliased: int
  code: int
  resident: int
  compile_s: float
  length_field: str
  rows_field: str
  length: int
  rows: int
  slope: float | None = None

  @property
  def total(self) -> int:
    """Peak per-device bytes: arguments + outputs − aliased + temps +
    resident."""
    return self.args + self.outputs - self.aliased + self.temps + self.resident

  def max_length(self, hbm: int) -> int | None:
    """Longest `length_field` that fits `hbm` at these rows (extrapolated)."""
    if not self.slope or self.slope <= 0:
      return None
    return int(self.length + (hbm - self.total) / (self.slope * self.rows))

  def max_rows(self, hbm: int) -> int | None:
    """Most `rows_field` rows that fit `hbm` at this length (extrapolated)."""
    if not self.slope or self.slope <= 0:
      return None
    fixed = self.total - self.slope * self.rows * self.length
    return int(self.rows * (hbm - fixed) / (self.slope * self.rows * self.length))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A config's memory plan: per-device shares and every step's bytes."""
  config_name: str
  mesh: dict[str, int]
  chip: str
  hbm: int
  num_params: int
  params_bytes: int
  opt_bytes: int
  steps: tuple[StepMemory, ...]

  def fits(self) -> bool:
    return all(s.total <= self.hbm for s in self.steps)


# --------------------------------------------------------------- building --


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (run from the repository root)."""
  spec = importlib.util.spec_from_file_location("_plan_config", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"--config={path!r}: not a python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The preset with the config's dtypes and remat (as the run builds it)."""
  m = config.model
  return presets.PRESETS[m.preset].replace(
      param_dtype=m.dtype, dtype=m.compute_dtype, remat=m.remat)


def _abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves, with `shardings` leaf for leaf."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


def _replicated(tree: Any, mesh) -> Any:
  rep = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x),
                                     sharding=rep), tree)


def _batch(shape: tuple[int, ...], dtype, mesh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype,
                              sharding=sharding.batch_sharding(mesh, shape))


def shard_bytes(tree: Any) -> int:
  """Per-device bytes of a tree of sharded ShapeDtypeStructs (device 0's
  shard of each leaf)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape)
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def abstract_state(arch: ModelConfig, opt: state_lib.OptimizerConfig, mesh
                   ) -> state_lib.TrainState:
  """The train state of `arch` as sharded ShapeDtypeStructs (no weights)."""
  model = decoder.abstract_model(arch)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = state_lib.make_optimizer(opt)
  param_sh = sharding.param_shardings(params, mesh)
  opt_shapes = jax.eval_shape(tx.init, params)
  opt_sh = sharding.opt_state_shardings(opt_shapes, param_sh, mesh)
  rep = NamedSharding(mesh, PartitionSpec())
  return state_lib.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
      params=_abstract(params, param_sh),
      opt_state=_abstract(opt_shapes, opt_sh),
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
      graphdef=graphdef, tx=tx)


def _memory(name: str, lower: Callable[[], Any], *, resident: int,
            length_field: str, rows_field: str, length: int, rows: int
            ) -> StepMemory:
  start = time.perf_counter()
  mem = lower().compile().memory_analysis()
  return StepMemory(
      name=name, args=mem.argument_size_in_bytes,
      outputs=mem.output_size_in_bytes, temps=mem.temp_size_in_bytes,
      aliased=mem.alias_size_in_bytes,
      code=mem.generated_code_size_in_bytes, resident=resident,
      compile_s=time.perf_counter() - start, length_field=length_field,
      rows_field=rows_field, length=length, rows=rows)


def _rl_config(config: ml_collections.ConfigDict) -> steps_lib.PGConfig:
  """`PGConfig` of `config.rl` as the loop builds it (temperature of the
  rollout when rl.temper_logprobs, seq_norm 0 -> max_total_length)."""
  cfg = steps_lib.PGConfig.from_config(config.rl)
  temper = config.rl.get("temper_logprobs", True)
  temp = config.rollout.temperature if temper else 1.0
  seq_norm = config.rl.get("seq_norm", 0.0) or config.rollout.max_total_length
  return dataclasses.replace(cfg, temperature=float(temp),
                             seq_norm=float(seq_norm))


def step_lowerings(config: ml_collections.ConfigDict, mesh,
                   state: state_lib.TrainState, length_scale: float = 1.0
                   ) -> dict[str, tuple[Callable[[], Any], int, str, str, int,
                                        int]]:
  """Each step's `lower()` thunk with its extra resident bytes and shapes.

  `length_scale` shrinks every episode length (for the extrapolation).
  Returns name -> (lower, resident, length_field, rows_field, length, rows).
  """
  c = config
  scale = lambda n: max(16, int(n * length_scale))
  params_b, opt_b = shard_bytes(state.params), shard_bytes(state.opt_state)
  ref_resident = params_b if (c.rl.kl_beta or c.rl.judge == "llm") else 0
  out = {}

  # SFT.
  sft_cfg = steps_lib.SFTConfig.from_config(c.sft)
  b, t = c.sft.batch, scale(c.sft.max_len)
  sft_batch = steps_lib.SFTBatch(*(_batch((b, t), jnp.int32, mesh)
                                   for _ in range(3)))
  sft_step = steps_lib.make_sft_step(sft_cfg)
  out["sft"] = (lambda: sft_step.lower(state, sft_batch), 0, "sft.max_len",
                "sft.microbatch", t, sft_cfg.microbatch or b)

  # RL: the reference log-probs, then the PG step.
  pg_cfg = _rl_config(c)
  rows = c.rl.tasks_per_step * c.rl.group_size
  t = scale(c.rollout.max_total_length)
  tok = _batch((rows, t), jnp.int32, mesh)
  f32 = _batch((rows, t), jnp.float32, mesh)
  out["ref_logp"] = (
      lambda: steps_lib.compute_logprobs.lower(
          state.graphdef, state.params, tok, tok, microbatch=pg_cfg.microbatch,
          chunk_size=pg_cfg.chunk_size, temperature=pg_cfg.temperature),
      params_b + opt_b, "rollout.max_total_length", "rl.microbatch", t,
      pg_cfg.microbatch or rows)
  pg_batch = steps_lib.PGBatch(
      tokens=tok, loss_mask=tok, attention_mask=tok,
      advantages=_batch((rows,), jnp.float32, mesh), old_logp=f32,
      ref_logp=f32 if pg_cfg.kl_beta else None)
  pg_step = steps_lib.make_pg_step(pg_cfg)
  out["pg"] = (lambda: pg_step.lower(state, pg_batch), ref_resident,
               "rollout.max_total_length", "rl.microbatch", t,
               pg_cfg.microbatch or rows)

  # Rollout: the sampler's prefill and decode on the policy's params.
  roll = RolloutConfig.from_config(c.rollout)
  roll = dataclasses.replace(roll, max_total_length=t)
  capacity, turn = cache_capacity(roll), c.rollout.max_tokens_per_turn
  arch = model_config(c)
  graphdef, _ = nnx.split(decoder.abstract_model(arch))
  policy = state.params

  def cache(batch: int):
    shapes = jax.eval_shape(lambda: decoder.KVCache.init(arch, batch,
                                                         capacity))
    axes = decoder.KVCache(k=sampling.CACHE_AXES, v=sampling.CACHE_AXES,
                           valid=("batch", "cache_length"), index=(),
                           pos=("batch",))
    return jax.tree.map(
        lambda x, a: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                          sharding=sharding.logical_sharding(
                                              a, x.shape, mesh)),
        shapes, axes, is_leaf=lambda a: isinstance(a, tuple))

  resident = opt_b + ref_resident
  new = _batch((rows, turn), jnp.int32, mesh)
  out["prefill"] = (
      lambda: sampling.PREFILL_JIT.lower(
          graphdef, policy, new, _batch((rows, turn), jnp.bool_, mesh),
          cache(rows), window=capacity),
      resident, "rollout.max_total_length", "rl.tasks_per_step", t, rows)
  tasks, g = c.rl.tasks_per_step, c.rl.group_size
  stops = _replicated(sampling.StopCriteria.create(arch.vocab_size, (0,)),
                      mesh)
  scfg = sampling.SamplingConfig(max_new_tokens=turn,
                                 strategy=roll.strategy_object())
  out["decode"] = (
      lambda: sampling.DECODE_GROUPS_JIT.lower(
          graphdef, policy, _batch((tasks, arch.vocab_size), jnp.float32,
                                   mesh), cache(tasks),
          _replicated(jax.random.key_data(jax.random.key(0)), mesh),
          _batch((tasks,), jnp.bool_, mesh), stops, scfg, g, capacity),
      resident, "rollout.max_total_length", "rl.tasks_per_step", t, rows)

  # The LLM judge (the reference policy) on one task's ordered pairs.
  pairs, jt = g * (g - 1), scale(JUDGE_PROMPT_TOKENS)
  jtok = _batch((pairs, jt), jnp.int32, mesh)
  out["judge"] = (
      lambda: judge_lib.answer_logits.lower(
          state.graphdef, state.params, jtok, jtok,
          _replicated(jnp.zeros((2,), jnp.int32), mesh)),
      params_b + opt_b, "(judge prompt)", "rl.group_size", jt, pairs)
  return out


def make_plan(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int],
              chip: str = "v5p", *, hbm: int | None = None,
              extrapolate: bool = True, only: tuple[str, ...] = (),
              name: str = "config", log: Callable[[str], None] = print
              ) -> Plan:
  """Compiles `config`'s steps on a simulated mesh and returns the plan.

  Args:
    config: an experiment config (`configs/*.py`'s `get_config()`).
    mesh_sizes: data/fsdp/tensor sizes (-1: remaining devices).
    chip: key of `CHIP_HBM`; `hbm` overrides its bytes.
    extrapolate: also compile at half length for the largest-fit estimate.
    only: compile only these steps (default all).
  """
  if chip not in CHIP_HBM and hbm is None:
    raise ValueError(f"--chip={chip!r}: use one of {sorted(CHIP_HBM)}")
  mesh = sharding.make_mesh(mesh_sizes)
  arch = model_config(config)
  opt = state_lib.OptimizerConfig.from_config(config.optimizer)
  steps = []
  with sharding.use_mesh(mesh):
    state = abstract_state(arch, opt, mesh)
    thunks = step_lowerings(config, mesh, state)
    halves = (step_lowerings(config, mesh, state, 0.5) if extrapolate
              else {})
    for step_name, (lower, resident, lf, rf, length, rows) in thunks.items():
      if only and step_name not in only:
        continue
      mem = _memory(step_name, lower, resident=resident, length_field=lf,
                    rows_field=rf, length=length, rows=rows)
      if step_name in halves and step_name != "judge":
        lower2, res2, _, _, length2, _ = halves[step_name]
        half = _memory(step_name, lower2, resident=res2, length_field=lf,
                       rows_field=rf, length=length2, rows=rows)
        slope = (mem.total - half.total) / (rows * (length - length2))
        mem = dataclasses.replace(mem, slope=slope,
                                  compile_s=mem.compile_s + half.compile_s)
      steps.append(mem)
      # Each row as soon as it is known: a long plan still reports the
      # steps it got through.
      log(f"  compiled {step_name} in {mem.compile_s:.1f} s: "
          + format_row(mem, hbm if hbm is not None else CHIP_HBM[chip]))
  params = jax.tree.leaves(state.params)
  return Plan(config_name=name, mesh=dict(mesh.shape), chip=chip,
              hbm=hbm if hbm is not None else CHIP_HBM[chip],
              num_params=sum(math.prod(p.shape) for p in params),
              params_bytes=shard_bytes(state.params),
              opt_bytes=shard_bytes(state.opt_state), steps=tuple(steps))


# -------------------------------------------------------------- reporting --

_ADVICE = {
    "sft": "lower sft.microbatch (or sft.max_len), or raise mesh.fsdp",
    "ref_logp": "lower rl.microbatch, or raise mesh.fsdp",
    "pg": "lower rl.microbatch (or rollout.max_total_length), or raise "
          "mesh.fsdp",
    "prefill": "lower rl.tasks_per_step or rollout.max_total_length (the KV "
               "cache), or raise mesh.fsdp",
    "decode": "lower rl.tasks_per_step or rollout.max_total_length (the KV "
              "cache), or raise mesh.fsdp",
    "judge": "lower rl.group_size, or raise mesh.fsdp",
}


def _gib(n: float) -> str:
  return f"{n / GIB:.2f}"


def format_row(s: StepMemory, hbm: int) -> str:
  """One step's row of the plan table (GiB per device)."""
  longest, most = s.max_length(hbm), s.max_rows(hbm)
  return (f"{s.name:<15} | {_gib(s.args)} | {_gib(s.outputs)} | "
          f"{_gib(s.temps)} | {_gib(s.aliased)} | {_gib(s.resident)} | "
          f"{_gib(s.total)} | {'yes' if s.total <= hbm else 'NO'} | "
          f"{s.length_field}={longest if longest is not None else '-'} | "
          f"{s.rows_field}={most if most is not None else '-'} | "
          f"{s.compile_s:.1f}")


def format_plan(plan: Plan) -> str:
  """The plan as text: shares, one row per step, fit and advice."""
  mesh = ",".join(f"{k}:{v}" for k, v in plan.mesh.items())
  lines = [
      f"{plan.config_name} on mesh {mesh} ({math.prod(plan.mesh.values())} "
      f"devices), chip {plan.chip} ({_gib(plan.hbm)} GiB HBM)",
      f"params: {plan.num_params / 1e9:.3f} B; per device: params "
      f"{_gib(plan.params_bytes)} GiB, optimizer state "
      f"{_gib(plan.opt_bytes)} GiB",
      "per-device GiB  | args | outputs | temps | aliased | resident | "
      "total | fits | longest | most rows | compile s",
  ]
  lines.extend(format_row(s, plan.hbm) for s in plan.steps)
  bad = [s for s in plan.steps if s.total > plan.hbm]
  if not bad:
    lines.append(f"FITS: every step within {_gib(plan.hbm)} GiB per device")
  for s in bad:
    lines.append(
        f"DOES NOT FIT: {s.name} needs {_gib(s.total)} GiB of "
        f"{_gib(plan.hbm)} GiB per device; {_ADVICE[s.name]}")
  return "\n".join(lines)


def _default_devices(mesh_sizes: dict[str, int]) -> int:
  """Devices for a mesh with a -1 axis: its fixed axes, at least 8."""
  fixed = math.prod(s for s in mesh_sizes.values() if s > 0)
  return fixed if -1 not in mesh_sizes.values() else max(fixed, 8)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--mesh", default=None,
                 help="data:N,fsdp:N,tensor:N (default: the config's)")
  p.add_argument("--devices", type=int, default=None,
                 help="simulated devices (default: the mesh's product)")
  p.add_argument("--chip", default="v5p", choices=sorted(CHIP_HBM))
  p.add_argument("--no_extrapolate", action="store_true")
  p.add_argument("--only", default="", help="comma-separated step names")
  args = p.parse_args(argv)
  config = load_config(args.config)
  sizes = (_parse_mesh(args.mesh) if args.mesh else
           {k: int(config.mesh[k]) for k in sharding.MESH_AXES})
  want = args.devices or _default_devices(sizes)
  if jax.device_count() != want:
    if "--devices" in " ".join(argv):
      raise SystemExit(f"{jax.device_count()} devices, not {want}: run as "
                       "python -m experiments.plan (it sets XLA_FLAGS)")
    # The config's mesh had a -1 axis: restart with the device count set.
    os.execv(sys.executable, [sys.executable, "-m", "experiments.plan",
                              *argv, f"--devices={want}"])
  start = time.perf_counter()
  plan = make_plan(config, sizes, args.chip,
                   extrapolate=not args.no_extrapolate,
                   only=tuple(filter(None, args.only.split(","))),
                   name=os.path.basename(args.config))
  print(format_plan(plan))
  print(f"plan time {time.perf_counter() - start:.0f} s")
  return 0 if plan.fits() else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
