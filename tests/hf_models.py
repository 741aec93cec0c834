"""Tiny random transformers models for parity tests (saved with save_pretrained)."""
from __future__ import annotations

import os

import numpy as np
import torch
import transformers

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)

_CLASSES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, 1e6),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, 5e6),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, 2.5e5),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, 1e5),
}


def make_hf_model(family: str, directory: str | None = None, seed: int = 0,
                  **overrides):
  """A random HF model of `family`; saved to `directory` if given.

  Norm weights and biases are perturbed away from their 1/0 init, so a
  converter that drops or misplaces them fails parity.
  """
  config_cls, model_cls, theta = _CLASSES[family]
  kwargs = dict(BASE, rope_theta=theta)
  if family == "qwen3":
    kwargs["head_dim"] = 16  # Qwen3Config defaults to 128
  if family == "phi3":
    kwargs["pad_token_id"] = 0  # Phi3Config defaults to 32000, outside the vocab
  kwargs.update(overrides)
  torch.manual_seed(seed)
  model = model_cls(config_cls(**kwargs)).eval()
  model.config._attn_implementation = "eager"
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  if directory is not None:
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
  return model


def left_padded_batch(vocab: int, lengths: list[int], seed: int = 0):
  """Random ids [B, T] left-padded to max(lengths), mask and positions."""
  rng = np.random.RandomState(seed)
  t = max(lengths)
  ids = rng.randint(1, vocab, size=(len(lengths), t)).astype(np.int32)
  mask = np.zeros((len(lengths), t), np.int32)
  for i, n in enumerate(lengths):
    mask[i, t - n:] = 1
    ids[i, :t - n] = 0
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  return ids, mask, positions


def hf_logits(model, ids, mask, positions) -> np.ndarray:
  with torch.no_grad():
    out = model(torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()
