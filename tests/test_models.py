"""Logits parity of the Flax decoder against transformers, and conversion."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mosaic_jax import models
from mosaic_jax.models import presets, safetensors_io
from tests import hf_models

# (family, HF config overrides): GQA ratios 1, 2 and 4; Qwen3 head_dim != hidden/heads,
# tied and untied; Phi-3 partial rotary; the rope scaling types the families use.
CASES = {
    "qwen2_gqa2": ("qwen2", {}),
    "qwen2_gqa1": ("qwen2", {"num_key_value_heads": 4}),
    "qwen2_yarn": ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 32}}),
    "qwen3_tied_gqa4": ("qwen3", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "qwen3_untied_gqa1": ("qwen3", {"num_key_value_heads": 4, "head_dim": 32}),
    "phi3_partial_gqa4": ("phi3", {"num_key_value_heads": 1, "partial_rotary_factor": 0.5}),
    "phi3_full_gqa1": ("phi3", {"num_key_value_heads": 4}),
    # original_max 8 < sequence 12: transformers switches to the long factors.
    "phi3_longrope": ("phi3", {"partial_rotary_factor": 0.5, "rope_scaling": {
        "rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 2.5],
        "long_factor": [3.0, 4.0, 5.0, 6.0], "original_max_position_embeddings": 8}}),
    # Llama: tied (SmolLM2) and untied; attention and MLP biases; the llama3
    # bands (original 16: wavelengths 2*pi..~1e4 fall in all three bands);
    # dynamic NTK past max_position_embeddings 8 < sequence 12; linear.
    "llama_tied_gqa2": ("llama", {"tie_word_embeddings": True}),
    "llama_untied_biases": ("llama", {"num_key_value_heads": 4, "head_dim": 32,
                                      "attention_bias": True, "mlp_bias": True}),
    "llama_llama3_rope": ("llama", {"tie_word_embeddings": True, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "llama_dynamic_rope": ("llama", {"max_position_embeddings": 8, "rope_scaling": {
        "rope_type": "dynamic", "factor": 2.0}}),
    "llama_linear_rope": ("llama", {"num_key_value_heads": 1, "rope_scaling": {
        "rope_type": "linear", "factor": 4.0}}),
}
LENGTHS = [12, 7, 9]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  family, overrides = CASES[request.param]
  directory = str(tmp_path_factory.mktemp(request.param))
  hf = hf_models.make_hf_model(family, directory, **overrides)
  return request.param, directory, hf


def test_fp32_logits_match_transformers(case):
  name, directory, hf = case
  model = models.from_pretrained(directory)
  ids, mask, pos = hf_models.left_padded_batch(hf.config.vocab_size, LENGTHS)
  ref = hf_models.hf_logits(hf, ids, mask, pos)
  ours = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask)))
  err = np.abs(ours - ref)[mask.astype(bool)].max()
  assert err <= 1e-4, f"{name}: max abs logit error {err:.3g}"


def test_padding_does_not_change_logits(case):
  name, directory, hf = case
  if name == "llama_dynamic_rope":
    pytest.skip("dynamic NTK frequencies depend on the batch's longest "
                "position by definition (as in transformers)")
  model = models.from_pretrained(directory)
  ids, mask, _ = hf_models.left_padded_batch(hf.config.vocab_size, LENGTHS)
  batched = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask)))
  n = LENGTHS[1]
  alone = np.asarray(model(jnp.asarray(ids[1:2, -n:])))
  np.testing.assert_allclose(batched[1, -n:], alone[0], atol=1e-5)


def test_round_trip_through_save_pretrained(case, tmp_path):
  name, directory, hf = case
  model = models.from_pretrained(directory)
  out = str(tmp_path / "saved")
  # A tiny shard limit forces the multi-file layout with an index.
  models.save_pretrained(model, out, max_shard_bytes=64 << 10)
  assert os.path.isfile(os.path.join(out, safetensors_io.INDEX_FILE))
  reloaded = type(hf).from_pretrained(out, attn_implementation="eager").eval()
  ids, mask, pos = hf_models.left_padded_batch(hf.config.vocab_size, LENGTHS)
  np.testing.assert_array_equal(
      hf_models.hf_logits(reloaded, ids, mask, pos), hf_models.hf_logits(hf, ids, mask, pos))
  for key, value in hf.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
  # And our own loader reads the sharded directory back to the same logits.
  again = models.from_pretrained(out)
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), mask=jnp.asarray(mask))),
                                np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask))))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3", "llama"])
def test_bf16_kl_to_transformers(family, tmp_path):
  hf = hf_models.make_hf_model(family, str(tmp_path))
  ids, mask, pos = hf_models.left_padded_batch(hf.config.vocab_size, LENGTHS)
  ref = hf_models.hf_logits(hf.to(torch.bfloat16), ids, mask, pos)
  model = models.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
  ours = np.asarray(model(jnp.asarray(ids), mask=jnp.asarray(mask)).astype(jnp.float32))
  logp_ref = jax.nn.log_softmax(ref, -1)
  logp = jax.nn.log_softmax(ours, -1)
  kl = np.sum(np.exp(logp_ref) * (logp_ref - logp), -1)[mask.astype(bool)]
  assert kl.mean() <= 0.02, f"mean per-token KL {kl.mean():.4g}"


def test_real_configs_have_real_param_counts():
  # eval_shape: no 7-15 B parameter arrays are allocated.
  counts = {name: models.count_params(models.abstract_model(cfg)) / 1e9
            for name, cfg in presets.PRESETS.items() if name != "tiny"}
  assert round(counts["qwen25_7b"], 2) == 7.62
  assert round(counts["qwen3_4b_thinking"], 2) == 4.02
  assert round(counts["phi4"], 2) == 14.66
  assert models.count_params(models.abstract_model(
      presets.SMOLLM2_135M)) == 134_515_008
  for name, cfg in presets.PRESETS.items():
    assert models.count_params(models.abstract_model(cfg)) == cfg.num_params(), name


def test_from_hf_reads_each_family(case):
  _, directory, hf = case
  cfg = models.ModelConfig.from_hf(directory)
  assert cfg.head_dim == getattr(hf.config, "head_dim", None) or (
      cfg.hidden_size // cfg.num_heads)
  assert cfg.num_kv_heads == hf.config.num_key_value_heads
  assert cfg.tie_embeddings == hf.config.tie_word_embeddings
  # to_hf describes the same model: the config round trips.
  assert models.ModelConfig.from_hf(cfg.to_hf()) == cfg


# ------------------------------------------------------------- bad input --


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("qwen2_bad"))
  hf_models.make_hf_model("qwen2", directory)
  return directory


def _copy(src, tmp_path):
  dst = str(tmp_path / "ckpt")
  shutil.copytree(src, dst)
  return dst


def test_missing_weights_file(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    models.from_pretrained(d)


def test_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    models.from_pretrained(str(tmp_path))


def test_wrong_architecture(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  cfg_path = os.path.join(d, "config.json")
  cfg = json.load(open(cfg_path))
  cfg["architectures"] = ["GPT2LMHeadModel"]
  json.dump(cfg, open(cfg_path, "w"))
  with pytest.raises(ValueError, match="GPT2LMHeadModel.*not supported"):
    models.from_pretrained(d)


def _rewrite(d, edit):
  files = safetensors_io.SafetensorsDir(d)
  tensors = {n: np.array(files.array(n)) for n in files.names()}
  edit(tensors)
  path = os.path.join(d, "model.safetensors")
  os.remove(path)
  safetensors_io.write_safetensors(
      path, [(n, t.shape, t.dtype) for n, t in tensors.items()], tensors.__getitem__)


def test_tensor_with_wrong_shape(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  name = "model.layers.1.mlp.up_proj.weight"
  _rewrite(d, lambda t: t.__setitem__(name, t[name][:-1]))
  with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight.*\[127, 64\].*expected \[128, 64\]"):
    models.from_pretrained(d)


def test_missing_tensor(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  _rewrite(d, lambda t: t.pop("model.layers.0.self_attn.k_proj.bias"))
  with pytest.raises(KeyError, match=r"model.layers.0.self_attn.k_proj.bias.*missing.*\[32\]"):
    models.from_pretrained(d)


def test_truncated_safetensors(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  path = os.path.join(d, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(safetensors_io.SafetensorsError, match="model.safetensors.*truncated"):
    models.from_pretrained(d)


def test_pickle_checkpoints_are_refused(qwen2_dir, tmp_path):
  d = _copy(qwen2_dir, tmp_path)
  os.remove(os.path.join(d, "model.safetensors"))
  torch.save({"x": torch.zeros(1)}, os.path.join(d, "pytorch_model.bin"))
  with pytest.raises(FileNotFoundError, match="safetensors only"):
    models.from_pretrained(d)
