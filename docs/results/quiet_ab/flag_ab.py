import os, sys, time, statistics, json
import jax, jax.numpy as jnp, numpy as np
from mosaic_jax import sampling
from mosaic_jax.models import init_model, ModelConfig, RopeConfig
batch = int(sys.argv[1]); new = 128
cfg = ModelConfig(family="qwen3", vocab_size=16384, hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, rope=RopeConfig(theta=5e6), qk_norm=True, tie_embeddings=True, norm_eps=1e-6, max_position_embeddings=4096)
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
print(json.dumps({"flags": os.environ.get("XLA_FLAGS",""), "wall": statistics.median(x for x,_ in ts), "cpu": statistics.median(y for _,y in ts), "tok": int(np.asarray(t).astype(np.int64).sum())}))
