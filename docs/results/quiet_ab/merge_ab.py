import time, statistics, jax, jax.numpy as jnp, numpy as np
L, D, F, N, K, H, B = 8, 512, 1536, 8, 4, 64, 8
r = np.random.default_rng(0)
mk = lambda *s: jnp.asarray(r.normal(size=s).astype(np.float32) * 0.02)
sep = [dict(q=mk(D, N*H), k=mk(D, K*H), v=mk(D, K*H), o=mk(N*H, D), g=mk(D, F), u=mk(D, F), d=mk(F, D)) for _ in range(L)]
mer = [dict(qkv=jnp.concatenate([p["q"], p["k"], p["v"]], 1), o=p["o"], gu=jnp.concatenate([p["g"], p["u"]], 1), d=p["d"]) for p in sep]
def layer_sep(x, p):
  q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
  a = (q[:, :K*H] + k + v)
  x = x + jnp.concatenate([a, a], 1) @ p["o"]
  h = jax.nn.silu(x @ p["g"]) * (x @ p["u"])
  return x + h @ p["d"]
def layer_mer(x, p):
  qkv = x @ p["qkv"]
  q, k, v = qkv[:, :N*H], qkv[:, N*H:N*H+K*H], qkv[:, N*H+K*H:]
  a = (q[:, :K*H] + k + v)
  x = x + jnp.concatenate([a, a], 1) @ p["o"]
  gu = x @ p["gu"]
  h = jax.nn.silu(gu[:, :F]) * gu[:, F:]
  return x + h @ p["d"]
def make(layer, params):
  @jax.jit
  def run(params, x):
    def body(i, x):
      for p in params: x = layer(x, p)
      return x * 0.5
    return jax.lax.fori_loop(0, 128, body, x)
  return lambda: jax.block_until_ready(run(params, jnp.ones((B, D))))
fs = {"sep": make(layer_sep, sep), "mer": make(layer_mer, mer)}
for f in fs.values(): f()
t = {k: [] for k in fs}
for _ in range(5):
  for k, f in fs.items():
    s = time.perf_counter(); f(); t[k].append(time.perf_counter() - s)
print({k: round(statistics.median(v) * 1e3 / 128, 3) for k, v in t.items()}, "ms/step")
