"""Training-performance benchmarks: `peak`, `train`, `compile`, `memory`.

Registered in `experiments.bench`. Every measurement runs in a fresh child
process, so XLA flags take effect before the backend starts. The machine this
was written on is 2 CPU cores shared with other jobs, so wall times drift by
2-4x within minutes: `train` therefore times JAX and PyTorch *alternately in
one process* and reports per-round ratios, and `memory` reads XLA's compiled
memory analysis, which does not depend on load at all.

- `peak`: FLOP/s of a jitted 4096² matmul per dtype, with XLA's default CPU
  flags and with `--xla_cpu_use_onednn=true` (on jaxlib 0.10.2 the flag
  compiles the train step to the identical HLO: dots go to YNNPACK).
- `train`: the jitted policy-gradient step (`make_pg_step`) on a
  ~51M-parameter Qwen3-shaped model beside the same step in eager PyTorch with
  transformers' `Qwen3ForCausalLM` (sdpa attention, AdamW, PPO-clip loss on
  token log-probs, masked mean), same batch and sequence, and a 4096² matmul
  (the MFU reference), in one process, round-robin.
- `compile`: lower+compile seconds of the step at 2, 8 and 32 layers.
- `memory`: XLA's compiled memory analysis of the step per remat policy,
  param/compute dtype and donation; the step time of each remat policy, of
  bf16 compute and of one reference log-prob pass relative to the fp32
  remat-none step (alternated in one process); the loss alone with naive
  `[B, T, V]` logits vs the chunked (fused) log-prob path.
"""
import json
import os
import statistics
import subprocess
import sys
import time

from mosaic_jax.models import ModelConfig, RopeConfig

ONEDNN_XLA_FLAGS = "--xla_cpu_use_onednn=true"
_MIB = 1 << 20

# Qwen3-shaped, tied embeddings: 51.4M params (REFERENCE.md's tiny shape,
# scaled up). Sequence 512, batch 4: 2048 tokens per step.
TRAIN_MODEL = ModelConfig(
    family="qwen3", vocab_size=2048, hidden_size=512, intermediate_size=1536,
    num_layers=16, num_heads=8, num_kv_heads=4, head_dim=64,
    rope=RopeConfig(theta=1e6), qk_norm=True, tie_embeddings=True,
    norm_eps=1e-6, max_position_embeddings=4096)
BATCH, SEQ = 4, 512

# `bench sampler`'s model (and `op_profile decode`'s): Qwen3-shaped, 33.6M
# params, a vocabulary large enough that the unembedding is a real read.
SAMPLER_MODEL = ModelConfig(
    family="qwen3", vocab_size=16384, hidden_size=512, intermediate_size=1536,
    num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
    rope=RopeConfig(theta=5e6), qk_norm=True, tie_embeddings=True,
    norm_eps=1e-6, max_position_embeddings=4096)


def flops_per_token(cfg: ModelConfig, seq: int) -> float:
  """Training FLOPs per token: 6N plus attention 12·L·H·hd·T (REFERENCE.md)."""
  return (6 * cfg.num_params()
          + 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq)


def _median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` (which must block) after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _child(call: str, xla_flags: str = "") -> dict:
  """Runs `experiments.perf.<call>` in a fresh process; returns its JSON."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  out = subprocess.run(
      [sys.executable, "-c", f"from experiments import perf; perf.{call}"],
      env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _load() -> str:
  return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------ peak --


def matmul_runner(n: int = 4096, dtype: str = "float32"):
  """One jitted [n, n] @ [n, n] in `dtype` (blocking) and its FLOPs."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x: x @ x)
  return (lambda: matmul(a).block_until_ready()), 2 * n ** 3


def peak_child(n: int = 4096, repeats: int = 5) -> None:
  """Prints `{dtype: GFLOP/s}` of a jitted [n, n] @ [n, n] matmul."""
  out = {}
  for name in ("float32", "bfloat16"):
    run, flops = matmul_runner(n, name)
    out[name] = round(flops / _median_seconds(run, repeats) / 1e9, 1)
  print(json.dumps(out))


def measured_peak() -> dict[str, object]:
  """Matmul GFLOP/s with XLA's default CPU dot and with oneDNN."""
  figures = {"load_before": _load()}
  for label, flags in (("xla_default", ""), ("onednn", ONEDNN_XLA_FLAGS)):
    for dtype, value in _child("peak_child()", flags).items():
      figures[f"{label}_{dtype}_gflops"] = value
  figures["peak_fp32_gflops"] = max(figures["xla_default_float32_gflops"],
                                    figures["onednn_float32_gflops"])
  figures["peak_bf16_gflops"] = max(figures["xla_default_bfloat16_gflops"],
                                    figures["onednn_bfloat16_gflops"])
  return figures


def bench_peak() -> dict[str, object]:
  """The machine's measured matmul FLOP/s: the reference for MFU."""
  return measured_peak()


# ----------------------------------------------------------------- train --


def pg_inputs(cfg: ModelConfig, batch: int, seq: int):
  """A random PG batch: all tokens real, the first quarter is the prompt."""
  import jax.numpy as jnp
  import numpy as np

  from mosaic_jax import batches
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, cfg.vocab_size, (batch, seq)).astype(np.int32)
  loss_mask = np.zeros((batch, seq), np.float32)
  loss_mask[:, seq // 4:] = 1
  return batches.PGBatch(
      tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(loss_mask),
      attention_mask=jnp.ones((batch, seq), jnp.int32),
      advantages=jnp.asarray(rng.normal(size=batch), jnp.float32),
      old_logp=jnp.asarray(-np.log(cfg.vocab_size)
                           + 0.01 * rng.normal(size=(batch, seq)),
                           jnp.float32))


def jax_step(cfg: ModelConfig, batch: int, seq: int, *, donate: bool = True,
             chunk_size: int = 128, microbatch: int = 0, model=None):
  """(step, state, batch) for the PG step of `cfg` (random weights, or
  `model`'s)."""
  from mosaic_jax.models import init_model
  from mosaic_jax.train import state as state_lib
  from mosaic_jax.train import steps
  model = init_model(cfg, seed=0) if model is None else model
  state = state_lib.create_train_state(model, state_lib.OptimizerConfig(lr=1e-5))
  step = steps.make_pg_step(steps.PGConfig(
      chunk_size=chunk_size, donate=donate, microbatch=microbatch))
  return step, state, pg_inputs(cfg, batch, seq)


def _timed(fn) -> tuple[float, float]:
  """(wall, process CPU) seconds of `fn()`, after a pause.

  The pause lets the other runtime's worker threads (OpenMP, XLA's pool) stop
  spinning before the clock starts, so neither is charged for the other.
  """
  time.sleep(0.2)
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def _jax_runner(cfg: ModelConfig, batch: int, seq: int, **step_kwargs):
  """A function that runs one (blocking) JAX PG step, and the PG batch."""
  import jax
  step, state, pg_batch = jax_step(cfg, batch, seq, **step_kwargs)
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], pg_batch)
    jax.block_until_ready(metrics["loss"])

  return run, holder, pg_batch


def torch_runner(cfg: ModelConfig, batch: int, seq: int, device: str = "cpu",
                 model=None):
  """A function that runs the same PG step in eager PyTorch/transformers.

  On "cpu" in fp32 (the `train` comparison); on "cuda" with fp32 weights
  under bf16 autocast and fused AdamW, like the JAX step's fp32 master
  weights and bf16 compute (`experiments.gpu_bench`). `model`: a loaded
  transformers model to train (default: a random Qwen3 of `cfg`).
  """
  import numpy as np
  import torch
  import transformers
  cuda = device == "cuda"
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  if model is None:
    hf_cfg = transformers.Qwen3Config(**{**cfg.to_hf(),
                                         "torch_dtype": "float32"})
    with torch.device(device):
      model = transformers.Qwen3ForCausalLM._from_config(
          hf_cfg, attn_implementation="sdpa")
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95),
                          eps=1e-8, weight_decay=0.0, fused=cuda)
  b = pg_inputs(cfg, batch, seq)
  as_t = lambda x, dtype=None: torch.tensor(np.asarray(x), dtype=dtype,
                                            device=device)
  tokens = as_t(b.tokens, torch.long)
  attention = as_t(b.attention_mask, torch.long)
  mask, old = as_t(b.loss_mask)[:, 1:], as_t(b.old_logp)[:, 1:]
  adv = as_t(b.advantages)[:, None]

  def run():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
      logits = model(input_ids=tokens, attention_mask=attention).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(
        -1, tokens[:, 1:, None])[..., 0]
    ratio = torch.exp(logp - old)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    loss = (per_token * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if cuda:
      torch.cuda.synchronize()

  return run


def train_child(repeats: int = 3) -> None:
  """Prints per-round (wall, CPU) seconds of every runner, round-robin.

  Runners: the JAX fp32 step, the PyTorch step and the MFU reference matmul.
  Each round times each once, so the ratios of one round share the machine's
  load of that minute.
  """
  runners = {"jax": _jax_runner(TRAIN_MODEL, BATCH, SEQ)[0],
             "torch": torch_runner(TRAIN_MODEL, BATCH, SEQ)}
  runners["matmul"], matmul_flops = matmul_runner()
  for run in runners.values():  # compiles, allocates, warms caches
    run()
  rounds = [{name: _timed(run) for name, run in runners.items()}
            for _ in range(repeats)]
  print(json.dumps({"rounds": rounds, "matmul_flops": matmul_flops}))


def bench_train(repeats: int = 3) -> dict[str, object]:
  """JAX PG step vs PyTorch/transformers, alternated in one process.

  `jax_over_torch` is the median over rounds of torch wall / JAX wall.
  MFU: model FLOPs (6N + 12·L·H·hd·T per token) per second over the fp32
  matmul FLOP/s measured in the same round; `*_mfu_wall` uses wall time,
  `*_mfu_cpu` process CPU time (the cycles the process got, so less
  dependent on how much of the shared machine it got).
  """
  tokens = BATCH * SEQ
  step_flops = flops_per_token(TRAIN_MODEL, SEQ) * tokens
  figures = {
      "model": f"qwen3 {TRAIN_MODEL.num_params() / 1e6:.1f}M L16 d512",
      "batch": BATCH, "seq": SEQ, "gflop_per_step": round(step_flops / 1e9),
      "load_before": _load(),
  }
  out = _child(f"train_child({repeats})")
  rounds, matmul_flops = out["rounds"], out["matmul_flops"]
  med = lambda f: round(statistics.median(f(r) for r in rounds), 3)
  wall = lambda name: med(lambda r: r[name][0])
  mfu = lambda name, i: med(lambda r: step_flops / r[name][i]
                            / (matmul_flops / r["matmul"][i]))
  figures.update({
      "rounds": repeats,
      "jax_step_s": wall("jax"), "torch_step_s": wall("torch"),
      "jax_step_cpu_s": med(lambda r: r["jax"][1]),
      "torch_step_cpu_s": med(lambda r: r["torch"][1]),
      "jax_over_torch": med(lambda r: r["torch"][0] / r["jax"][0]),
      "jax_over_torch_cpu": med(lambda r: r["torch"][1] / r["jax"][1]),
      "jax_tokens_per_s": round(tokens / wall("jax"), 1),
      "torch_tokens_per_s": round(tokens / wall("torch"), 1),
      "peak_fp32_gflops_wall": med(lambda r: matmul_flops / r["matmul"][0]
                                   / 1e9),
      "peak_fp32_gflops_per_cpu_s": med(lambda r: matmul_flops
                                        / r["matmul"][1] / 1e9),
      "jax_mfu_wall": mfu("jax", 0), "jax_mfu_cpu": mfu("jax", 1),
      "torch_mfu_wall": mfu("torch", 0), "torch_mfu_cpu": mfu("torch", 1),
      "jax_rounds_wall_s": [round(r["jax"][0], 2) for r in rounds],
      "torch_rounds_wall_s": [round(r["torch"][0], 2) for r in rounds],
      "torch_threads": len(os.sched_getaffinity(0)),
      "load_after": _load(),
  })
  return figures


# --------------------------------------------------------------- compile --


def compile_child(layers: int) -> None:
  """Prints lower and compile seconds of the PG step at `layers` layers."""
  cfg = TRAIN_MODEL.replace(num_layers=layers, hidden_size=256,
                            intermediate_size=768, num_heads=4, num_kv_heads=2)
  step, state, batch = jax_step(cfg, 2, 128)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  print(json.dumps({"lower_s": lowered_at - start,
                    "compile_s": done - lowered_at}))


def bench_compile() -> dict[str, object]:
  """Lower+compile time of the PG step for 2, 8 and 32 scanned layers."""
  figures = {"model": "qwen3 d256 f768 heads 4/2, batch 2 x 128",
             "load_before": _load()}
  for layers in (2, 8, 32):
    out = _child(f"compile_child({layers})")
    figures[f"L{layers}_lower_s"] = round(out["lower_s"], 2)
    figures[f"L{layers}_compile_s"] = round(out["compile_s"], 2)
  figures["L32_over_L2"] = round(
      (figures["L32_lower_s"] + figures["L32_compile_s"])
      / (figures["L2_lower_s"] + figures["L2_compile_s"]), 2)
  return figures


# ---------------------------------------------------------------- memory --

# (remat, param dtype, compute dtype, donate): fp32 with each remat policy,
# bf16 compute over fp32 master weights, bf16 params, and no donation.
_MEMORY_CASES = (
    ("none", "float32", "float32", True),
    ("full", "float32", "float32", True),
    ("dots", "float32", "float32", True),
    ("dots_no_batch", "float32", "float32", True),
    ("none", "float32", "bfloat16", True),
    ("dots_no_batch", "float32", "bfloat16", True),
    ("none", "bfloat16", "bfloat16", True),
    ("none", "float32", "float32", False),
)


def memory_child() -> None:
  """Prints XLA's compiled memory analysis (MiB) of the step per case."""
  out = {}
  for remat, param_dtype, dtype, donate in _MEMORY_CASES:
    cfg = TRAIN_MODEL.replace(remat=remat, param_dtype=param_dtype,
                              dtype=dtype)
    step, state, batch = jax_step(cfg, BATCH, SEQ, donate=donate)
    mem = step.lower(state, batch).compile().memory_analysis()
    short = {"float32": "f32", "bfloat16": "bf16"}
    key = (f"{remat}_p{short[param_dtype]}_c{short[dtype]}"
           f"{'' if donate else '_nodonate'}")
    out[key] = {"temp": mem.temp_size_in_bytes / _MIB,
                "args": mem.argument_size_in_bytes / _MIB,
                "out": mem.output_size_in_bytes / _MIB,
                "alias": mem.alias_size_in_bytes / _MIB}
  print(json.dumps(out))


# Step variants timed against the fp32, remat-none step in `variant_time_child`.
_TIMED_VARIANTS = {
    "none": {}, "dots_no_batch": {"remat": "dots_no_batch"},
    "dots": {"remat": "dots"}, "full": {"remat": "full"},
    "bf16_compute": {"dtype": "bfloat16"},
}


def variant_time_child(rounds: int = 2) -> None:
  """Prints per-round wall seconds of each step variant and of one reference
  log-prob pass (`compute_logprobs`, once per batch), round-robin."""
  from mosaic_jax.train import steps
  runners = {}
  for name, fields in _TIMED_VARIANTS.items():
    runners[name], holder, pg_batch = _jax_runner(
        TRAIN_MODEL.replace(**fields), BATCH, SEQ)
    if name == "none":
      reference_state = holder

  def reference():
    steps.compute_logprobs(
        reference_state[0].graphdef, reference_state[0].params,
        pg_batch.tokens, pg_batch.attention_mask).block_until_ready()

  runners["reference_logprobs"] = reference
  for run in runners.values():
    run()
  print(json.dumps([{name: _timed(run)[0] for name, run in runners.items()}
                    for _ in range(rounds)]))


def logprob_memory_child(batch: int, seq: int, hidden: int, vocab: int,
                         chunk: int) -> None:
  """Prints temp MiB of d(loss)/d(hidden, unembed), naive vs chunked.

  XLA's temp buffers are what the loss needs beyond its inputs and outputs:
  the `[D, V]` unembedding gradient is an output (a parameter gradient, the
  same in both paths), so it is not counted.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mosaic_jax import losses
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(batch, seq, hidden)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(hidden, vocab)) / hidden ** 0.5, jnp.float32)
  tgt = jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(batch, seq)), jnp.float32)

  def naive(h, w):
    return losses.token_logprobs(jnp.einsum("btd,dv->btv", h, w), tgt)

  def fused(h, w):
    return losses.chunked_token_logprobs(h, w, tgt, chunk_size=chunk)

  out, values = {}, {}
  for name, fn in (("naive", naive), ("fused", fused)):
    grad = jax.jit(jax.value_and_grad(
        lambda h, w: jnp.sum(fn(h, w) * weights), (0, 1)))
    out[f"{name}_temp_mib"] = (
        grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes / _MIB)
    values[name] = (jax.jit(fn)(h, w), grad(h, w)[1])
  (logp, (dh, dw)), (logp0, (dh0, dw0)) = values["fused"], values["naive"]
  out["logp_max_abs_diff"] = float(jnp.max(jnp.abs(logp - logp0)))
  out["grad_max_rel_diff"] = max(
      float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
      for a, b in ((dh, dh0), (dw, dw0)))
  print(json.dumps(out))


def bench_memory() -> dict[str, object]:
  """Step memory per remat/dtype/donation; fused vs naive log-prob memory.

  Per case, `device_mib` = arguments + outputs − donated (aliased) bytes +
  XLA temps: the step's peak device memory. `temp_mib` is the activation
  and scratch share of it.
  """
  figures = {"model": f"qwen3 {TRAIN_MODEL.num_params() / 1e6:.1f}M L16 d512, "
                      f"batch {BATCH} x {SEQ}", "load_before": _load()}
  for key, m in _child("memory_child()").items():
    figures[f"{key}_device_mib"] = round(m["args"] + m["out"] - m["alias"]
                                         + m["temp"])
    figures[f"{key}_temp_mib"] = round(m["temp"])
  rounds = _child("variant_time_child()")
  for name in rounds[0]:
    if name != "none":
      figures[f"{name}_time_over_none"] = round(statistics.median(
          r[name] / r["none"] for r in rounds), 2)
  batch, seq, hidden, vocab, chunk = 4, 512, 512, 32768, 64
  out = _child(f"logprob_memory_child({batch}, {seq}, {hidden}, {vocab}, "
               f"{chunk})")
  figures.update({
      "logprob_shape": f"B{batch} T{seq} D{hidden} V{vocab} chunk{chunk}",
      "logprob_chunks": seq // chunk,
      "logprob_naive_temp_mib": round(out["naive_temp_mib"], 1),
      "logprob_fused_temp_mib": round(out["fused_temp_mib"], 1),
      "logprob_memory_factor": round(out["naive_temp_mib"]
                                     / out["fused_temp_mib"], 2),
      "logprob_max_abs_diff": out["logp_max_abs_diff"],
      "logprob_grad_max_rel_diff": f"{out['grad_max_rel_diff']:.1e}",
      "load_after": _load(),
  })
  return figures
