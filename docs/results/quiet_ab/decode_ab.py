import os, sys, time, statistics, json
import jax, jax.numpy as jnp, numpy as np
from mosaic_jax import sampling
from mosaic_jax.models import init_model, ModelConfig, RopeConfig, decoder
# python decode_ab.py BATCH dot|reduce; XLA flags from the environment (XLA_FLAGS).
batch = int(sys.argv[1]); mode = sys.argv[2]; new = 128
cfg = ModelConfig(family="qwen3", vocab_size=16384, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, rope=RopeConfig(theta=5e6), qk_norm=True, tie_embeddings=True, norm_eps=1e-6, max_position_embeddings=4096)
orig = decoder._window_attention
def reduce_attention(cfg, q, k, v, q_slot, k_valid):
  b, t, n, hd = q.shape
  kh = cfg.num_kv_heads; groups = n // kh
  qr = q.reshape(b, t, kh, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * groups, hd)
  scores = jnp.sum(qr[:, :, :, None, :].astype(jnp.float32) * k[:, :, None, :, :], axis=-1) * hd ** -0.5
  slot = jnp.repeat(q_slot, groups)
  visible = ((jnp.arange(k.shape[2])[None, :] <= slot[:, None])[None, None] & k_valid[:, None, None, :])
  scores = jnp.where(visible, scores, decoder._MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.sum(probs[..., None] * v[:, :, None, :, :], axis=3)
  return out.reshape(b, kh, t, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, t, n, hd)
if mode == "reduce":
  decoder._window_attention = reduce_attention
model = init_model(cfg, seed=0)
width=64
ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, width)).astype(np.int32)
mask = np.ones_like(ids)
config = sampling.SamplingConfig(max_new_tokens=new)
def run():
  cache = sampling.init_cache(model, batch, width + new)
  return jax.block_until_ready(sampling.sample(model, ids, mask, cache, jax.random.key(0), config).tokens)
t = run(); ts=[]
for _ in range(3):
  s=time.perf_counter(); c=time.process_time(); run(); ts.append((time.perf_counter()-s, time.process_time()-c))
print(json.dumps({"mode": mode, "flags": os.environ.get("XLA_FLAGS", ""), "batch": batch, "wall": round(statistics.median(x for x,_ in ts),3), "cpu": round(statistics.median(y for _,y in ts),3), "tok": int(np.asarray(t).astype(np.int64).sum())}))
