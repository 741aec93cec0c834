import numpy as np, torch, transformers, jax, jax.numpy as jnp, os
from mosaic_jax import sampling
from mosaic_jax.models import convert
d = os.path.expanduser("~/.cache/mosaic_jax/smollm2-135m-instruct")
hf = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32).eval()
hf.generation_config.eos_token_id = None
model = convert.load_model(d, dtype=jnp.float32)
batch, new = 32, 64
rng = np.random.default_rng(0)
lengths = rng.integers(40, 65, batch); width = int(lengths.max())
ids = rng.integers(1, model.cfg.vocab_size, (batch, width)).astype(np.int32)
mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int32); ids *= mask
cache = sampling.init_cache(model, batch, width + new)
ours = np.asarray(sampling.sample(model, ids, mask, cache, jax.random.key(0), sampling.SamplingConfig(max_new_tokens=new)).tokens)
with torch.no_grad():
  out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
theirs = out.sequences[:, width:].numpy()
scores = torch.stack(out.scores, 1).numpy()  # [B, new, V]
for r in range(batch):
  diff = np.nonzero(ours[r] != theirs[r])[0]
  if len(diff):
    p = diff[0]; s = scores[r, p]; top = np.sort(s)[-2:]
    print(f"row {r}: first diff at {p}/{new}, hf top-2 gap {top[1]-top[0]:.2e}, ours tok {ours[r,p]} hf {theirs[r,p]}, hf logit of ours {s[ours[r,p]]:.5f} vs {s[theirs[r,p]]:.5f}")
print("equal fraction", (ours == theirs).mean())
