"""MOSAIC on SmolLM2-135M-Instruct, the real pretrained base, on a 2-core CPU.

Fetch the model first (`python -m experiments.fetch smollm2-135m-instruct`,
docs/fetching.md); then
`python -m experiments.train --config=configs/smollm2_mosaic.py`.

Sized for a 2-core CPU, where it ran in 2 h 27 min (2026-12-04, LoRA rank
16, batch 8, prompts ~460 tokens; docs/training.md, "SmolLM2-135M-Instruct
under the protocol"): an SFT step takes ~65 s, an RL step of 16 episodes
550-690 s, a greedy evaluation task ~19 s. Hence the cuts
from the issue's recipe (60 SFT + 24 RL steps, 2 seeds), each said here:
- the tokenizer is the fetched `tokenizer_compact/`: tools listed as
  one-line signatures (`smollm2_compact`), which halves every prompt
  (median 1,122 -> 463 SmolLM2 tokens on train tasks);
- LoRA adapters (rank 16 on every projection) instead of full fine-tuning;
- 24 SFT steps at lr 5e-4 and 6 RL steps with G = 4; 32 tasks per split
  (8 per kind), greedy only (claim_samples 0).
None of these was tuned: there was budget for one run, not a sweep on
`validation`. On an accelerator, raise sft.steps, rl.steps, eval.max_tasks
and eval.claim_samples back towards the issue's recipe.
"""
from configs import base, judge_smollm2


def get_config():
  c = base.base_config("smollm2_135m")
  c.workdir = "/tmp/mosaic_smollm2"
  root = judge_smollm2.smollm2_dir()
  c.model.path = root
  c.tokenizer = root + "/tokenizer_compact"
  c.model.lora.update(rank=16, alpha=32.0)
  # Data parallel over whatever devices exist.
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  # Compact prompts are 416-501 tokens on train tasks; expert turns are
  # shorter than 160 tokens and episodes 5-6 turns.
  c.rollout.update(max_turns=6, max_tokens_per_turn=160,
                   max_total_length=1536, temperature=0.7)
  # Warm-up: a flawed scripted mix on fresh entities. Every policy of the
  # mix carries out benign tasks, so utility is taught by every episode;
  # harmful requests are complied with in 60% of the data (reckless) and
  # injections obeyed in 80% (reckless + follow_injection).
  c.sft.update(steps=24, batch=8, microbatch=4, max_len=1536, bucket=256,
               lr=5e-4, fresh_entities=True)
  c.sft.mix = dict(expert=0.2, follow_injection=0.2, reckless=0.6)
  # RL: G = 4, four tasks a step (16 episodes), KL 0.05 to the warm start.
  c.optimizer.update(lr=1e-4, warmup_steps=2)
  c.rl.update(steps=6, group_size=4, tasks_per_step=4, kl_beta=0.05,
              aggregation="sequence-mean-token-mean", microbatch=4,
              chunk_size=128)
  c.checkpoint.update(every=4, keep=2)
  # 32 tasks per split (8 per kind), greedy, one rollout batch of 32.
  c.eval.update(every=0, max_tasks=32, batch=32, claim_samples=0)
  return c
