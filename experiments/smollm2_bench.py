"""`bench smollm2`: this codebase against transformers on SmolLM2-135M-Instruct.

Registered in `experiments.bench` (issue #23 item 8). Needs the fetched
checkpoint (`python -m experiments.fetch smollm2-135m-instruct`). Both
sides load the same safetensors and run in this process, alternated round by
round (`bench.alternate`), with loads, CPU times and the copy bound of the
same run:

- decode: greedy, batch 32, prompts of 40-64 random tokens (left-padded), 64
  new tokens, no stop token: our sampler vs transformers `generate` (sdpa).
  `decode_bound_share` is the decode floor (weights + used K/V window, read
  once a step) times steps/s over the measured copy bandwidth.
- train: the PPO-clip policy-gradient step with AdamW at 4 x 512 tokens, fp32:
  ours with every weight trained, ours with rank-16 LoRA adapters on every
  projection, and transformers' `LlamaForCausalLM` (sdpa, eager) with every
  weight trained; MFU against a 4096² fp32 matmul timed in the same rounds.
"""
from __future__ import annotations

import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_DIR = os.path.expanduser("~/.cache/mosaic_jax/smollm2-135m-instruct")


def _decode(bench, hf, model, rounds: int, batch: int, new: int
            ) -> dict[str, object]:
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import decode_hlo  # pylint: disable=g-import-not-at-top
  from mosaic_jax import sampling  # pylint: disable=g-import-not-at-top
  ids, mask = bench.left_padded_prompts(np.random.default_rng(0),
                                        model.cfg.vocab_size, batch)
  width = ids.shape[1]
  config = sampling.SamplingConfig(max_new_tokens=new)

  def ours():
    cache = sampling.init_cache(model, batch, width + new)
    return sampling.sample(model, ids, mask, cache, jax.random.key(0),
                           config).tokens

  def theirs():
    with torch.no_grad():
      return hf.generate(torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long),
                         do_sample=False, max_new_tokens=new,
                         min_new_tokens=new, pad_token_id=0)[:, width:].numpy()

  bound_before = bench.memory_bound_gbps()
  timed = bench.alternate({"ours": ours, "hf": theirs}, rounds)
  outputs = timed.pop("outputs")
  bound = round(statistics.median([bound_before, bench.memory_bound_gbps()]), 2)
  floor = decode_hlo.floor_bytes(
      model.cfg, batch, sampling.attention_window(width + new, width + new))
  share = lambda side: round(floor * new / timed[f"{side}_wall_s"] / 1e9 / bound, 3)
  return {
      "decode_batch": batch, "decode_new_tokens": new,
      "decode_ours_tokens_per_s": round(batch * new / timed["ours_wall_s"], 1),
      "decode_hf_tokens_per_s": round(batch * new / timed["hf_wall_s"], 1),
      **{f"decode_{k}": v for k, v in bench.ratios(timed, "hf", "ours").items()},
      "memory_bound_gbps": bound,
      "decode_floor_mb_per_step": round(floor / 1e6, 1),
      "decode_bound_share": share("ours"),
      "decode_hf_bound_share": share("hf"),
      "decode_greedy_tokens_equal_hf": round(float(
          (np.asarray(outputs["ours"]) == outputs["hf"]).mean()), 3),
      "decode_loads": [(r["load_before"], r["load_after"])
                       for r in timed["rounds"]],
      "decode_timings": {k: v for k, v in timed.items() if k != "rounds"},
  }


def _train(bench, directory: str, hf, full, rounds: int, batch: int, seq: int
           ) -> dict[str, object]:
  """`full`: our loaded model (trained in place; decode is done with it)."""
  from experiments import perf  # pylint: disable=g-import-not-at-top
  from mosaic_jax.models import convert, lora  # pylint: disable=g-import-not-at-top
  cfg = full.cfg
  adapted = lora.apply(convert.load_model(directory, dtype=jnp.float32),
                       lora.LoRAConfig(rank=16, alpha=32.0))
  matmul, matmul_flops = perf.matmul_runner()
  sides = {}
  for name, model in (("ours", full), ("ours_lora", adapted)):
    step, state, pg_batch = perf.jax_step(cfg, batch, seq, model=model)
    holder = [state]

    def run(step=step, holder=holder, pg_batch=pg_batch):
      holder[0], metrics = step(holder[0], pg_batch)
      return metrics["loss"]
    sides[name] = run
  sides["torch"] = perf.torch_runner(cfg, batch, seq, model=hf.train())
  sides["matmul"] = matmul
  timed = bench.alternate(sides, rounds)
  timed.pop("outputs")
  step_flops = perf.flops_per_token(cfg, seq) * batch * seq
  peak_wall = matmul_flops / timed["matmul_wall_s"]
  peak_cpu = matmul_flops / timed["matmul_cpu_s"]
  mfu = lambda side, kind, peak: round(
      step_flops / timed[f"{side}_{kind}_s"] / peak, 3)
  return {
      "train_batch": batch, "train_seq": seq,
      "train_gflop_per_step": round(step_flops / 1e9),
      "train_ours_step_s": timed["ours_wall_s"],
      "train_ours_lora_step_s": timed["ours_lora_wall_s"],
      "train_torch_step_s": timed["torch_wall_s"],
      **{f"train_{k}": v for k, v in bench.ratios(timed, "torch", "ours").items()},
      **{f"train_{k}": v
         for k, v in bench.ratios(timed, "torch", "ours_lora").items()},
      "peak_fp32_gflops_wall": round(peak_wall / 1e9, 1),
      "train_ours_mfu_wall": mfu("ours", "wall", peak_wall),
      "train_ours_mfu_cpu": mfu("ours", "cpu", peak_cpu),
      "train_torch_mfu_wall": mfu("torch", "wall", peak_wall),
      "train_torch_mfu_cpu": mfu("torch", "cpu", peak_cpu),
      "train_loads": [(r["load_before"], r["load_after"])
                      for r in timed["rounds"]],
      "train_timings": {k: v for k, v in timed.items() if k != "rounds"},
  }


def bench_smollm2(bench, rounds: int, directory: str = DEFAULT_DIR,
                  decode_shape: tuple[int, int] = (32, 64),
                  train_shape: tuple[int, int] = (4, 512)
                  ) -> dict[str, object]:
  """Decode and train-step figures, ours vs transformers, same weights.

  Args:
    bench: the `experiments.bench` module (its protocol helpers).
    rounds: alternated rounds per comparison.
    directory: an HF safetensors directory.
    decode_shape: (batch, new tokens); prompts are 40-64 tokens.
    train_shape: (batch, sequence) of the PG step.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from mosaic_jax.models import convert  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"bench smollm2: no checkpoint at {directory}; run `python -m "
        "experiments.fetch smollm2-135m-instruct` first")
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      directory, attn_implementation="sdpa", dtype=torch.float32).eval()
  # Without an EOS id, `min_new_tokens` masks nothing: with SmolLM2's (2),
  # generate sets its logit to -inf for every step before the last, while
  # our sampler (no stop tokens given) may pick it; rows whose greedy token
  # is EOS then differ (0.955 of tokens equal with it, 1.0 without).
  hf.generation_config.eos_token_id = None
  model = convert.load_model(directory, dtype=jnp.float32)
  figures = {"model": f"SmolLM2-135M-Instruct {model.cfg.num_params() / 1e6:.1f}M fp32",
             "rounds": rounds}
  figures.update(_decode(bench, hf, model, rounds, *decode_shape))
  figures.update(_train(bench, directory, hf, model, rounds, *train_shape))
  figures["torch_threads"] = torch.get_num_threads()
  return figures
