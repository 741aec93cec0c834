"""experiments/gpu_bench.py: its arithmetic, its sections at toy size, its row."""
import json
import math

from experiments import gpu_bench
from mosaic_jax.models import presets


def _toy_sizes():
  return gpu_bench.default_sizes("cpu") | {"peak_tflops": 989.0,
                                           "hbm_tbps": 4.8}


def test_decode_bytes_by_hand():
  # Qwen3-4B: 36 layers x 8 KV heads x 128 x (K and V) x 2 bytes = 147,456 B
  # a token; weights 2 bytes a parameter.
  cfg = presets.QWEN3_4B_THINKING
  per_token = 36 * 8 * 128 * 2 * 2
  assert per_token == 147_456
  assert gpu_bench.decode_bytes(cfg, 64, 1024) == (
      2 * cfg.num_params() + 64 * 1024 * per_token)


def test_train_figures_by_hand():
  # Qwen3-4B, 4 x 4096 tokens in 1.9774 s (the H200 row of
  # docs/benchmarks.md): (6 N + 12 L H hd T) a token.
  cfg = presets.QWEN3_4B_THINKING
  per_token = 6 * 4_022_468_096 + 12 * 36 * 32 * 128 * 4096
  assert cfg.num_params() == 4_022_468_096
  figures = gpu_bench._train_figures(cfg, 4, 4096, 1.9774, [], 989.0)
  assert figures["tflops"] == round(per_token * 16384 / 1.9774 / 1e12, 1)
  assert figures["tflops"] == 260.0
  assert figures["mfu_nominal"] == 0.263
  assert figures["tokens_per_s"] == 8286


def test_train_section_at_toy_size():
  figures = gpu_bench.section_train_small_jax(_toy_sizes())
  assert (figures["batch"], figures["seq"]) == (2, 64)
  assert figures["loss_finite"]
  assert math.isclose(figures["tokens_per_s"], 128 / figures["step_s"],
                      rel_tol=0.02)


def test_decode_section_at_toy_size():
  figures = gpu_bench.section_decode_4b(_toy_sizes())
  assert (figures["batch"], figures["prompt"], figures["new_tokens"]) == (
      4, 32, 16)
  assert figures["kv_window"] == 48  # capacity 48 < the 128-slot minimum
  assert figures["decode_tokens_per_s"] > 0 and figures["prefill_s"] > 0


def test_record_appends_one_row(tmp_path):
  md = tmp_path / "benchmarks.md"
  md.write_text("| date | machine | command | figures |\n|---|---|---|---|\n")
  results = {"environment": {"date": "2026-11-27", "jax": "0.11.2",
                             "flax": "0.12.12", "devices": ["NVIDIA H200"],
                             "nvidia_smi": "NVIDIA H200, 143771 MiB"},
             "sections": {"matmul": {"n": 8192, "bf16_tflops": 643.8,
                                     "device": "NVIDIA H200"},
                          "train_4b": {"error": "exit 1: out of memory"}}}
  path = tmp_path / "gpu.json"
  path.write_text(json.dumps(results))
  gpu_bench.record(str(path), md)
  row = md.read_text().splitlines()[-1]
  assert row.startswith("| 2026-11-27 | NVIDIA H200, 143771 MiB; jax 0.11.2")
  assert "**matmul**: n=8192, bf16_tflops=643.8" in row
  assert "device=" not in row  # the machine column already says it
  assert "**train_4b**: error=exit 1: out of memory" in row
  assert len(md.read_text().splitlines()) == 3
