"""`bench smollm2` on a tiny random Llama directory: both sides load the same
weights, greedy tokens agree, every figure the docs quote is produced."""
import sys

from experiments import bench
from experiments import smollm2_bench
from tests import hf_models


def test_bench_smollm2_on_a_tiny_llama(tmp_path):
  directory = str(tmp_path / "llama")
  # eos_token_id=2 as SmolLM2's: generate must not mask it (see the bench).
  hf_models.make_hf_model("llama", directory, max_position_embeddings=256,
                          eos_token_id=2)
  figures = smollm2_bench.bench_smollm2(
      sys.modules[bench.__name__], rounds=1, directory=directory,
      decode_shape=(4, 8), train_shape=(2, 64))
  assert figures["decode_greedy_tokens_equal_hf"] == 1.0, figures
  for key in ("decode_hf_over_ours_wall", "decode_bound_share",
              "train_torch_over_ours_wall", "train_torch_over_ours_lora_cpu",
              "train_ours_mfu_cpu", "train_torch_mfu_wall"):
    assert figures[key] > 0, (key, figures[key])
  assert figures["train_ours_lora_step_s"] > 0
  assert len(figures["decode_loads"]) == len(figures["train_loads"]) == 1
