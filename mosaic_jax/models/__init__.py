"""Flax ports of Qwen2, Qwen3, Phi-3 and Llama (one decoder), and HF conversion."""
from mosaic_jax.models.config import ModelConfig, RopeConfig
from mosaic_jax.models import hub
from mosaic_jax.models.convert import (from_pretrained, load_model,
                                       load_tokenizer, save_pretrained)
from mosaic_jax.models.decoder import (Decoder, KVCache, abstract_model,
                                       count_params, init_model)

__all__ = [
    "Decoder", "KVCache", "ModelConfig", "RopeConfig", "abstract_model",
    "count_params", "from_pretrained", "hub", "init_model", "load_model",
    "load_tokenizer", "save_pretrained",
]
