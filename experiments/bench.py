"""Micro-benchmarks: `python -m experiments.bench NAME [--repeats=N] [--record]`.

Each benchmark is a function in `BENCHMARKS` that returns a dict of figures;
`main` prints the result as JSON and, with `--record` only, appends a row to
docs/benchmarks.md (date, machine, command, figures), so measured numbers
carry their hardware. Add a benchmark by writing `bench_NAME() -> dict` and
registering it.

Side-by-side figures follow one protocol (`alternate`): both sides run in
this process, alternated round by round; the 1-minute load is read before
and after every round; each side's CPU time (`time.process_time`, every
thread of the process) is reported beside its wall time, and ratios of both;
and `memory_bound_gbps` measures the machine's copy bandwidth in the same
run, so a decode figure is also a share of that bound. A figure measured
under load (loads well above 1 on this 2-core machine) is not a speed claim.
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
from experiments import smollm2_bench
from mosaic_jax import models
from mosaic_jax import pareto
from mosaic_jax import sampling

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed runs after warm-up.")
_RECORD = flags.DEFINE_bool(
    "record", False, "Append the result as a row to docs/benchmarks.md "
    "(default: print it only).")

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


def load() -> float:
  """The 1-minute load average."""
  return round(os.getloadavg()[0], 2)


def memory_bound_gbps(megabytes: int = 256, repeats: int = 5) -> float:
  """Copy bandwidth of this machine now, GB/s: the best of `repeats` copies
  of a `megabytes` float32 array, counting its read and its write."""
  src = np.ones(megabytes * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return round(2 * src.nbytes / best / 1e9, 2)


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
  """(wall s, process CPU s, result) of `fn()` blocked until ready."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - wall, time.process_time() - cpu, out


def alternate(sides: dict[str, Callable[[], object]], rounds: int
              ) -> dict[str, object]:
  """Runs every side once per round, alternating their order, in this
  process; one untimed warm-up round first.

  Returns:
    {"<side>_wall_s", "<side>_cpu_s": medians over rounds, "rounds": [{order,
    load_before, load_after, <side>_wall_s, <side>_cpu_s}], "outputs": {side:
    last result}}.
  """
  names = list(sides)
  outputs = {name: jax.block_until_ready(sides[name]()) for name in names}
  log = []
  for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    row = {"order": ">".join(order), "load_before": load()}
    for name in order:
      wall, cpu, outputs[name] = _timed(sides[name])
      row[f"{name}_wall_s"], row[f"{name}_cpu_s"] = round(wall, 3), round(cpu, 3)
    row["load_after"] = load()
    log.append(row)
  out: dict[str, object] = {}
  for name in names:
    for kind in ("wall", "cpu"):
      out[f"{name}_{kind}_s"] = round(statistics.median(
          row[f"{name}_{kind}_s"] for row in log), 3)
  out["rounds"], out["outputs"] = log, outputs
  return out


def ratios(timed: dict[str, object], slow: str, fast: str) -> dict[str, float]:
  """slow / fast by wall time and by CPU time (medians of `alternate`)."""
  return {f"{slow}_over_{fast}_wall": round(timed[f"{slow}_wall_s"]
                                            / timed[f"{fast}_wall_s"], 2),
          f"{slow}_over_{fast}_cpu": round(timed[f"{slow}_cpu_s"]
                                           / timed[f"{fast}_cpu_s"], 2)}


def report(name: str, figures: dict[str, object]) -> dict[str, object]:
  """Prints the result as JSON; with --record, appends it to
  docs/benchmarks.md."""
  row = {
      "benchmark": name,
      "date": datetime.date.today().isoformat(),
      "machine": machine(),
      "command": "python -m experiments.bench " + " ".join(sys.argv[1:]),
      "figures": figures,
  }
  print(json.dumps(row, indent=2))
  if not _RECORD.value:
    print("(not recorded: pass --record to append this row to "
          f"{BENCHMARKS_MD.name})")
    return row
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
def _sampler_models(directory: str):
  """The same random weights as a transformers model and as our decoder."""
  torch.manual_seed(0)
  hf = transformers.Qwen3ForCausalLM(
      transformers.Qwen3Config(**perf.SAMPLER_MODEL.to_hf()))
  hf.save_pretrained(directory)
  # sdpa: transformers' fastest CPU attention, so the baseline is its best.
  hf = transformers.Qwen3ForCausalLM.from_pretrained(
      directory, attn_implementation="sdpa").eval()
  return hf, models.load_model(directory)


def left_padded_prompts(rng: np.random.Generator, vocab: int, batch: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """[batch, T] int32 random prompts of 40-64 tokens, left-padded with 0, and
  their mask (T the longest); the decode benchmarks' inputs."""
  lengths = rng.integers(40, 65, batch)
  width = int(lengths.max())
  ids = rng.integers(1, vocab, (batch, width)).astype(np.int32)
  mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int32)
  return ids * mask, mask


def bench_sampler() -> dict[str, object]:
  """Greedy decode: this sampler (unrolled layers), its layer-scan path and
  transformers generate, alternated in one process; multi-turn cost.

  Batch 8, prompts of 40-64 tokens (left-padded), 128 new tokens, no stop
  token (every side generates every token). Each round runs every side once
  (`alternate`). The memory bound is a large copy measured before and after;
  `*_bound_share` is the decode floor (weights + used K/V window, read once a
  step) times steps/s over it. Multi-turn: one episode of 8 turns in one
  cache (64-token prompt; each later turn appends a 30-token observation), 32
  tokens per turn; turn k's time is its prefill + decode, and
  `turn8_over_turn1_floor` is the ratio of the two turns' decode floors
  (turn 8 attends to a 530-slot window, turn 1 to 128). Batch 32 is timed
  for our sampler alone, beside its byte floor (weights + window at the
  measured copy bandwidth) and FLOP floor (at the 4096² matmul's rate).
  """
  from experiments import decode_hlo  # pylint: disable=g-import-not-at-top
  # generate takes minutes per run on 2 shared cores: a few rounds only.
  batch, new, rounds = 8, 128, max(1, min(_REPEATS.value, 3))
  bound_before = memory_bound_gbps()
  with tempfile.TemporaryDirectory() as directory:
    hf, model = _sampler_models(directory)
  rng = np.random.default_rng(0)
  ids, mask = left_padded_prompts(rng, perf.SAMPLER_MODEL.vocab_size, batch)
  width = ids.shape[1]

  def ours(layers):
    config = sampling.SamplingConfig(max_new_tokens=new, layers=layers)

    def run():
      cache = sampling.init_cache(model, batch, width + new)
      return sampling.sample(model, ids, mask, cache, jax.random.key(0),
                             config).tokens
    return run

  def theirs():
    with torch.no_grad():
      return hf.generate(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long),
                         do_sample=False, max_new_tokens=new, min_new_tokens=new,
                         pad_token_id=0)[:, width:].numpy()

  timed = alternate({"ours": ours("unrolled"), "scan": ours("scan"),
                     "hf": theirs}, rounds)
  outputs = timed.pop("outputs")
  same_hf = float((np.asarray(outputs["ours"]) == outputs["hf"]).mean())
  same_scan = float((np.asarray(outputs["ours"])
                     == np.asarray(outputs["scan"])).mean())

  turns, turn_new, obs_len = 8, 32, 30
  capacity = width + turns * turn_new + (turns - 1) * obs_len
  observation = rng.integers(1, perf.SAMPLER_MODEL.vocab_size, (batch, obs_len))

  def episode(layers) -> list[float]:
    turn_config = sampling.SamplingConfig(max_new_tokens=turn_new, layers=layers)
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

  # Batch 32, ours only (generate would take minutes a round): the byte
  # floor's share, and the FLOP floor (2 FLOPs per parameter per row, plus
  # attention over the window) at the fp32 matmul rate measured here.
  big = 32
  big_ids, big_mask = np.tile(ids, (big // batch, 1)), np.tile(mask, (big // batch, 1))

  def ours_big():
    cache = sampling.init_cache(model, big, width + new)
    return sampling.sample(model, big_ids, big_mask, cache, jax.random.key(0),
                           sampling.SamplingConfig(max_new_tokens=new)).tokens
  big_s = median_seconds(ours_big, rounds)
  matmul, matmul_flops = perf.matmul_runner()
  peak = matmul_flops / median_seconds(matmul, 3)
  cfg, window = model.cfg, sampling.attention_window(width + new, width + new)
  big_flops = big * (2 * cfg.num_params()
                     + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * window)
  big_floor = decode_hlo.floor_bytes(cfg, big, window)

  episode("unrolled")  # compiles both prefill shapes and the decode loop
  per_turn = np.median([episode("unrolled") for _ in range(rounds)], axis=0)
  bound = round(statistics.median([bound_before, memory_bound_gbps()]), 2)
  floor = decode_hlo.floor_bytes(model.cfg, batch,
                                 sampling.attention_window(width + new, width + new))
  share = lambda side: round(floor * new / timed[f"{side}_wall_s"] / 1e9 / bound, 3)
  # What turn 8 must read more than turn 1 (its longer K/V window), per step.
  turn_floor = lambda index: decode_hlo.floor_bytes(
      model.cfg, batch, sampling.attention_window(index + turn_new, capacity))
  last_index = width + (turns - 1) * (turn_new + obs_len)
  return {
      "model": f"qwen3 {models.count_params(model) / 1e6:.1f}M fp32",
      "batch": batch, "new_tokens": new, "rounds": rounds,
      "ours_tokens_per_s": round(batch * new / timed["ours_wall_s"], 1),
      "scan_tokens_per_s": round(batch * new / timed["scan_wall_s"], 1),
      "hf_generate_tokens_per_s": round(batch * new / timed["hf_wall_s"], 1),
      **ratios(timed, "hf", "ours"), **ratios(timed, "scan", "ours"),
      "memory_bound_gbps": bound,
      "ours_bound_share": share("ours"), "scan_bound_share": share("scan"),
      "greedy_tokens_equal_hf": round(same_hf, 3),
      "greedy_tokens_equal_scan": round(same_scan, 3),
      "b32_ours_tokens_per_s": round(big * new / big_s, 1),
      "b32_bound_share": round(big_floor * new / big_s / 1e9 / bound, 3),
      "b32_byte_floor_ms": round(big_floor / bound / 1e6, 2),
      "b32_flop_floor_ms": round(big_flops / peak * 1e3, 2),
      "b32_step_ms": round(big_s / new * 1e3, 2),
      "matmul_fp32_gflops": round(peak / 1e9, 1),
      "turn1_ms": round(per_turn[0] * 1e3, 1),
      "turn8_ms": round(per_turn[-1] * 1e3, 1),
      "turn8_over_turn1": round(per_turn[-1] / per_turn[0], 2),
      "turn8_over_turn1_floor": round(turn_floor(last_index)
                                      / turn_floor(width), 2),
      "torch_threads": torch.get_num_threads(),
      "loads": [(r["load_before"], r["load_after"]) for r in timed["rounds"]],
      "timings": {k: v for k, v in timed.items() if k != "rounds"},
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
    # Same-weights decode and train step on the fetched SmolLM2 checkpoint.
    "smollm2": lambda: smollm2_bench.bench_smollm2(
        sys.modules[__name__], max(1, min(_REPEATS.value, 3))),
}


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in BENCHMARKS:
    raise app.UsageError(
        f"usage: python -m experiments.bench {{{','.join(BENCHMARKS)}}}")
  report(argv[1], BENCHMARKS[argv[1]]())


if __name__ == "__main__":
  app.run(main)
