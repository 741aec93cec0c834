"""The SmolLM2-135M-Instruct judge at a size two CPU cores finish in ~1 h.

`python -m experiments.train --config=configs/judge_smollm2_cpu.py` (fetch
the model first: `python -m experiments.fetch smollm2-135m-instruct`).
configs/judge_smollm2.py is the accelerator run (1,500 steps of 32 pairs of
~1.9 k tokens: ~5e5 s on two cores); this one keeps the last 192 tokens of
each transcript (as configs/judge_tiny.py does: the decisive action is at
the end), trains 40 steps of 8 examples (each pair in both orders) with
every weight trained, and evaluates 96 pairs per split before and after.
lr 1e-4 is a budget pick for 40 steps, not tuned on validation.
"""
from configs import judge_settings
from configs import judge_smollm2


def get_config():
  c = judge_smollm2.get_config()
  c.workdir = "/tmp/mosaic_judge_smollm2_cpu"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.logging.backends = ("jsonl",)
  c.judge.update(kind="llm", transcript_tokens=192, bucket=128,
                 pair_batch=16)
  judge_settings.add_judge_training(
      c, train_tasks=160, eval_tasks=16, pairs_per_task=6, steps=40,
      batch=8, microbatch=0, lr=1e-4, warmup_steps=5)
  return c
