import functools, time, statistics, os, sys
import jax
from experiments import perf
from mosaic_jax.models import decoder
mode = sys.argv[1] if len(sys.argv) > 1 else "unroll"
from mosaic_jax.models import convert
from experiments import smollm2_bench
import jax.numpy as jnp
load = lambda: convert.load_model(smollm2_bench.DEFAULT_DIR, dtype=jnp.float32)
m0 = load(); cfg = m0.cfg
stepA, stateA, batch = perf.jax_step(cfg, 4, 512, donate=False, model=m0)
compiledA = stepA.lower(stateA, batch).compile()
orig = jax.lax.scan
class Lax:  # decoder-local lax with unrolled scans
  def __getattr__(self, k): return getattr(jax.lax, k)
  @staticmethod
  def scan(f, init, xs=None, length=None, **kw):
    kw["unroll"] = True
    return orig(f, init, xs, length, **kw)
class J:
  def __getattr__(self, k): return getattr(jax, k)
  lax = Lax()
decoder.jax = J()
stepB, stateB, _ = perf.jax_step(cfg, 4, 512, donate=False, model=load())
t=time.perf_counter(); compiledB = stepB.lower(stateB, batch).compile(); print("compile B", time.perf_counter()-t)
decoder.jax = jax
sA, mA = compiledA(stateA, batch); sB, mB = compiledB(stateB, batch)
print("loss", float(mA["loss"]), float(mB["loss"]))
la, lb = jax.tree.leaves(sA.params if hasattr(sA,'params') else sA), jax.tree.leaves(sB.params if hasattr(sB,'params') else sB)
import numpy as np
print("max param diff", max(float(np.max(np.abs(np.asarray(a, np.float64)-np.asarray(b, np.float64)))) for a,b in zip(la,lb) if hasattr(a,'dtype') and a.dtype.kind=='f'))
ta, tb = [], []
for r in range(4):
  for fn, st, out in ((compiledA, stateA, ta), (compiledB, stateB, tb)):
    time.sleep(0.2); t=time.perf_counter(); jax.block_until_ready(fn(st, batch)); out.append(time.perf_counter()-t)
print("A", [round(x,3) for x in ta], "B", [round(x,3) for x in tb], "A/B", statistics.median(ta)/statistics.median(tb), os.getloadavg())
