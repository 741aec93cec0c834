"""A pairwise judge from SmolLM2-135M-Instruct (the issue's goal: >= 90%
agreement with the verifier on held-out pairs, |position bias| <= 0.05).

Fetch the model first (`python -m experiments.fetch smollm2-135m-instruct`,
docs/fetching.md); then
`python -m experiments.train --config=configs/judge_smollm2.py`. Not run
yet (docs/training.md, "Training a judge"): a GPU or TPU job, 135 M
parameters on prompts of ~1.9 k tokens (the template is 219 SmolLM2 tokens,
then the task and two 768-token transcripts). " A" and " B" are one
SmolLM2 token each (330, 389), as `judge.answers` needs.
"""
import os
import pathlib

from configs import base, judge_settings


def smollm2_dir() -> str:
  """Where experiments.fetch puts the model ($MOSAIC_JAX_CACHE, else
  ~/.cache/mosaic_jax)."""
  root = os.environ.get("MOSAIC_JAX_CACHE")
  root = pathlib.Path(root) if root else (
      pathlib.Path.home() / ".cache" / "mosaic_jax")
  return str(root / "smollm2-135m-instruct")


def get_config():
  c = base.base_config("smollm2_135m")
  c.workdir = "/tmp/mosaic_judge_smollm2"
  c.model.path = smollm2_dir()
  c.model.dtype = "float32"
  c.judge.update(kind="llm", transcript_tokens=768, bucket=256,
                 pair_batch=32)
  judge_settings.add_judge_training(
      c, train_tasks=752, eval_tasks=0, pairs_per_task=8, steps=1500,
      batch=32, microbatch=8, lr=2e-5, warmup_steps=50)
  return c
