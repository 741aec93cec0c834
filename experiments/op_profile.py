"""Per-op time of a jitted function on XLA:CPU, from a `jax.profiler` trace.

  python -m experiments.op_profile train      # the `bench train` PG step
  python -m experiments.op_profile decode     # the `bench sampler` decode call
  python -m experiments.op_profile smollm2    # the `bench smollm2` PG step

`profile(jitted, *args)` runs the call once untraced (compile, warm-up), then
`runs` times inside `jax.profiler.trace(..., create_perfetto_trace=True)`,
reads the Perfetto JSON it writes, and sums the duration of every XLA:CPU
thunk event (one per HLO instruction the runtime executes; a thunk inside a
while loop appears once per trip). Each instruction is put in a category
read from the compiled HLO text: `dot` (a dot, or a fusion containing one),
`copy` (copy/transpose/slice/broadcast/convert, alone or fused with nothing
else), `reduce`, `scatter/gather`, `elementwise` (any other fusion), and
`control`/`other`. An event spans its thunk's execution as the dispatching
thread saw it (a dot's worker threads run inside that span), and thunks run
one after another, so the total is close to the call's wall time: 5.9 s of
op time for the 5.2 s `bench train` step on 2 quiet cores (tracing adds the
rest).
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile

import jax
from flax import nnx

_MOVE = {"copy", "transpose", "slice", "dynamic-slice", "broadcast",
         "convert", "bitcast", "reshape", "concatenate", "pad", "iota",
         "parameter", "constant", "get-tuple-element", "tuple",
         "dynamic-update-slice", "reverse"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*\S+(?:\[[^\]]*\])?"
                          r"(?:\{[^}]*\})?\s+([\w\-]+)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?(%?[\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"calls=(%?[\w.\-]+)")


def _strip(name: str) -> str:
  return name.lstrip("%")


def categories(hlo_text: str) -> dict[str, str]:
  """Instruction name -> category, for every instruction of the module."""
  bodies: dict[str, list[tuple[str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("{")[0]:
      current = _strip(head.group(1))
      bodies[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      called = _CALLS.search(line)
      bodies[current].append((_strip(m.group(1)), m.group(2),
                              _strip(called.group(1)) if called else ""))

  def opcodes(computation: str, seen=()) -> set[str]:
    ops = set()
    for _, op, called in bodies.get(computation, ()):
      ops.add(op)
      if called and called not in seen:
        ops |= opcodes(called, seen + (computation,))
    return ops

  out = {}
  for instructions in bodies.values():
    for name, op, called in instructions:
      inner = opcodes(called) if op == "fusion" else {op}
      if inner & {"dot", "convolution"} or op == "custom-call" and "dot" in name:
        kind = "dot"
      elif inner & {"scatter", "gather"}:
        kind = "scatter/gather"
      elif inner & {"reduce", "reduce-window"}:
        kind = "reduce"
      elif inner <= _MOVE:
        kind = "copy"
      elif op in ("while", "conditional", "call"):
        kind = "control"
      elif op == "fusion":
        kind = "elementwise"
      else:
        kind = "other"
      out[name] = kind
  return out


def _events(trace_dir: str) -> list[dict]:
  path = next(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"))
  with gzip.open(path) as f:
    return json.load(f)["traceEvents"]


def profile(jitted, *args, runs: int = 1, top: int = 8) -> dict[str, object]:
  """Per-op seconds of `runs` calls of `jitted(*args)` (after a warm-up),
  by category and, per category, the `top` largest instructions with their
  time and calls per run."""
  compiled = jitted.lower(*args).compile()
  kinds = categories(compiled.as_text())
  jax.block_until_ready(jitted(*args))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(runs):
        jax.block_until_ready(jitted(*args))
    events = _events(trace_dir)
  by_op: collections.Counter = collections.Counter()
  calls: collections.Counter = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      by_op[e["name"]] += e["dur"] / 1e6 / runs
      calls[e["name"]] += 1 / runs
  by_kind: collections.Counter = collections.Counter()
  for name, seconds in by_op.items():
    by_kind[kinds[name]] += seconds
  return {
      "op_cpu_s": round(sum(by_op.values()), 6),
      "by_category_s": {k: round(v, 6) for k, v in by_kind.most_common()},
      "top_ops": {
          kind: [(name, round(s, 6), round(calls[name]))
                 for name, s in by_op.most_common() if kinds[name] == kind][:top]
          for kind in by_kind},
      "instructions_seen": len(by_op),
  }


def _train():
  from experiments import perf  # pylint: disable=g-import-not-at-top
  step, state, batch = perf.jax_step(perf.TRAIN_MODEL, perf.BATCH, perf.SEQ,
                                     donate=False)
  return step, (state, batch)


def _smollm2():
  """`bench smollm2`'s PG step: SmolLM2-135M-Instruct, 4 x 512, fp32."""
  from experiments import perf  # pylint: disable=g-import-not-at-top
  from experiments import smollm2_bench  # pylint: disable=g-import-not-at-top
  from mosaic_jax.models import convert  # pylint: disable=g-import-not-at-top
  model = convert.load_model(smollm2_bench.DEFAULT_DIR,
                             dtype=jax.numpy.float32)
  step, state, batch = perf.jax_step(model.cfg, 4, 512, donate=False,
                                     model=model)
  return step, (state, batch)


def _decode():
  """`bench sampler`'s decode call (batch 8, 128 new tokens, greedy).

  Wrapped in a jit of its own: the sampler's call donates the cache, and
  `profile` calls it twice on the same arguments.
  """
  from experiments import perf  # pylint: disable=g-import-not-at-top
  from mosaic_jax import sampling  # pylint: disable=g-import-not-at-top
  from mosaic_jax.models import init_model  # pylint: disable=g-import-not-at-top
  model = init_model(perf.SAMPLER_MODEL, seed=0)
  batch, width, new = 8, 64, 128
  tokens = jax.random.randint(jax.random.key(0), (batch, width), 1,
                              model.cfg.vocab_size)
  mask = jax.numpy.ones((batch, width), jax.numpy.int32)
  config = sampling.SamplingConfig(max_new_tokens=new)
  logits, cache = sampling.prefill(
      model, tokens, mask, sampling.init_cache(model, batch, width + new))
  window = sampling.attention_window(width + new, width + new)
  graphdef, state = nnx.split(model)
  stops = sampling.StopCriteria.create(model.cfg.vocab_size)
  active = jax.numpy.ones((batch,), bool)

  @jax.jit
  def run(state, logits, cache):
    return sampling.DECODE_JIT(graphdef, state, logits, cache,
                               jax.random.key(0), active, stops, config, 1,
                               window)
  return run, (state, logits, cache)


def main(argv: list[str]) -> None:
  what = argv[1] if len(argv) > 1 else "train"
  jitted, args = {"train": _train, "decode": _decode,
                   "smollm2": _smollm2}[what]()
  out = profile(jitted, *args)
  print(json.dumps(out))
  if "--hlo" in argv:  # the HLO line of each instruction listed
    text = jitted.lower(*args).compile().as_text()
    names = {n for rows in out["top_ops"].values() for n, _, _ in rows}
    for line in text.splitlines():
      m = _INSTRUCTION.match(line)
      if m and _strip(m.group(1)) in names:
        print(line.strip()[:400])


if __name__ == "__main__":
  main(sys.argv)
