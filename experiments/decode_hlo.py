"""Where a decode step's memory traffic goes, from the compiled HLO.

`python -m experiments.decode_hlo [--layers=unrolled|scan]` compiles the
sampler's decode call for a small Qwen3 config and reports, for the body of
its `while_loop` (nested loops counted by their trip counts, so figures are
per generated token):

  * copies: instructions that only move data (copy, transpose, slice,
    dynamic-slice, broadcast, convert, or a fusion of nothing else) and
    write at least `min_bytes`, grouped by what they copy;
  * bytes: an HLO-walk estimate of bytes read + written per step (each
    scheduled instruction's operands and result; a fusion operand that the
    fusion only slices counts as the slice; an in-place dynamic-update-slice
    counts its update);
  * XLA's own `cost_analysis()["bytes accessed"]` of one step compiled alone
    (meaningful for the unrolled step: XLA counts a nested loop's body once);
  * the floor: the weights plus the used K/V window, read once.

tests/test_decode_hlo.py runs the same functions on a tiny config.
"""
from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mosaic_jax import sampling
from mosaic_jax.models import decoder as decoder_lib
from mosaic_jax.models.config import ModelConfig, RopeConfig

# A small Qwen3 (GQA, q/k norm, tied embeddings): every matrix is a distinct
# size, and the per-layer K/V window is larger than the smallest matrix.
SMALL_QWEN3 = ModelConfig(
    family="qwen3", vocab_size=2048, hidden_size=128, intermediate_size=384,
    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
    rope=RopeConfig(theta=1e4), qk_norm=True, tie_embeddings=True)

_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4,
          "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1,
          "pred": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.+?)\s+([a-z][a-z0-9-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s*\(.*\{\s*$")
# Ops that only move or reshape data; a fusion of nothing else is a copy.
_MOVES = {"parameter", "constant", "bitcast", "reshape", "copy", "transpose",
          "slice", "dynamic-slice", "broadcast", "convert", "concatenate"}
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant",
         "while", "conditional", "call", "after-all", "partition-id",
         "replica-id", "opt-barrier"}


@dataclasses.dataclass
class Instr:
  name: str
  shape: str
  op: str
  rest: str

  @property
  def bytes(self) -> int:
    return shape_bytes(self.shape)

  def operands(self) -> list[str]:
    head = self.rest.split("), ", 1)[0] if "), " in self.rest else self.rest
    return re.findall(r"%([\w.\-]+)", head)

  def attr(self, key: str) -> str | None:
    m = re.search(key + r"=%([\w.\-]+)", self.rest)
    return m.group(1) if m else None


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (a tuple: the sum of its arrays)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
  return total


def parse(hlo: str) -> tuple[dict[str, list[Instr]], str]:
  """{computation name: instructions}, and the entry computation's name."""
  comps, entry, current = {}, None, None
  for line in hlo.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      comps[current].append(Instr(*m.groups()))
  return comps, entry


def _trip_count(instr: Instr) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.rest)
  return int(m.group(1)) if m else 1


def decode_loop_body(comps: dict[str, list[Instr]], entry: str) -> str:
  """Name of the body of the entry's largest `while` (the decode loop)."""
  loops = [i for i in comps[entry] if i.op == "while"]
  if not loops:
    raise ValueError("decode HLO: the entry computation has no while loop")
  return max(loops, key=lambda i: i.bytes).attr("body")


def scheduled(comps, body: str, times: int = 1):
  """(instruction, executions per step) over `body` and the loops and calls
  it runs; fusions' inner computations are not followed."""
  for instr in comps[body]:
    yield instr, times
    if instr.op == "while":
      yield from scheduled(comps, instr.attr("body"), times * _trip_count(instr))
    elif instr.op in ("call", "conditional"):
      for name in re.findall(r"(?:to_apply|calls|branch_computations=\{)[=%]*%?([\w.\-]+)",
                             instr.rest):
        if name in comps:
          yield from scheduled(comps, name, times)


def _fused(comps, instr: Instr) -> list[Instr]:
  return comps.get(instr.attr("calls"), []) if instr.op == "fusion" else []


def is_copy(comps, instr: Instr) -> bool:
  """The instruction writes a new buffer and only moves data into it."""
  if instr.op == "fusion":
    inner = _fused(comps, instr)
    # Scalar index arithmetic (a slice's start) does not make it compute.
    return bool(inner) and all(i.op in _MOVES or i.bytes <= 8
                               for i in inner) and any(
        i.op not in ("parameter", "constant", "bitcast", "reshape") for i in inner)
  return instr.op in _MOVES - {"parameter", "constant", "bitcast", "reshape"}


def _operand_bytes(comps, instr: Instr, shapes: dict[str, str]) -> int:
  """Bytes an instruction reads: whole operands, except fusion parameters
  that are only sliced inside (the slices) and in-place update targets."""
  inner = _fused(comps, instr)
  ops = instr.operands()
  if not inner:
    if instr.op == "dynamic-update-slice":
      return shape_bytes(shapes.get(ops[1], ""))
    if instr.op in ("dynamic-slice", "slice"):
      return instr.bytes
    return sum(shape_bytes(shapes.get(o, "")) for o in ops)
  params = {}
  for i in inner:
    if i.op == "parameter":
      params[i.name] = int(re.match(r"(\d+)", i.rest).group(1))
  users: dict[str, list[Instr]] = {}
  for i in inner:
    for o in i.operands():
      users.setdefault(o, []).append(i)
  total = 0
  for pname, index in params.items():
    full = shape_bytes(shapes.get(ops[index], "")) if index < len(ops) else 0
    us = users.get(pname, [])
    if us and all(u.op in ("slice", "dynamic-slice") for u in us):
      total += sum(u.bytes for u in us)
    elif us and all(u.op == "dynamic-update-slice" and u.operands()[0] == pname
                    for u in us):
      total += 0  # the in-place target: only the update is touched
    else:
      total += full
  return total


def _written_bytes(comps, instr: Instr, shapes: dict[str, str]) -> int:
  inner = _fused(comps, instr)
  root = inner[-1] if inner else instr
  if root.op == "dynamic-update-slice":
    local = {i.name: i.shape for i in inner} if inner else shapes
    return shape_bytes(local.get(root.operands()[1], ""))
  return instr.bytes


def audit(hlo: str, min_bytes: int) -> dict:
  """Per-step copies and traffic of the decode loop body of `hlo`.

  Returns:
    {"copies": [{op, shape, bytes, per_step, what}], "copies_per_step",
     "copy_bytes_per_step", "bytes_per_step"} where copies are those writing
    at least `min_bytes`; `what` is the HLO metadata op_name's tail.
  """
  comps, entry = parse(hlo)
  body = decode_loop_body(comps, entry)
  shapes = {i.name: i.shape for c in comps.values() for i in c}
  copies, traffic = [], 0
  for instr, times in scheduled(comps, body):
    if instr.op in _FREE:
      continue
    traffic += times * (_operand_bytes(comps, instr, shapes)
                        + _written_bytes(comps, instr, shapes))
    if instr.bytes >= min_bytes and is_copy(comps, instr):
      what = re.search(r'op_name="([^"]*)"', instr.rest)
      copies.append({"op": instr.name, "shape": instr.shape.split("{")[0],
                     "bytes": instr.bytes, "per_step": times,
                     "what": what.group(1).rsplit("/", 2)[-2:] if what else ""})
  return {"copies": copies,
          "copies_per_step": sum(c["per_step"] for c in copies),
          "copy_bytes_per_step": sum(c["per_step"] * c["bytes"] for c in copies),
          "bytes_per_step": traffic}


# ------------------------------------------------------------- the decode --


def _inputs(model, batch: int, capacity: int):
  cfg = model.cfg
  cache = sampling.init_cache(model, batch, capacity)
  logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  stops = sampling.StopCriteria.create(cfg.vocab_size)
  return logits, cache, stops


def decode_hlo(model, batch: int, capacity: int, new_tokens: int,
               layers: str = "unrolled") -> str:
  """Optimised HLO text of the sampler's decode call (greedy)."""
  logits, cache, stops = _inputs(model, batch, capacity)
  graphdef, state = nnx.split(model)
  config = sampling.SamplingConfig(max_new_tokens=new_tokens, layers=layers)
  window = sampling.attention_window(new_tokens, capacity)
  return sampling._decode_in_place.lower(
      graphdef, state, logits, cache, jax.random.key(0),
      jnp.ones((batch,), bool), stops, config, 1, window).compile().as_text()


def floor_bytes(cfg: ModelConfig, batch: int, window: int) -> int:
  """Weights (every parameter once; tied embeddings count once) plus the
  K/V window of every layer, in their stored dtypes: one step's minimum."""
  weights = cfg.num_params() * jnp.dtype(cfg.jnp_param_dtype).itemsize
  kv = (2 * cfg.num_layers * batch * window * cfg.num_kv_heads * cfg.head_dim
        * jnp.dtype(cfg.jnp_dtype).itemsize)
  return int(weights + kv)


def step_cost_bytes(model, batch: int, capacity: int, new_tokens: int) -> float:
  """XLA's cost_analysis "bytes accessed" of one unrolled decode step,
  compiled alone (per-layer weights and windows taken outside, as the
  sampler does before its loop; the carry donated like the loop's)."""
  cfg = model.cfg
  window = sampling.attention_window(new_tokens, capacity)
  _, cache, _ = _inputs(model, batch, capacity)
  cache = cache.windowed(window)
  layers = model.blocks.per_layer()
  graphdef, state = nnx.split(model)

  def step(state, layers, cache, token):
    # The stacked block weights in `state` go unused (not read): the layers
    # come from `layers`, as in the sampler's loop.
    m = nnx.merge(graphdef, state)
    hidden, cache = m(token[:, None], cache=cache, return_hidden=True,
                      layer_params=layers)
    logits = jnp.einsum("bd,dv->bv", hidden[:, 0], m.unembedding())
    return jnp.argmax(logits, -1), cache

  token = jnp.zeros((batch,), jnp.int32)
  compiled = jax.jit(step, donate_argnums=(2,)).lower(
      state, layers, cache, token).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["bytes accessed"])


def min_matrix_bytes(cfg: ModelConfig) -> int:
  """Bytes of the smallest per-layer weight matrix (the copy threshold)."""
  d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  sizes = [d * cfg.num_heads * h, d * cfg.num_kv_heads * h, d * f]
  return min(sizes) * jnp.dtype(cfg.jnp_param_dtype).itemsize


def report(cfg: ModelConfig = SMALL_QWEN3, batch: int = 4, capacity: int = 256,
           new_tokens: int = 128, layers: str = "unrolled") -> dict:
  model = decoder_lib.init_model(cfg)
  window = sampling.attention_window(new_tokens, capacity)
  found = audit(decode_hlo(model, batch, capacity, new_tokens, layers),
                min_matrix_bytes(cfg))
  out = {"layers": layers, "batch": batch, "window": window,
         "floor_bytes": floor_bytes(cfg, batch, window), **found}
  if layers == "unrolled":
    out["xla_step_bytes"] = step_cost_bytes(model, batch, capacity, new_tokens)
  return out


def main(argv=None) -> None:
  import sys
  layers = next((a.split("=", 1)[1] for a in (argv or sys.argv)[1:]
                 if a.startswith("--layers=")), "unrolled")
  print(json.dumps(report(layers=layers), indent=1))


if __name__ == "__main__":
  main()
