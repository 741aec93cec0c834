"""The committed tiny base checkpoint that configs/tiny.py starts from.

It is built by experiments/build_tiny_base.py (long SFT in two stages); these
tests check that it is there, loads through the HF path with the tiny
architecture and tokenizer, is actually trained (held-out assistant NLL far
below a random init's), and that the build script writes such a directory.
"""
import json
import os
import subprocess
import sys

import numpy as np

from configs import tiny
from mosaic_jax import envs
from mosaic_jax.agent import tokenizer as tokenizer_lib
from mosaic_jax.models import convert, decoder, presets
from mosaic_jax.train import sft_data, steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _heldout_nll(model, tokenizer) -> float:
  """Mean assistant-token NLL on four held-out expert episodes."""
  heldout = [t for t in envs.all_tasks() if t.split == "test"]
  picks = [heldout[i] for i in np.linspace(0, len(heldout) - 1, 4).astype(int)]
  ex = sft_data.sft_examples(picks, tokenizer, {"expert": 1.0}, max_len=1024,
                             bucket=256, max_turns=6)
  logp = np.asarray(steps.model_logprobs(model, ex.tokens, ex.attention_mask))
  mask = ex.loss_mask.astype(bool)
  return float(-logp[mask].mean())


def test_tiny_config_starts_from_the_committed_base():
  path = tiny.get_config().model.path
  assert os.path.samefile(path, presets.TINY_BASE_DIR)
  for name in ("config.json", "model.safetensors", "tokenizer.json",
               "chat_template.jinja", "build_info.json"):
    assert os.path.isfile(os.path.join(path, name)), name
  model = convert.from_pretrained(path)
  arch = dict(param_dtype="float32", dtype="float32")
  assert model.cfg.replace(**arch) == presets.TINY.replace(**arch)
  tokenizer = convert.load_tokenizer(path)
  vocab = tokenizer.get_vocab()
  for token in tokenizer_lib.SPECIAL_TOKENS + tokenizer_lib.TAG_TOKENS:
    assert token in vocab, token
  info = json.load(open(os.path.join(path, "build_info.json")))
  assert info["sft_steps"] >= 100 and info["final_sft_loss"] < 1.0


def test_committed_base_is_trained_far_beyond_random_init():
  path = tiny.get_config().model.path
  tokenizer = convert.load_tokenizer(path)
  trained = _heldout_nll(convert.from_pretrained(path), tokenizer)
  random = _heldout_nll(decoder.init_model(presets.TINY, seed=0), tokenizer)
  # ln(2048) = 7.6 nats for a uniform guess. The base reaches 0.72 nats per
  # token on held-out turns (unseen entities). Its first stage alone reached
  # 1.44 (0.22 on its training batches: it had memorised the train pool);
  # the fresh-entity stage halved it.
  assert random > 6.0
  assert trained < 1.0, trained


def test_build_script_writes_a_loadable_base(tmp_path):
  out = tmp_path / "base"
  base = [sys.executable, "-m", "experiments.build_tiny_base",
          f"--out={out}", f"--config.workdir={tmp_path / 'work'}"]
  # The default (fresh) stage continues from stage 1 and says so without it.
  proc = subprocess.run(base, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode != 0 and "--config.model.path" in proc.stderr
  cmd = [*base, f"--config.model.path={presets.TINY_BASE_DIR}",
         "--config.sft.steps=2", "--config.sft.batch=2",
         "--config.sft.microbatch=0", "--config.eval.max_tasks=2",
         "--config.eval.batch=2", "--config.rollout.max_turns=1",
         "--config.rollout.max_tokens_per_turn=8",
         "--config.checkpoint.every=1"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.load(open(out / "build_info.json"))
  assert info["sft_steps"] == 2
  assert info["eval_tasks"] == {"validation": 2, "test": 2, "test_ood": 2}
  assert info["fresh_entities"] and info["init"] == str(presets.TINY_BASE_DIR)
  assert set(info["test"]) >= {"harmful_compliance", "injection_asr",
                                  "utility", "over_refusal", "privacy_leak"}
  model = convert.from_pretrained(str(out))
  assert model.cfg.num_layers == presets.TINY.num_layers
