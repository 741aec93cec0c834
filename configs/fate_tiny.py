"""FATE on the tiny model (CPU, minutes): the tiny MOSAIC warm start, then
four self-evolution rounds of mining, repair and PFPO.

The same warm start as configs/tiny.py (65% reckless in the warm-up mix)
and its G = 8, with 18 PFPO-PG steps a round (72 in all): held-out harmful
compliance 1.00 -> 0.29, injection ASR 0.16 -> 0 (docs/training.md, "The
tiny main job"). On the earlier 45%-reckless warm start with G = 4 it fell
0.61 -> 0.39 with 12 PG steps a round and to 0.35 with 18. PFPO-SFT keeps
the default repair conditioning: with the task in context ("both") the
mostly-acting repairs taught the policy to act on every request (harmful
compliance -> 1.0).

All these numbers were measured with the oracle hint in the repair prompt
(the goal checks' expected values), before `fate.oracle_hints` existed; it
is now off by default, so a rerun of this config does not reproduce them
(docs/fate.md, "The oracle-hint ablation").
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
  return c
