"""Peak host memory of loading a checkpoint, with and without a mesh.

`bench_load` (registered as `python -m experiments.bench load`) writes a
~200 MB random fp32 checkpoint, then loads it in a fresh process per mode, each
with 8 simulated CPU devices, and reports peak RSS:

- `mesh`: `load_model(path, mesh=(1, 8, 1))`, each shard read straight
  from the memory-mapped file into its device buffer;
- `no_mesh`: `load_model(path)` onto one device;
- `load_then_shard`: the naive path, load whole then `shard_params`.

On a CPU the devices' buffers are host memory, so every mode ends holding the
model once (~checkpoint size); what differs is the transient extra copy. RSS
also counts the checkpoint's memory-mapped pages once read, so peak anonymous
memory (sampled from /proc every 2 ms) is reported beside ru_maxrss. Figures
are MiB; `rss_before` is the RSS after imports and backend start-up.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading

from mosaic_jax.models import ModelConfig, RopeConfig

# Qwen3-shaped, fp32, untied: 49.3 M params = 197 MB (188 MiB).
CONFIG = ModelConfig(
    family="qwen3", vocab_size=8192, hidden_size=512, intermediate_size=1536,
    num_layers=13, num_heads=8, num_kv_heads=4, head_dim=64,
    rope=RopeConfig(theta=1e6), qk_norm=True, norm_eps=1e-6)
MODES = ("mesh", "no_mesh", "load_then_shard")
_MIB = 1 << 20


def write_checkpoint(path: str) -> None:
  from mosaic_jax import models
  models.save_pretrained(models.init_model(CONFIG, seed=0), path)


def _status_kb(field: str) -> int:
  """A kB figure of /proc/self/status (VmRSS, RssAnon, ...)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(path: str, mode: str) -> None:
  """Loads `path` in this fresh process and prints its memory figures as JSON."""
  import jax
  from flax import nnx

  from mosaic_jax import models, sharding
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  base_rss_kb = _status_kb("VmRSS")
  base_anon_kb = _status_kb("RssAnon")
  peak_anon_kb = [base_anon_kb]
  done = threading.Event()

  def sample():
    while not done.wait(0.002):
      peak_anon_kb[0] = max(peak_anon_kb[0], _status_kb("RssAnon"))

  sampler = threading.Thread(target=sample)
  sampler.start()
  if mode == "mesh":
    model = models.load_model(path, mesh=mesh)
  elif mode == "no_mesh":
    model = models.load_model(path)
  else:
    model = sharding.shard_params(models.load_model(path), mesh)
  jax.block_until_ready(nnx.state(model))
  done.set()
  sampler.join()
  peak_anon_kb[0] = max(peak_anon_kb[0], _status_kb("RssAnon"))
  print(json.dumps({
      "rss_before_mib": base_rss_kb // 1024,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
      "peak_anon_delta_mib": (peak_anon_kb[0] - base_anon_kb) // 1024,
  }))


def bench_load() -> dict[str, object]:
  """Peak RSS of loading a ~200 MB checkpoint per mode (fresh process each)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  run = lambda code, *args: subprocess.run(
      [sys.executable, "-c", code, *args], env=env, check=True,
      capture_output=True, text=True).stdout
  figures: dict[str, object] = {}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    run("import sys; from experiments import load_memory as m; "
        "m.write_checkpoint(sys.argv[1])", path)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    figures["checkpoint_mib"] = size // _MIB
    for mode in MODES:
      out = run("import sys; from experiments import load_memory as m; "
                "m.measure(sys.argv[1], sys.argv[2])", path, mode)
      for key, value in json.loads(out.strip().splitlines()[-1]).items():
        figures[f"{mode}_{key}"] = value
  figures["devices"] = "8 simulated CPU"
  return figures
