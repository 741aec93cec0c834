"""SmolLM2-135M-Instruct zero-shot (docs/evaluation.md#smollm2-135m-instruct-zero-shot).

The fetched HF dir (`python -m experiments.fetch smollm2-135m-instruct`)
carries the `smollm2_tools` template, so the model runs through the same
checkpoint path as any other (`--config.checkpoint=DIR`). The built-in
prompts (system prompt + tool list) are 1,046-1,265 SmolLM2 tokens, so an
episode of 2,048 tokens leaves room for a few 256-token turns; greedy only
(`claim_samples = 0`): a sampled run of k = 4 is 4x the cost, unaffordable
on a 2-core CPU. `--config.benchmarks=agentdojo` needs a longer episode
(see the doc for the lengths used).
"""
from configs.eval import common


def get_config():
  c = common.eval_config("builtin", "smollm2")
  c.name = "smollm2-135m-instruct"
  c.claim_samples = 0
  c.rollout.max_turns = 6
  c.rollout.max_tokens_per_turn = 256
  c.rollout.max_total_length = 2048
  return c
