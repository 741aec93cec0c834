"""SFT step time with LoRA adapters vs full fine-tuning, alternated in one
process.

  python -m experiments.lora_bench [--model DIR] [--batch 2] [--length 128]
      [--rank 16] [--rounds 5]

Loads an HF safetensors directory (default: the fetched SmolLM2-135M-Instruct,
`python -m experiments.fetch smollm2-135m-instruct`), builds one train state
with every weight trained and one with rank-`rank` adapters on every
projection (same base weights), compiles both SFT steps, then times them
alternately for `rounds` rounds (so load drift on a shared machine hits both
alike) and prints one JSON line: median step seconds of each, their ratio,
trained parameter counts, compile seconds and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mosaic_jax import batches
from mosaic_jax.models import convert, lora
from mosaic_jax.train import state as state_lib
from mosaic_jax.train import steps

DEFAULT_MODEL = os.path.expanduser("~/.cache/mosaic_jax/smollm2-135m-instruct")


def _batch(vocab: int, batch: int, length: int) -> batches.SFTBatch:
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  loss_mask = np.zeros((batch, length), np.int32)
  loss_mask[:, length // 4:] = 1
  return batches.SFTBatch(jnp.asarray(tokens), jnp.asarray(loss_mask),
                        jnp.ones((batch, length), jnp.int32))


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=DEFAULT_MODEL)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  opt = state_lib.OptimizerConfig(lr=1e-5, warmup_steps=0, total_steps=100)
  step = steps.make_sft_step(steps.SFTConfig(chunk_size=128))
  states = {}
  for name, rank in (("full", 0), ("lora", args.rank)):
    model = convert.load_model(args.model, dtype=jnp.float32)
    model = lora.apply(model, lora.LoRAConfig(rank=rank, alpha=2.0 * rank))
    states[name] = state_lib.create_train_state(model, opt)
  batch = _batch(states["full"].model().cfg.vocab_size, args.batch,
                 args.length)
  compile_s = {}
  for name in states:
    start = time.perf_counter()
    states[name], m = step(states[name], batch)
    jax.block_until_ready(m)
    compile_s[name] = round(time.perf_counter() - start, 2)
  times = {name: [] for name in states}
  for _ in range(args.rounds):
    for name in states:
      start = time.perf_counter()
      states[name], m = step(states[name], batch)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - start)
  med = {name: statistics.median(t) for name, t in times.items()}
  print(json.dumps({
      "model": args.model, "batch": args.batch, "length": args.length,
      "rank": args.rank, "rounds": args.rounds,
      "median_step_s": {k: round(v, 3) for k, v in med.items()},
      "lora_over_full": round(med["lora"] / med["full"], 3),
      "trained_params": {k: _count(s.params) for k, s in states.items()},
      "optimizer_state_numbers": {k: _count(s.opt_state)
                                  for k, s in states.items()},
      "first_step_s": compile_s,
      "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
      "cpus": os.cpu_count(), "devices": jax.device_count(),
  }))


if __name__ == "__main__":
  main()
