r"""The model demo: build the configured model, run it, save and reload it.

  python -m experiments.demo --config=configs/tiny.py

With `--config.model.path=DIR` it loads an HF checkpoint instead of a random
tiny model. Prints the parameter count, next-token predictions for a short
prompt, and checks that an HF save/reload reproduces the logits exactly.

The export (weights, config.json and the tokenizer: `--config.tokenizer`,
else the one beside `model.path`, else the tiny one) goes to `--out`
(default /tmp/mosaic_demo/hf_export), never into a training workdir.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments import cli
from mosaic_jax import models
from mosaic_jax.agent import tokenizer as tokenizer_lib
from mosaic_jax.models import presets

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py")
_OUT = flags.DEFINE_string("out", "/tmp/mosaic_demo/hf_export",
                           "where the HF export (with the tokenizer) goes")


def demo_tokenizer(cfg):
  """The tokenizer saved with the export: `cfg.tokenizer`, else the one
  beside `cfg.model.path`, else the committed tiny tokenizer."""
  for where in (cfg.get("tokenizer", ""), cfg.model.path):
    if where and os.path.isfile(os.path.join(models.hub.resolve(where),
                                             "tokenizer_config.json")):
      return models.load_tokenizer(where)
  return tokenizer_lib.load_tiny_tokenizer()


def build_model(cfg):
  """The configured model: an HF checkpoint, or the preset randomly initialised."""
  if cfg.model.path:
    return models.load_model(cfg.model.path, dtype=cfg.model.dtype,
                             compute_dtype=cfg.model.compute_dtype,
                             remat=cfg.model.remat)
  preset = presets.PRESETS[cfg.model.preset].replace(
      param_dtype=cfg.model.dtype, dtype=cfg.model.compute_dtype, remat=cfg.model.remat)
  return models.init_model(preset, seed=cfg.seed)


def main(argv):
  del argv
  cfg = _CONFIG.value
  model = build_model(cfg)
  print(f"model: {model.cfg.family}, {models.count_params(model):,} parameters, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
  tokens = jnp.asarray(np.arange(1, 17, dtype=np.int32)[None] % model.cfg.vocab_size)
  forward = jax.jit(lambda m, t: m(t))
  start = time.perf_counter()
  logits = jax.block_until_ready(forward(model, tokens))
  print(f"forward [1, 16] -> {tuple(logits.shape)} in {time.perf_counter() - start:.2f}s "
        f"(incl. compile); next-token argmax: {np.asarray(logits[0].argmax(-1)).tolist()}")
  out = _OUT.value
  models.save_pretrained(model, out, tokenizer=demo_tokenizer(cfg))
  reloaded = models.load_model(out, dtype=cfg.model.dtype,
                               compute_dtype=cfg.model.compute_dtype)
  same = np.array_equal(np.asarray(forward(reloaded, tokens)), np.asarray(logits))
  print(f"saved to {out} (with its tokenizer); reloaded logits identical: {same}")
  if not same:
    raise SystemExit("save/reload changed the logits")


if __name__ == "__main__":
  cli.main(main)
