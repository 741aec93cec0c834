"""SmolLM2-135M-Instruct's real weights: our decoder against transformers.

Runs only where `python -m experiments.fetch smollm2-135m-instruct` has built
the directory (default cache, or $MOSAIC_JAX_CACHE); skipped otherwise, so the
suite needs no network. Both frameworks read the same safetensors at fp32.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from experiments import fetch
from mosaic_jax import models, sampling
from mosaic_jax.agent import protocol, render
from tests import test_agent_render

DIR = os.environ.get("MOSAIC_JAX_SMOLLM2_DIR",
                     str(fetch.default_dst("smollm2-135m-instruct")))
pytestmark = pytest.mark.skipif(
    not fetch.is_built(DIR),
    reason=f"no fetched SmolLM2 at {DIR} (python -m experiments.fetch "
    "smollm2-135m-instruct)")
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def loaded():
  tok = transformers.AutoTokenizer.from_pretrained(DIR)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      DIR, dtype=torch.float32, attn_implementation="eager").eval()
  return tok, hf, models.from_pretrained(DIR)


def _prompts(tok):
  agent = render.render(tok, [
      protocol.system_message(protocol.SYSTEM_PROMPT),
      protocol.user_message("Email Bob the quarterly report.")],
      test_agent_render.TOOLS)
  chat = tok.apply_chat_template(
      [{"role": "user", "content": "What is the capital of France?"}],
      tokenize=False, add_generation_prompt=True)
  return [tok(t, add_special_tokens=False).input_ids for t in (agent, chat)]


def test_logits_match_transformers(loaded):
  tok, hf, ours = loaded
  prompts = _prompts(tok)
  t = max(map(len, prompts))
  ids = np.full((len(prompts), t), tok.pad_token_id, np.int32)
  mask = np.zeros_like(ids)
  for n, p in enumerate(prompts):
    ids[n, t - len(p):], mask[n, t - len(p):] = p, 1
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    ref = hf(torch.tensor(ids, dtype=torch.long),
             attention_mask=torch.tensor(mask, dtype=torch.long),
             position_ids=torch.tensor(positions, dtype=torch.long)
             ).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids), mask=jnp.asarray(mask)))
  err = np.abs(got - ref)[mask.astype(bool)].max()
  print(f"SmolLM2 max abs logit error {err:.3g} over {int(mask.sum())} "
        f"tokens (max |logit| {np.abs(ref).max():.1f})")
  assert err <= 2e-4


def _hf_greedy(hf, prompt, steps):
  """transformers' greedy continuation with its KV cache, not stopping at
  eos (as our sampler without stop criteria)."""
  out, past, ids = [], None, torch.tensor([prompt])
  with torch.no_grad():
    for _ in range(steps):
      step = hf(ids, past_key_values=past, use_cache=True)
      past = step.past_key_values
      out.append(int(step.logits[0, -1].argmax()))
      ids = torch.tensor([[out[-1]]])
  return out


def test_greedy_tokens_match_transformers(loaded):
  tok, hf, ours = loaded
  # The agent prompt (tools, protocol system prompt): what rollouts decode.
  for prompt in _prompts(tok)[:1]:
    ref = _hf_greedy(hf, prompt, NEW_TOKENS)
    ids = np.asarray([prompt], np.int32)
    cache = sampling.init_cache(ours, 1, len(prompt) + NEW_TOKENS)
    out = sampling.sample(ours, ids, np.ones_like(ids), cache,
                          jax.random.key(0),
                          sampling.SamplingConfig(NEW_TOKENS))
    got = np.asarray(out.tokens[0]).tolist()
    assert len(got) == len(ref) == NEW_TOKENS
    assert got == ref, (tok.decode(got), tok.decode(ref))


def test_answers_sensibly(loaded):
  """A wrong q/k un-permutation gives fluent-looking garbage in both
  frameworks alike; the greedy answer shows the weights are right."""
  tok, _, ours = loaded
  prompt = _prompts(tok)[1]
  ids = np.asarray([prompt], np.int32)
  cache = sampling.init_cache(ours, 1, len(prompt) + 12)
  out = sampling.sample(ours, ids, np.ones_like(ids), cache,
                        jax.random.key(0), sampling.SamplingConfig(12))
  assert "Paris" in tok.decode(np.asarray(out.tokens[0]).tolist())
