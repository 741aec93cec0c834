"""A pairwise judge from the committed tiny base (CPU, ~10 minutes).

`python -m experiments.train --config=configs/judge_tiny.py` trains the
tiny base (mosaic_jax/assets/tiny_base, 4 layers of width 128) to answer
the verifier's verdict on pairs of scripted episodes of train tasks, and
reports agreement, position bias and calibration on validation and test
pairs before and after (workdir/judge_report.json; docs/training.md,
"Training a judge"). Transcripts keep their last 192 tokens: the decisive
action is at the end, and the prompts stay under 1,024 tokens.
"""
from configs import base, judge_settings
from mosaic_jax.models import presets


def get_config():
  c = base.base_config("tiny")
  c.workdir = "/tmp/mosaic_judge_tiny"
  c.model.path = str(presets.TINY_BASE_DIR)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.logging.backends = ("jsonl",)
  c.judge.update(kind="llm", transcript_tokens=192, bucket=128,
                 pair_batch=32)
  judge_settings.add_judge_training(
      c, train_tasks=160, eval_tasks=32, pairs_per_task=6, steps=100,
      batch=16, lr=1e-3, warmup_steps=10)
  return c
