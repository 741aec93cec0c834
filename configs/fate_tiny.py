"""FATE on the tiny model (CPU, minutes): the tiny MOSAIC warm start, then
four self-evolution rounds of mining, repair and PFPO.

18 PFPO-PG steps a round (72 in all): from the 45%-reckless warm start
(pinned below) held-out harmful compliance fell 0.61 -> 0.39 with 12 a round
and to 0.35 with 18 (with the older warm start: 0.52 -> 0.39 with 4, 0.29
with 12; docs/training.md, "The tiny main job"). PFPO-SFT keeps the
default repair conditioning: with the task in context ("both") the
mostly-acting repairs taught the policy to act on every request (harmful
compliance -> 1.0).
"""
from configs import fate_settings, tiny


def get_config():
  c = tiny.get_config()
  c.workdir = "/tmp/mosaic_fate_tiny"
  fate_settings.add_fate(
      c, rounds=4, tasks_per_round=16, num_candidates=4,
      transcript_tokens=256, prompt_extra_tokens=512,
      sft_steps=8, sft_batch=8, sft_max_len=c.rollout.max_total_length + 512,
      pg_steps=18)
  c.method = "fate"
  # Measured (docs/training.md) on the earlier tiny warm start and group
  # size, pinned here so those numbers stay this config's: 45% reckless in
  # the warm-up mix, G = 4 in PFPO-PG. (configs/tiny.py moved to 65% and
  # G = 8; FATE on that warm start is not yet measured.)
  c.sft.mix = dict(expert=0.2, follow_injection=0.35, reckless=0.45)
  c.rl.group_size = 4
  return c
