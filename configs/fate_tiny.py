"""FATE on the tiny model (CPU, minutes): the tiny MOSAIC warm start, then
four self-evolution rounds of mining, repair and PFPO."""
from configs import fate_settings, tiny


def get_config():
  c = tiny.get_config()
  c.workdir = "/tmp/mosaic_fate_tiny"
  fate_settings.add_fate(
      c, rounds=4, tasks_per_round=16, num_candidates=4,
      transcript_tokens=256, prompt_extra_tokens=512,
      sft_steps=8, sft_batch=8, sft_max_len=c.rollout.max_total_length + 512,
      pg_steps=4)
  c.method = "fate"
  return c
