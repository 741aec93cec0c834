"""The `fate` config section (FATE rounds and PFPO) and the `method` switch.

Not an experiment config itself: `configs/fate_tiny.py` and the family
configs call `add_fate`. Fields are documented in
`mosaic_jax.methods.fate` (`FateConfig`, the loop).
"""
import ml_collections


def add_fate(c: ml_collections.ConfigDict, **overrides
             ) -> ml_collections.ConfigDict:
  """Adds `c.method` (default "mosaic"; "fate" runs the FATE loop) and
  `c.fate` with `overrides` applied; returns c."""
  if "method" not in c:
    c.method = "mosaic"
  c.fate = ml_collections.ConfigDict(dict(
      rounds=10,
      # Mining: tasks per round, episodes per task.
      tasks_per_round=32, mine_group_size=1,
      # Repairs: K candidates per failure; the failed attempt is cut to
      # transcript_tokens (tool results to observation_chars each) and a
      # repair episode may be prompt_extra_tokens longer than
      # rollout.max_total_length.
      num_candidates=4, transcript_tokens=512, observation_chars=400,
      prompt_extra_tokens=1024,
      # R_pf = Σ z − length_coef · max(0, (L − length_l0)/length_l0).
      length_coef=0.1, length_l0=400.0,
      # a* is stored only when it beats the failure; FIFO buffer.
      require_improvement=True, improvement="dominates", buffer_size=1024,
      # PFPO SFT on the buffer: context task | repair | both; rows per step
      # and padded length (repair prompts need rollout.max_total_length +
      # prompt_extra_tokens).
      sft_steps=8, sft_batch=16, sft_max_len=5120, conditioning="repair",
      # PFPO PG (rl.* for PPO-clip, KL and groups): pareto | scalar reward.
      pg_steps=8, reward="pareto", scalar_weights=(1.0, 1.0, 1.0, 1.0),
      tie_break_scale=0.5, first_front_only=False,
      # Repair prompts spell out unmet goal checks' predicates and expected
      # values: an oracle hint, off as in FATE (the ablation in docs/fate.md).
      oracle_hints=False))
  c.fate.update(overrides)
  return c
