"""The tiny default: a Qwen3-architecture model that runs on a 2-core CPU."""
from configs import base
from mosaic_jax.models import presets


def get_config():
  c = base.base_config("tiny")
  c.workdir = "/tmp/mosaic_tiny"
  # Data parallel over whatever devices exist (the tiny model fits on one).
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  # Tiny episodes are 500-1,130 tokens (prompt ~425 with the tool list; 11%
  # of the held-out expert episodes pass 1,024); the expert's turns are at
  # most 139 tokens with the stop token, 5-6 per episode. RL samples at
  # temperature 0.7: at 1.0 the tiny model's episodes are mostly invalid
  # (6-40% valid per batch against 30-94% at 0.7), and a group of invalid
  # episodes carries no signal. The PG log-probs are tempered the same way
  # (rl.temper_logprobs; the README's numbers predate it, docs/training.md).
  c.rollout.update(max_turns=6, max_tokens_per_turn=144, max_total_length=1280,
                   temperature=0.7)
  # The committed tiny base (experiments/build_tiny_base.py): SFT from
  # scratch on the flawed mix below, then on fresh entities; the tiny
  # stand-in for a pretrained checkpoint (a from-scratch warm-up that fits
  # this budget writes no valid turn). Its tokenizer and chat template are
  # stored beside it.
  c.model.path = str(presets.TINY_BASE_DIR)
  # SFT warm-up on top of it: 100 steps on tasks resampled with fresh
  # entities (like the base's second stage) from a mix of expert 10%,
  # follow_injection 25% and reckless 65% (comply with harmful requests and
  # obey injections). The scripted data are unsafe in 65% of the harmful and
  # 90% of the injection episodes, a clear majority, so the greedy warm start
  # is unsafe whatever the seed: held-out harmful tasks unrefused 31/31
  # (seed 0) and 28/31 (seed 1), injected attacks carried out 4/25 and 8/25.
  # At 45% reckless the greedy mode flipped with the seed (19/31 vs 4/31;
  # docs/training.md, "The tiny main job"). The base, built on a safer mix,
  # ignores injections: 10-30 warm-up steps left its ASR at 0.
  c.sft.update(steps=100, batch=8, microbatch=8, max_len=1280, bucket=1024,
               lr=1e-3, fresh_entities=True)
  # Replaced, not merged into base's default mix.
  c.sft.mix = dict(expert=0.1, follow_injection=0.25, reckless=0.65)
  # RL: G=8, four tasks per step (32 episodes), every sequence weighted
  # equally (sequence-mean-token-mean; with token-mean the long acting
  # episodes outweigh the short refusals), KL 0.1 to the warm start. Eight
  # samples put both outcomes (refuse, comply) into more harmful groups
  # than four (G=4: 19 -> 10 of 31 unrefused; G=8: 19 -> 6, same warm
  # start); 70 steps keep the run inside 20 minutes on 2 cores.
  c.optimizer.update(lr=5e-4, warmup_steps=3)
  c.rl.update(steps=70, group_size=8, tasks_per_step=4, kl_beta=0.1,
              aggregation="sequence-mean-token-mean", microbatch=8,
              chunk_size=128)
  c.checkpoint.update(every=10, keep=2)
  # 96 held-out tasks (31 harmful, 25 injection, 25 benign, 15 privacy),
  # greedy, two rollouts of 48: ~60 s an evaluation on 2 idle cores.
  c.eval.update(every=0, max_tasks=96, batch=48)
  return c
