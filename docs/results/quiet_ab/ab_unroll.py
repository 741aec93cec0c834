"""PG step with the decoder's layer scan unrolled vs as is, alternated.

  PYTHONPATH=. python docs/results/quiet_ab/ab_unroll.py [bench|smollm2]

bench: `bench train`'s 51.4M model, 5 rounds; smollm2: the fetched
SmolLM2-135M-Instruct at 4 x 512, 4 rounds. The unrolled step is traced with
the decoder module seeing a `jax.lax.scan` that passes unroll=True.
"""
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import perf
from experiments import smollm2_bench
from mosaic_jax.models import convert
from mosaic_jax.models import decoder

which = sys.argv[1] if len(sys.argv) > 1 else "bench"
if which == "smollm2":
  load = lambda: convert.load_model(smollm2_bench.DEFAULT_DIR, dtype=jnp.float32)
  step = lambda: perf.jax_step((m := load()).cfg, 4, 512, donate=False, model=m)
  rounds = 4
else:
  step = lambda: perf.jax_step(perf.TRAIN_MODEL, perf.BATCH, perf.SEQ,
                               donate=False)
  rounds = 5


class _Lax:
  """jax.lax, except that scan unrolls fully."""

  def __getattr__(self, name):
    return getattr(jax.lax, name)

  @staticmethod
  def scan(f, init, xs=None, length=None, **kw):
    return jax.lax.scan(f, init, xs, length, **dict(kw, unroll=True))


class _Jax:
  lax = _Lax()

  def __getattr__(self, name):
    return getattr(jax, name)


step_a, state_a, batch = step()
compiled_a = step_a.lower(state_a, batch).compile()
decoder.jax = _Jax()
step_b, state_b, _ = step()
start = time.perf_counter()
compiled_b = step_b.lower(state_b, batch).compile()
print("compile unrolled", round(time.perf_counter() - start, 1))
decoder.jax = jax

(new_a, metrics_a), (new_b, metrics_b) = (compiled_a(state_a, batch),
                                          compiled_b(state_b, batch))
print("loss", float(metrics_a["loss"]), float(metrics_b["loss"]))
print("max param diff", max(
    float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    for a, b in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params))))
times = {"scan": [], "unrolled": []}
for _ in range(rounds):
  for name, fn, state in (("scan", compiled_a, state_a),
                          ("unrolled", compiled_b, state_b)):
    time.sleep(0.2)
    start = time.perf_counter()
    jax.block_until_ready(fn(state, batch))
    times[name].append(round(time.perf_counter() - start, 3))
print(times, "scan / unrolled",
      round(statistics.median(times["scan"]) / statistics.median(times["unrolled"]), 3),
      "load", os.getloadavg())
