"""Micro-benchmarks: `python -m experiments.bench NAME [--repeats=N]`.

Each benchmark is a function in `BENCHMARKS` that returns a dict of figures;
`main` prints the result as JSON and appends a row to docs/benchmarks.md
(date, machine, command, figures), so measured numbers carry their hardware.
Add a benchmark by writing `bench_NAME() -> dict` and registering it.
"""
from collections.abc import Callable
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from experiments import load_memory
from experiments import perf
from experiments import rollout_bench
from experiments import rss_bench
from mosaic_jax import models
from mosaic_jax import pareto
from mosaic_jax import sampling

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs after warm-up.")

BENCHMARKS_MD = pathlib.Path(__file__).resolve().parent.parent / "docs" / (
    "benchmarks.md")
_HEADER = ("# Benchmarks\n\nAppended by `python -m experiments.bench NAME`; "
           "times are medians after warm-up.\n\n"
           "| date | machine | command | figures |\n|---|---|---|---|\n")


def machine() -> str:
  """CPU model, usable cores, accelerator and load (the CPU may be shared)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0))
  devices = jax.devices()
  return (f"{model}, {cores} cores, {len(devices)}× {devices[0].device_kind}, "
          f"load {os.getloadavg()[0]:.1f}")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (blocked until ready) after one warm-up."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _seconds(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def report(name: str, figures: dict[str, object]) -> dict[str, object]:
  """Prints the result as JSON and appends it to docs/benchmarks.md."""
  row = {
      "benchmark": name,
      "date": datetime.date.today().isoformat(),
      "machine": machine(),
      "command": "python -m experiments.bench " + " ".join(sys.argv[1:]),
      "figures": figures,
  }
  print(json.dumps(row, indent=2))
  if not BENCHMARKS_MD.exists():
    BENCHMARKS_MD.write_text(_HEADER)
  cells = ", ".join(f"{k}={v}" for k, v in figures.items())
  with BENCHMARKS_MD.open("a") as f:
    f.write(f"| {row['date']} | {row['machine']} | `{row['command']}` "
            f"| {cells} |\n")
  return row


def bench_pareto() -> dict[str, object]:
  """Jitted non-dominated sort: one group G=1024, M=4; vmapped 64×16×4."""
  rng = np.random.default_rng(0)
  sort = jax.jit(pareto.non_dominated_sort)
  sort_groups = jax.jit(jax.vmap(pareto.non_dominated_sort))
  z_normal = jnp.asarray(rng.normal(size=(1024, 4)), jnp.float32)
  # Three-level grades, as verifiers give: many ties and duplicates.
  z_grades = jnp.asarray(rng.choice([0.0, 0.5, 1.0], (1024, 4)), jnp.float32)
  # Worst case for peeling: a chain, one candidate per front.
  z_chain = jnp.tile(jnp.arange(1024, dtype=jnp.float32)[:, None], (1, 4))
  z_groups = jnp.asarray(rng.normal(size=(64, 16, 4)), jnp.float32)
  repeats = _REPEATS.value
  figures = {}
  for label, z in [("normal", z_normal), ("grades", z_grades),
                   ("chain", z_chain)]:
    seconds = median_seconds(lambda z=z: sort(z), repeats)
    fronts = int(jnp.max(sort(z))) + 1
    figures[f"sort_G1024_M4_{label}_ms"] = round(seconds * 1e3, 3)
    figures[f"sort_G1024_M4_{label}_fronts"] = fronts
  seconds = median_seconds(lambda: sort_groups(z_groups), repeats)
  figures["sort_vmap_B64_G16_M4_ms"] = round(seconds * 1e3, 3)
  return figures


# A ~34M-parameter Qwen3-architecture model (tied embeddings, q/k norm, GQA).
_SAMPLER_MODEL = dict(vocab_size=16384, hidden_size=512, intermediate_size=1536,
                      num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=64, rope_theta=5e6,
                      tie_word_embeddings=True, max_position_embeddings=4096)


def _sampler_models(directory: str):
  """The same random weights as a transformers model and as our decoder."""
  torch.manual_seed(0)
  hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_SAMPLER_MODEL))
  hf.save_pretrained(directory)
  # sdpa: transformers' fastest CPU attention, so the baseline is its best.
  hf = transformers.Qwen3ForCausalLM.from_pretrained(
      directory, attn_implementation="sdpa").eval()
  return hf, models.from_pretrained(directory)


def bench_sampler() -> dict[str, object]:
  """Greedy tokens/s, this sampler vs transformers generate; multi-turn cost.

  Batch 8, prompts of 40-64 tokens (left-padded), 128 new tokens, no stop
  token (both generate every token). Multi-turn: one episode of 8 turns in
  one cache (64-token prompt; each later turn appends a 30-token observation);
  32 tokens per turn; turn k's time is its prefill + decode.
  """
  # generate takes minutes per run on 2 shared cores: a few repeats only.
  batch, new, repeats = 8, 128, max(1, min(_REPEATS.value, 3))
  with tempfile.TemporaryDirectory() as directory:
    hf, model = _sampler_models(directory)
  rng = np.random.default_rng(0)
  lengths = rng.integers(40, 65, batch)
  width = int(lengths.max())
  ids = rng.integers(1, _SAMPLER_MODEL["vocab_size"], (batch, width)).astype(np.int32)
  mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int32)
  ids *= mask
  config = sampling.SamplingConfig(max_new_tokens=new)

  def ours():
    cache = sampling.init_cache(model, batch, width + new)
    return sampling.sample(model, ids, mask, cache, jax.random.key(0), config).tokens

  def theirs():
    with torch.no_grad():
      return hf.generate(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long),
                         do_sample=False, max_new_tokens=new, min_new_tokens=new,
                         pad_token_id=0)

  ours_s = median_seconds(ours, repeats)
  # The warm-up run of generate doubles as the token-equality check.
  same = (np.asarray(ours()) == theirs()[:, width:].numpy()).mean()
  theirs_s = statistics.median(_seconds(theirs) for _ in range(repeats))

  turns, turn_new, obs_len = 8, 32, 30
  capacity = width + turns * turn_new + (turns - 1) * obs_len
  turn_config = sampling.SamplingConfig(max_new_tokens=turn_new)
  observation = rng.integers(1, _SAMPLER_MODEL["vocab_size"], (batch, obs_len))

  def episode() -> list[float]:
    times, cache = [], sampling.init_cache(model, batch, capacity)
    tokens, tokens_mask = ids, mask
    for turn in range(turns):
      start = time.perf_counter()
      out = jax.block_until_ready(sampling.sample(
          model, tokens, tokens_mask, cache, jax.random.key(turn), turn_config))
      times.append(time.perf_counter() - start)
      cache, tokens = out.cache, observation
      tokens_mask = np.ones_like(observation)
    return times

  episode()  # compiles both prefill shapes and the decode loop
  per_turn = np.median([episode() for _ in range(repeats)], axis=0)
  return {
      "model": f"qwen3 {models.count_params(model) / 1e6:.1f}M fp32",
      "batch": batch, "new_tokens": new,
      "ours_tokens_per_s": round(batch * new / ours_s, 1),
      "hf_generate_tokens_per_s": round(batch * new / theirs_s, 1),
      "speedup": round(theirs_s / ours_s, 2),
      "greedy_tokens_equal_fraction": round(float(same), 3),
      "turn1_ms": round(per_turn[0] * 1e3, 1),
      "turn8_ms": round(per_turn[-1] * 1e3, 1),
      "turn8_over_turn1": round(per_turn[-1] / per_turn[0], 2),
      "torch_threads": torch.get_num_threads(),
  }


BENCHMARKS: dict[str, Callable[[], dict[str, object]]] = {
    "pareto": bench_pareto,
    "load": load_memory.bench_load,
    "sampler": bench_sampler,
    "rollout": rollout_bench.bench_rollout,
    "peak": perf.bench_peak,
    "train": perf.bench_train,
    "compile": perf.bench_compile,
    "memory": perf.bench_memory,
    "rss": rss_bench.bench_rss,
}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(
        f"usage: python -m experiments.bench {{{','.join(BENCHMARKS)}}}")
  report(argv[1], BENCHMARKS[argv[1]]())


if __name__ == "__main__":
  app.run(main)
