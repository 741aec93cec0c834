"""GPU benchmarks: `python -m experiments.gpu_bench --out=FILE.json`.

Run on an accelerator (the CPU benchmarks are `experiments.bench`). Each
section runs in a fresh child process, so one section's out-of-memory error
or preallocated pool cannot touch the next, and prints one JSON line:

- `matmul`: bf16 [8192, 8192] @ [8192, 8192] in JAX: the measured peak.
- `train_small_jax` / `train_small_torch`: the policy-gradient step
  (`steps.make_pg_step`: PPO-clip loss, AdamW, clipping) on a
  Qwen3-0.6B-shaped model (random weights), fp32 master weights and bf16
  compute, batch 4 x 2048, beside the same step in PyTorch/transformers
  (`Qwen3ForCausalLM`, sdpa attention, fp32 weights under bf16 autocast,
  fused AdamW, eager).
- `train_4b`: the same step on the Qwen3-4B-Thinking architecture with the
  settings of `configs/qwen3_4b_thinking.py` (bf16 params and compute, fp32
  AdamW moments, remat `dots_no_batch`), batch 4 x 4096 in micro-batches of 2.
- `decode_4b` / `decode_4b_hf`: greedy sampling on the same architecture in
  bf16, batch 64, 512-token prompts, 512 new tokens (`sampling.prefill` +
  `sampling.decode`, one while-loop on device), beside transformers'
  `generate` (dynamic cache, sdpa).

MFU counts model FLOPs as `experiments.perf.flops_per_token` does
(6N + 12·L·H·hd·T, attention as the full T x T) against the chip's nominal
dense bf16 peak (`--peak_tflops`, H200/H100 SXM: 989) and against the
measured matmul. Decode is memory-bound, so it is compared with the HBM
bandwidth (`--hbm_tbps`, H200: 4.8): bytes per decode step = the bf16
weights once + the KV-cache window the step reads.

`--scale=cpu` runs every section at toy sizes, to check the script before
spending accelerator time.
"""
import datetime
import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from experiments import perf
from mosaic_jax.models import ModelConfig, RopeConfig
from mosaic_jax.models import presets

_OUT = flags.DEFINE_string("out", "", "Write the results here as JSON.")
_SCALE = flags.DEFINE_enum("scale", "gpu", ["gpu", "cpu"],
                           "gpu: the sizes above; cpu: toy sizes (smoke test).")
_SECTIONS = flags.DEFINE_list(
    "sections", "matmul,train_small_jax,train_small_torch,decode_4b,"
    "decode_4b_hf,train_4b,rl_step_small,rl_step_4b,fate_round_small,"
    "fate_round_4b",
    "Sections to run, in order.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Nominal dense bf16 TFLOP/s.")
_HBM = flags.DEFINE_float("hbm_tbps", 4.8, "Nominal HBM bandwidth, TB/s.")
_DECODE = flags.DEFINE_string(
    "decode", "", "Override the decode sections' batch,prompt,new_tokens.")
_TIMEOUT = flags.DEFINE_integer("section_timeout", 240, "Seconds per section.")
# Not `--record` (experiments.bench's yes/no flag): this one takes a file.
_RECORD = flags.DEFINE_string(
    "record_json", "", "Append the results in this JSON file (written by "
    "--out on the accelerator's machine) as a row of docs/benchmarks.md, "
    "then exit.")

BENCHMARKS_MD = pathlib.Path(__file__).resolve().parent.parent / "docs" / (
    "benchmarks.md")

# Qwen3-0.6B's architecture (its config.json), random weights.
QWEN3_06B = ModelConfig(
    family="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
    num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
    rope=RopeConfig(theta=1e6), qk_norm=True, tie_embeddings=True,
    norm_eps=1e-6, max_position_embeddings=40960)
TOY = ModelConfig(
    family="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    rope=RopeConfig(theta=1e4), qk_norm=True, tie_embeddings=True,
    norm_eps=1e-6, max_position_embeddings=4096)


def _sizes(scale: str) -> dict:
  """The sections' settings: `scale`'s sizes and the flags' chip figures."""
  sizes = default_sizes(scale)
  if _DECODE.value:
    sizes["decode"] = tuple(int(x) for x in _DECODE.value.split(","))
  return sizes | {"peak_tflops": _PEAK.value, "hbm_tbps": _HBM.value}


def default_sizes(scale: str) -> dict:
  if scale == "cpu":
    return dict(matmul=256, small=TOY, small_batch=(2, 64), big=TOY,
                big_batch=(2, 128), big_micro=1, decode=(4, 32, 16),
                rl_small=TOY, rl_shape=(2, 2, 2, 8))
  # rl_shape: tasks, group size, turns, tokens per turn.
  return dict(matmul=8192, small=QWEN3_06B, small_batch=(4, 2048),
              big=presets.QWEN3_4B_THINKING, big_batch=(4, 4096), big_micro=2,
              decode=(64, 512, 512), rl_small=presets.SMOLLM2_135M,
              rl_shape=(16, 4, 6, 128))


def _median(run, repeats: int) -> tuple[float, list[float]]:
  """Median wall seconds of `run()` (which blocks) after one warm-up."""
  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times), [round(first, 2)] + [round(t, 4) for t in times]


# ------------------------------------------------------------- sections --


def section_matmul(sizes: dict) -> dict:
  import jax
  import jax.numpy as jnp
  n = sizes["matmul"]
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  mm = jax.jit(lambda x, y: x @ y)
  seconds, _ = _median(lambda: mm(a, b).block_until_ready(), 10)
  return {"n": n, "bf16_tflops": round(2 * n ** 3 / seconds / 1e12, 1)}


def _jax_train(cfg: ModelConfig, batch: int, seq: int, microbatch: int,
               peak: float) -> dict:
  import jax
  start = time.perf_counter()
  step, state, pg_batch = perf.jax_step(cfg, batch, seq,
                                        microbatch=microbatch)
  init_s = time.perf_counter() - start
  holder, losses = [state], []

  def run():
    holder[0], metrics = step(holder[0], pg_batch)
    losses.append(float(jax.block_until_ready(metrics["loss"])))

  seconds, times = _median(run, 5)
  stats = jax.devices()[0].memory_stats() or {}
  return _train_figures(cfg, batch, seq, seconds, times, peak) | {
      "init_s": round(init_s, 1), "loss_finite": all(map(_finite, losses)),
      "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2 ** 30, 1)}


def _finite(x: float) -> bool:
  return x == x and abs(x) != float("inf")


def _train_figures(cfg, batch, seq, seconds, times, peak: float) -> dict:
  tokens = batch * seq
  flops = perf.flops_per_token(cfg, seq) * tokens
  return {
      "params_b": round(cfg.num_params() / 1e9, 3), "batch": batch, "seq": seq,
      "param_dtype": cfg.param_dtype, "compute_dtype": cfg.dtype,
      "remat": cfg.remat, "step_s": round(seconds, 4),
      "tokens_per_s": round(tokens / seconds), "tflops": round(
          flops / seconds / 1e12, 1),
      "mfu_nominal": round(flops / seconds / (peak * 1e12), 3),
      "first_and_timed_s": times}


def section_train_small_jax(sizes: dict) -> dict:
  cfg = sizes["small"].replace(dtype="bfloat16")
  return _jax_train(cfg, *sizes["small_batch"], microbatch=0,
                    peak=sizes["peak_tflops"])


def section_train_4b(sizes: dict) -> dict:
  cfg = sizes["big"].replace(param_dtype="bfloat16", dtype="bfloat16",
                             remat="dots_no_batch")
  return _jax_train(cfg, *sizes["big_batch"], microbatch=sizes["big_micro"],
                    peak=sizes["peak_tflops"])


def section_train_small_torch(sizes: dict) -> dict:
  import torch
  cfg = sizes["small"]
  batch, seq = sizes["small_batch"]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  seconds, times = _median(perf.torch_runner(cfg, batch, seq, device), 5)
  peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
  # torch_runner computes in bf16 (autocast) on the GPU, fp32 on the CPU.
  compute = "bfloat16" if device == "cuda" else "float32"
  return _train_figures(cfg.replace(dtype=compute), batch, seq, seconds,
                        times, sizes["peak_tflops"]) | {
                            "torch": torch.__version__,
                            "peak_gib": round(peak / 2 ** 30, 1)}


def decode_bytes(cfg: ModelConfig, batch: int, slots: int) -> float:
  """HBM bytes of one decode step: bf16 weights once + `slots` of KV cache."""
  kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
  return 2 * cfg.num_params() + batch * slots * kv_per_token


def section_decode_4b(sizes: dict) -> dict:
  import jax
  import numpy as np

  from mosaic_jax import sampling
  from mosaic_jax.models import init_model
  cfg = sizes["big"].replace(param_dtype="bfloat16", dtype="bfloat16")
  batch, prompt, new = sizes["decode"]
  model = init_model(cfg, seed=0)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, cfg.vocab_size, (batch, prompt)).astype(np.int32)
  mask = np.ones_like(ids)
  config = sampling.SamplingConfig(max_new_tokens=new)
  capacity = prompt + new

  def prefill():
    cache = sampling.init_cache(model, batch, capacity)
    return jax.block_until_ready(sampling.prefill(model, ids, mask, cache))

  def decode_seconds():
    # Timed alone, on a fresh prefill each run (decode donates the cache):
    # prefill+decode minus a separately timed prefill went negative at toy
    # sizes on a loaded CPU.
    logits, cache = prefill()
    start = time.perf_counter()
    jax.block_until_ready(sampling.decode(model, logits, cache,
                                          jax.random.key(0), config).tokens)
    return time.perf_counter() - start

  prefill_s, _ = _median(prefill, 3)
  times = [round(decode_seconds(), 4) for _ in range(4)]  # first compiles
  decode_s = statistics.median(times[1:])
  window = sampling.attention_window(capacity, capacity)
  read = decode_bytes(cfg, batch, window)
  useful = decode_bytes(cfg, batch, prompt + new // 2)
  hbm = sizes["hbm_tbps"] * 1e12
  step_s = decode_s / new
  return {
      "params_b": round(cfg.num_params() / 1e9, 3), "batch": batch,
      "prompt": prompt, "new_tokens": new, "prefill_s": round(prefill_s, 3),
      "prefill_tokens_per_s": round(batch * prompt / prefill_s),
      "decode_s": round(decode_s, 3), "decode_step_ms": round(step_s * 1e3, 2),
      "decode_tokens_per_s": round(batch * new / decode_s),
      "kv_window": window,
      "hbm_tbps_read": round(read / step_s / 1e12, 2),
      "hbm_fraction_read": round(read / step_s / hbm, 3),
      "roofline_tokens_per_s_mean_context": round(batch * hbm / useful),
      "first_and_timed_s": times}


def section_decode_4b_hf(sizes: dict) -> dict:
  import torch
  import transformers
  cfg = sizes["big"]
  batch, prompt, new = sizes["decode"]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen3Config(**{**cfg.to_hf(), "torch_dtype": "bfloat16"})
  with torch.device(device):
    model = transformers.Qwen3ForCausalLM._from_config(
        hf_cfg, attn_implementation="sdpa", torch_dtype=torch.bfloat16).eval()
  ids = torch.randint(1, cfg.vocab_size, (batch, prompt), device=device)

  def run():
    with torch.no_grad():
      model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                     max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    if device == "cuda":
      torch.cuda.synchronize()

  seconds, times = _median(run, 1)
  return {"torch": torch.__version__, "transformers": transformers.__version__,
          "batch": batch, "prompt": prompt, "new_tokens": new,
          "generate_s": round(seconds, 3),
          "tokens_per_s": round(batch * new / seconds),
          "first_and_timed_s": times}


def _rl_model_cfg(cfg: ModelConfig, vocab: int) -> ModelConfig:
  """`cfg`'s shape in bf16 with the tiny tokenizer's vocabulary: random
  weights can only be decoded by a tokenizer they match. The real
  vocabularies' (tied) embedding is left out: 21% of SmolLM2-135M's
  parameters, 10% of Qwen3-4B's."""
  return cfg.replace(vocab_size=vocab, param_dtype="bfloat16", dtype="bfloat16")


def _bench_setup(cfg: ModelConfig, n_tasks: int, group: int, turns: int,
                 tokens_per_turn: int) -> tuple:
  """What the RL-step and FATE-round sections share: the tiny tokenizer,
  the model config at its vocabulary, a fresh train state on a data mesh,
  every 7th built-in task and the rollout config.

  Returns:
    (tokenizer, model config, train state, mesh, tasks, RolloutConfig).
  """
  from mosaic_jax import rollout, sharding
  from mosaic_jax.agent import tokenizer as tokenizer_lib
  from mosaic_jax.envs import tasks
  from mosaic_jax.models import init_model
  from mosaic_jax.train import state as state_lib
  tok = tokenizer_lib.load_tiny_tokenizer()
  cfg = _rl_model_cfg(cfg, len(tok))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  state = state_lib.create_train_state(
      init_model(cfg, seed=0), state_lib.OptimizerConfig(), mesh=mesh)
  task_list = tasks.all_tasks()[::7][:n_tasks]
  config = rollout.RolloutConfig(
      max_turns=turns, max_tokens_per_turn=tokens_per_turn,
      max_total_length=turns * (tokens_per_turn + 96) + 512, group_size=group,
      seed=0, stop_strings=("e",))
  return tok, cfg, state, mesh, task_list, config


def _rl_step(cfg: ModelConfig, n_tasks: int, group: int, turns: int,
             tokens_per_turn: int) -> dict:
  """One MOSAIC RL step, phase by phase: rollout with the built-in
  environments (answers acknowledged so every episode runs `turns` turns,
  as `bench rollout`), the PG batch (π_old recomputed, π_ref log-probs), and
  the PPO update; each phase timed once after a compiling warm-up step."""
  import jax
  import numpy as np

  from experiments import rollout_bench
  from mosaic_jax import rollout
  from mosaic_jax.train import pg as pg_lib
  from mosaic_jax.train import run as run_lib, steps
  tok, cfg, state, mesh, task_list, config = _bench_setup(
      cfg, n_tasks, group, turns, tokens_per_turn)
  reference = run_lib.copy_model(state.model())
  pg = steps.PGConfig(kl_beta=0.04, group_size=group)
  pg_step = steps.make_pg_step(pg)
  rng = np.random.default_rng(0)

  def one_step(state):
    times = {}
    start = time.perf_counter()
    policy = rollout.ModelPolicy(state.merge(state.params), tok)
    out = rollout.rollout(policy, task_list, tok, config,
                          make_env=rollout_bench._keep_going, mesh=mesh)
    times["rollout_s"] = time.perf_counter() - start
    advantages = rng.normal(size=(len(task_list), group)).astype(np.float32)
    start = time.perf_counter()
    batch = pg_lib.rollout_batch(out, advantages, mesh)
    batch, _ = steps.old_logprobs(state, batch, pg)
    batch = steps.reference_logprobs(
        reference, batch, microbatch=pg.microbatch, chunk_size=pg.chunk_size,
        temperature=pg.temperature)
    jax.block_until_ready(batch)
    times["logprobs_s"] = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = pg_step(state, batch)
    jax.block_until_ready(metrics)
    times["update_s"] = time.perf_counter() - start
    return state, out.stats, times

  state, _, _ = one_step(state)  # compiles every phase
  state, stats, times = one_step(state)
  total = sum(times.values())
  episodes = stats["episodes"]
  return {
      "model": f"{cfg.family} {cfg.num_params() / 1e6:.1f}M bf16 (vocab {cfg.vocab_size})",
      "episodes": episodes, "mean_turns": round(stats["turns"] / episodes, 2),
      "generated_tokens": stats["generated_tokens"],
      "step_s": round(total, 3),
      "episodes_per_s": round(episodes / total, 3),
      "generated_tokens_per_s": round(stats["generated_tokens"] / total, 1),
      **{k.replace("_s", "_share"): round(v / total, 3) for k, v in times.items()},
      **{k: round(v, 3) for k, v in times.items()},
      # Host time inside the rollout is device idle time (the sampler waits
      # for the environments' steps).
      "rollout_device_idle_share": round(stats["host_s"] / stats["wall_s"], 3),
  }


def _fate_round(cfg: ModelConfig, n_tasks: int, group: int, turns: int,
                tokens_per_turn: int) -> dict:
  """One FATE round, phase by phase: mining + K repairs each + scoring
  (`fate.run_round`, real environments), one SFT step on the replay buffer
  (skipped when no repair was kept: a random model rarely beats its own
  failure), and one PFPO step (a rollout, `fate.pg_batch`, the update);
  timed after a compiling warm-up round."""
  import jax
  import numpy as np

  from mosaic_jax import rollout, sharding
  from mosaic_jax.methods import fate as fate_lib
  from mosaic_jax.train import steps
  tok, cfg, state, mesh, task_list, config = _bench_setup(
      cfg, n_tasks, group, turns, tokens_per_turn)
  fcfg = fate_lib.FateConfig(num_candidates=2,
                             prompt_extra_tokens=turns * tokens_per_turn)
  sft_step = steps.make_sft_step(steps.SFTConfig())
  pg_step = steps.make_pg_step(steps.PGConfig(group_size=group))
  buffer = fate_lib.ReplayBuffer(64)

  def one_round(state, index):
    times, stats = {}, {}
    start = time.perf_counter()
    policy = rollout.ModelPolicy(state.merge(state.params), tok)
    result = fate_lib.run_round(policy, task_list, tok, config, fcfg, buffer,
                                round_index=index)
    times["mine_and_repair_s"] = time.perf_counter() - start
    stats.update(result.stats)
    if len(buffer):
      start = time.perf_counter()
      batch, _ = fate_lib.sft_batch(list(buffer.entries), tok, "task",
                                    rows=8, length=config.max_total_length)
      state, metrics = sft_step(state, sharding.shard_batch(batch, mesh))
      jax.block_until_ready(metrics)
      times["sft_s"] = time.perf_counter() - start
    start = time.perf_counter()
    out = rollout.rollout(rollout.ModelPolicy(state.merge(state.params), tok),
                          task_list, tok, config, mesh=mesh)
    batch, _ = fate_lib.pg_batch(out, fcfg)
    state, metrics = pg_step(state, sharding.shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
    times["pfpo_s"] = time.perf_counter() - start
    stats["pfpo_device_idle_share"] = round(
        out.stats["host_s"] / out.stats["wall_s"], 3)
    return state, stats, times

  state, _, _ = one_round(state, 0)  # compiles every phase
  state, stats, times = one_round(state, 1)
  total = sum(times.values())
  return {
      "model": f"{cfg.family} {cfg.num_params() / 1e6:.1f}M bf16 (vocab {cfg.vocab_size})",
      "round_s": round(total, 3),
      "episodes": stats["episodes"], "failures": stats["failures"],
      "candidates": stats.get("candidates", 0), "kept": stats.get("kept", 0),
      "sft_step": "sft_s" in times,
      **{k.replace("_s", "_share"): round(v / total, 3) for k, v in times.items()},
      **{k: round(v, 3) for k, v in times.items()},
      "pfpo_device_idle_share": stats["pfpo_device_idle_share"],
  }


def section_fate_round_small(sizes: dict) -> dict:
  """A FATE round on a SmolLM2-135M-shaped model."""
  return _fate_round(sizes["rl_small"], *sizes["rl_shape"])


def section_fate_round_4b(sizes: dict) -> dict:
  """A FATE round on a Qwen3-4B-shaped model."""
  return _fate_round(sizes["big"], *sizes["rl_shape"])


def section_rl_step_small(sizes: dict) -> dict:
  """A MOSAIC RL step on a SmolLM2-135M-shaped model."""
  return _rl_step(sizes["rl_small"], *sizes["rl_shape"])


def section_rl_step_4b(sizes: dict) -> dict:
  """A MOSAIC RL step on a Qwen3-4B-shaped model."""
  return _rl_step(sizes["big"], *sizes["rl_shape"])


def run_section(name: str, scale: str) -> None:
  """Child entry point: runs one section, prints its figures as JSON."""
  if "torch" in name or "hf" in name:
    # The PyTorch sections build their inputs with JAX on the host: a JAX
    # GPU client would preallocate most of the card's memory.
    import jax
    jax.config.update("jax_platforms", "cpu")
  figures = globals()[f"section_{name}"](_sizes(scale))
  print(json.dumps(figures))


# ----------------------------------------------------------------- main --


def _child(name: str, scale: str, argv: list[str]) -> dict:
  code = ("import sys; from absl import flags; "
          "from experiments import gpu_bench; "
          f"flags.FLAGS(sys.argv); gpu_bench.run_section({name!r}, {scale!r})")
  start = time.perf_counter()
  try:
    done = subprocess.run([sys.executable, "-c", code, *argv[1:]],
                          capture_output=True, text=True,
                          timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {_TIMEOUT.value} s"}
  wall = round(time.perf_counter() - start, 1)
  lines = done.stdout.strip().splitlines()
  if done.returncode or not lines:
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    return {"error": f"exit {done.returncode}: {tail[-600:]}", "wall_s": wall}
  return json.loads(lines[-1]) | {"wall_s": wall}


def _environment() -> dict:
  import jax
  import flax
  import optax
  out = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
         "flax": flax.__version__, "optax": optax.__version__,
         "devices": [d.device_kind for d in jax.devices()]}
  try:
    out["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
         "clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  return out


def record(path: str, md: pathlib.Path = BENCHMARKS_MD) -> None:
  """Appends `path`'s results as one row of the benchmarks table `md`."""
  results = json.loads(pathlib.Path(path).read_text())
  env = results["environment"]
  cells = []
  for name, figures in results["sections"].items():
    inner = ", ".join(f"{k}={v}" for k, v in figures.items()
                      if k not in ("device", "first_and_timed_s"))
    cells.append(f"**{name}**: {inner}")
  machine = (f"{env.get('nvidia_smi') or env['devices'][0]}; jax {env['jax']}, "
             f"flax {env['flax']}")
  with md.open("a") as f:
    f.write(f"| {env['date']} | {machine} | `python -m experiments.gpu_bench` "
            f"| {'; '.join(cells)} |\n")


def main(argv: list[str]) -> None:
  if _RECORD.value:
    record(_RECORD.value)
    return
  results = {"environment": _environment(), "sections": {}}
  print(json.dumps(results["environment"]), flush=True)
  for name in _SECTIONS.value:
    figures = _child(name, _SCALE.value, sys.argv)
    results["sections"][name] = figures
    print(json.dumps({name: figures}), flush=True)
    if _OUT.value:  # after every section, so a killed run keeps the rest
      pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  app.run(main)
