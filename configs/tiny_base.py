"""Builds the committed tiny base model (`experiments/build_tiny_base.py`).

The tiny model is trained from scratch, and a from-scratch 1M-parameter model
needs far more SFT than the 20-minute main job can afford before it writes a
valid protocol turn (30 steps reach loss 4.0 and no valid turn). So, like the
real configs that start from a pretrained HF checkpoint, `configs/tiny.py`
starts from a base checkpoint committed under `mosaic_jax/assets/tiny_base`,
built in two stages, each a config of this file:

- `configs/tiny_base.py:scratch`: 450 SFT steps from a random init on a
  flawed mix (expert 37.5%, comply_all and follow_injection 31.25% each,
  each flawed policy the expert except at its own flaw), episodes of the
  train split (1,024 tokens).
- `configs/tiny_base.py:fresh` (the default), from the stage-1 checkpoint
  (`--config.model.path`): 600 more steps on the same mix, every task
  resampled with fresh entities (`sft.fresh_entities`, envs.tasks.resample)
  so the model cannot memorise the train pool's 20 names, and episodes up to
  1,280 tokens (11% of the held-out expert episodes are longer than 1,024).

The committed base was built before each suite's injection attacker was
fixed (docs/tasks.md): its injection episodes named one of 9 addresses
(drive, workspace), 270 handles (messaging) or a random IBAN (banking), so a
rebuild now sees other attacker strings and is a different base.
`configs/tiny.py`'s own warm-up mix (more unsafe) is not the base's.

No RL. The base is competent at the protocol and tools and unsafe on a
measurable share of harmful and injection tasks.
"""
from configs import tiny


def get_config(stage: str = "fresh"):
  c = tiny.get_config()
  c.workdir = f"/tmp/mosaic_tiny_base_{stage}"
  c.seed = 7
  c.optimizer.update(warmup_steps=20)
  c.rl.update(steps=0)
  c.sft.mix = dict(expert=0.6, comply_all=0.5, follow_injection=0.5)
  c.checkpoint.update(every=50, keep=3)
  # build_info.json's greedy test rates (no sampled run: nothing is claimed
  # from the base build).
  c.eval.update(max_tasks=48, batch=48, claim_samples=0)
  if stage == "scratch":
    c.model.path = ""  # random init
    c.sft.update(steps=450, lr=3e-3, max_len=1024, bucket=1024,
                 fresh_entities=False)
    c.rollout.update(max_total_length=1024)
  elif stage == "fresh":
    c.model.path = ""  # the stage-1 checkpoint: set --config.model.path
    c.sft.update(steps=600, lr=2e-3, max_len=1280, bucket=1024,
                 fresh_entities=True)
    c.rollout.update(max_total_length=1280)
  else:
    raise ValueError(f"configs/tiny_base.py: unknown stage {stage!r} "
                     "(scratch or fresh)")
  return c
