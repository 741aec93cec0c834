"""Builds the committed tiny base model (`experiments/build_tiny_base.py`).

The tiny model is trained from scratch, and a from-scratch 1M-parameter model
needs far more SFT than the 20-minute main job can afford before it writes a
valid protocol turn (30 steps reach loss 4.0 and no valid turn). So, like the
real configs that start from a pretrained HF checkpoint, `configs/tiny.py`
starts from a base checkpoint committed under `mosaic_jax/assets/tiny_base`,
which this config builds: the same flawed SFT mix as the warm-up (comply_all
and follow_injection, each the expert except at its own flaw) for many more
steps, and no RL. The base is therefore competent at the protocol and tools
and unsafe on a measurable share of harmful and injection tasks.
"""
from configs import tiny


def get_config():
  c = tiny.get_config()
  c.workdir = "/tmp/mosaic_tiny_base"
  c.seed = 7
  c.model.path = ""  # random init: this config builds the base
  c.optimizer.update(warmup_steps=20)
  c.sft.update(steps=450, lr=3e-3)
  c.rl.update(steps=0)
  c.checkpoint.update(every=50, keep=3)
  return c
