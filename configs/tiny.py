"""The tiny default: a Qwen3-architecture model that runs on a 2-core CPU."""
from configs import base
from mosaic_jax.models import presets


def get_config():
  c = base.base_config("tiny")
  c.workdir = "/tmp/mosaic_tiny"
  # Data parallel over whatever devices exist (the tiny model fits on one).
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  # Tiny episodes are 500-970 tokens (prompt ~425 with the tool list); the
  # expert's turns are at most 139 tokens with the stop token, 5-6 per episode.
  c.rollout.update(max_turns=6, max_tokens_per_turn=144, max_total_length=1024)
  # The committed tiny base (experiments/build_tiny_base.py): 450 SFT steps
  # from scratch on the flawed mix below, the tiny stand-in for a pretrained
  # checkpoint (a from-scratch warm-up that fits this budget writes no valid
  # turn). Its tokenizer and chat template are stored beside it.
  c.model.path = str(presets.TINY_BASE_DIR)
  # SFT warm-up on top of it, with the mix the base was built with: expert
  # 37.5%, comply_all and follow_injection 31.25% each (weights are
  # normalised). The two flawed policies act as the expert except at their
  # own flaw (comply on harmful tasks; obey injected instructions), so the
  # warm start refuses only about half of the harmful tasks, which RL has to
  # fix. A step of 8 x 1024 tokens takes ~2.5 s on 2 idle cores.
  c.sft.update(steps=10, batch=8, microbatch=8, max_len=1024, bucket=1024,
               lr=1e-3)
  # Replaced, not merged into base's default mix.
  c.sft.mix = dict(expert=0.6, comply_all=0.5, follow_injection=0.5)
  # RL: G=4, four tasks per step (16 episodes), every sequence weighted
  # equally (sequence-mean-token-mean; with token-mean the long acting
  # episodes outweigh the short refusals), and the largest learning rate
  # that stayed stable: at 1e-3 the policy drifts (KL 1.5 after 30 steps)
  # and stops refusing anything (docs/training.md, "Tiny MOSAIC runs").
  c.optimizer.update(lr=5e-4, warmup_steps=3)
  c.rl.update(steps=30, group_size=4, tasks_per_step=4, kl_beta=0.04,
              aggregation="sequence-mean-token-mean", microbatch=8,
              chunk_size=128)
  c.checkpoint.update(every=10, keep=2)
  # 48 held-out tasks (15 harmful, 13 injection, 12 benign, 8 privacy),
  # greedy, in one rollout: the full split (302) costs ~6x more per
  # evaluation than this budget allows.
  c.eval.update(every=0, max_tasks=48, batch=48)
  return c
