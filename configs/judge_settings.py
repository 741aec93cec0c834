"""The `judge_train` section (training a pairwise judge) and `method`.

Not an experiment config itself: configs/judge_tiny.py and
configs/judge_smollm2.py call `add_judge_training`. Fields are documented
in `mosaic_jax.methods.judge_training.JudgeTrainConfig`; the prompt, the
answer strings, the response prefix and the transcript clip are the
`judge` section's, so the trained judge reads exactly what the RL loop's
`judge.model_path` judge will.
"""
import ml_collections


def add_judge_training(c: ml_collections.ConfigDict, **overrides
                       ) -> ml_collections.ConfigDict:
  """Sets `c.method = "judge"` and adds `c.judge_train` with `overrides`
  applied; returns c."""
  c.method = "judge"
  c.judge_train = ml_collections.ConfigDict(dict(
      # Scripted policies whose episodes are paired (envs.scripted).
      policies=("expert", "comply_all", "follow_injection", "reckless",
                "refuse_all", "leak", "lazy", "malformed"),
      # Train tasks played; tasks per evaluation split (stratified; 0: all).
      train_tasks=256, eval_tasks=48, eval_splits=("validation", "test"),
      # Verifier-decided pairs kept per task (seeded draw).
      pairs_per_task=6,
      # SFT on the answer token, each pair in both orders.
      steps=200, batch=16, lr=1e-4, warmup_steps=10, microbatch=0,
      # Episode limits of the scripted players.
      max_turns=8, max_tokens_per_turn=512, max_total_length=8192,
      # Expected calibration error bins.
      bins=10))
  c.judge_train.update(overrides)
  return c
