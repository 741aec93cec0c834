"""A llama.cpp GGUF file (Llama architecture) -> an HF safetensors directory.

Every tensor is dequantized to float32 with the `gguf` package's own
dequantization (Q4_1, Q8_0 and any other type it knows), renamed to the HF
`LlamaForCausalLM` name and written with `safetensors_io`, one tensor in memory
at a time. llama.cpp's converter permutes the rows of the q and k projections
(weights and biases) from HF's half-split RoPE layout to its interleaved one;
`unpermute_rows` undoes that. The config comes from the `llama.*` metadata and
the tokenizer (with the file's chat template) from `tokenizer.ggml.*`, through
transformers' GGUF tokenizer conversion.

The directory is written under a temporary name and renamed into place, so an
interrupted import never leaves a directory that looks complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np

from mosaic_jax.models import safetensors_io
from mosaic_jax.models.config import ModelConfig, ModelFileError, RopeConfig


class GGUFImportError(ModelFileError):
  """A GGUF file that cannot be imported; the message names file and key."""


# GGUF tensor name (after `blk.{i}.`) -> HF name (after `model.layers.{i}.`).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")


def hf_tensor_name(gguf_name: str) -> str:
  """The HF LlamaForCausalLM name of a GGUF tensor.

  Raises:
    KeyError: a tensor this importer does not know (e.g. `rope_freqs`).
  """
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_RE.fullmatch(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
  raise KeyError(gguf_name)


def unpermute_rows(x: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation.

  llama.cpp stores each head's rows [h] as interleaved pairs: its converter
  reshapes [heads, 2, h/2, ...] and swaps the two middle axes. This reads the
  stored rows as [heads, h/2, 2, ...] and swaps them back.

  Args:
    x: [heads * h, ...] stored q or k projection weight (or 1-D bias).
    heads: query heads for q, kv heads for k.

  Returns:
    [heads * h, ...] in HF's half-split layout.
  """
  rows = x.shape[0]
  if rows % (2 * heads):
    raise ValueError(f"{rows} rows do not split into {heads} heads of pairs")
  return (x.reshape(heads, rows // heads // 2, 2, *x.shape[1:])
          .swapaxes(1, 2).reshape(x.shape))


def _field(reader, key: str, default: Any = None, *, source: str) -> Any:
  """A scalar or string metadata value (default when absent; no default: an
  error naming the key)."""
  field = reader.fields.get(key)
  if field is None:
    if default is None:
      raise GGUFImportError(f"{source}: metadata key {key!r} is missing")
    return default
  return field.contents()


def _open(path: str):
  """A `gguf.GGUFReader`, or one line saying why the file is not GGUF."""
  import gguf  # Only the importer needs it.
  if not os.path.isfile(path):
    raise GGUFImportError(f"{path}: no such GGUF file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except
    # The reader raises ValueError, struct errors, IndexError... on garbage.
    first = str(e).splitlines()[0][:200] if str(e) else ""
    raise GGUFImportError(f"{path}: not a readable GGUF file "
                          f"({type(e).__name__}: {first})") from None


def config_from_gguf(reader, source: str = "<gguf>") -> ModelConfig:
  """The ModelConfig (float32) the `llama.*` metadata and tensors describe.

  Raises:
    GGUFImportError: not a llama GGUF, or a required key is missing.
  """
  arch = _field(reader, "general.architecture", source=source)
  if arch != "llama":
    raise GGUFImportError(f"{source}: general.architecture is {arch!r}; only "
                          "'llama' GGUF files are imported")
  get = lambda key, default=None: _field(reader, f"llama.{key}", default,
                                         source=source)
  names = {t.name for t in reader.tensors}
  heads = int(get("attention.head_count"))
  hidden = int(get("embedding_length"))
  head_dim = int(get("attention.key_length", hidden // heads))
  rotary = int(get("rope.dimension_count", head_dim))
  if rotary != head_dim:
    raise GGUFImportError(f"{source}: llama.rope.dimension_count {rotary} != "
                          f"head dim {head_dim}; Llama rotates whole heads")
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  vocab = int(get("vocab_size", len(tokens.data) if tokens else None))
  scaling = get("rope.scaling.type", "none")
  if scaling not in ("none", "linear"):
    raise GGUFImportError(f"{source}: llama.rope.scaling.type {scaling!r} is "
                          "not imported (only none and linear)")
  rope = RopeConfig(theta=float(get("rope.freq_base", 10000.0)))
  if scaling == "linear":
    rope = RopeConfig(theta=rope.theta, rope_type="linear",
                      factor=float(get("rope.scaling.factor")))
  attention_bias = "blk.0.attn_q.bias" in names
  return ModelConfig(
      family="llama", vocab_size=vocab, hidden_size=hidden,
      intermediate_size=int(get("feed_forward_length")),
      num_layers=int(get("block_count")), num_heads=heads,
      num_kv_heads=int(get("attention.head_count_kv", heads)),
      head_dim=head_dim, rope=rope, qkv_bias=attention_bias,
      o_bias=attention_bias, mlp_bias="blk.0.ffn_gate.bias" in names,
      tie_embeddings="output.weight" not in names,
      # The file stores eps as float32; round it to the decimal it was.
      norm_eps=float(np.format_float_positional(np.float32(
          get("attention.layer_norm_rms_epsilon")), unique=True)),
      max_position_embeddings=int(get("context_length")))


def dequantized(tensor) -> np.ndarray:
  """A GGUF reader tensor as float32 in numpy (row-major) order, via gguf's
  own dequantization."""
  import gguf
  return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                    np.float32).reshape(tuple(int(n) for n in
                                              reversed(tensor.shape)))


def _hf_tensors(reader, source: str) -> dict[str, Any]:
  """HF name -> reader tensor, every tensor accounted for."""
  out = {}
  for tensor in reader.tensors:
    try:
      out[hf_tensor_name(tensor.name)] = tensor
    except KeyError:
      raise GGUFImportError(f"{source}: tensor {tensor.name!r} has no HF "
                            "LlamaForCausalLM counterpart") from None
  return out


def _hf_array(name: str, tensor, cfg: ModelConfig) -> np.ndarray:
  """One tensor dequantized, q/k rows un-permuted."""
  x = dequantized(tensor)
  if ".self_attn.q_proj." in name:
    x = unpermute_rows(x, cfg.num_heads)
  elif ".self_attn.k_proj." in name:
    x = unpermute_rows(x, cfg.num_kv_heads)
  return x


def _token_id(reader, key: str) -> int | None:
  field = reader.fields.get(f"tokenizer.ggml.{key}")
  return None if field is None else int(field.contents())


def convert_gguf(gguf_path: str, dst: str, *, tokenizer: bool = True,
                 chat_template: str | None = None,
                 extra_files: dict[str, str] | None = None) -> ModelConfig:
  """Writes an HF LlamaForCausalLM directory for a llama GGUF file.

  Args:
    gguf_path: the .gguf file.
    dst: the directory to create (replaced if it exists).
    tokenizer: also write tokenizer.json / tokenizer_config.json from the
      file's `tokenizer.ggml.*` metadata (its chat template included).
    chat_template: Jinja written as chat_template.jinja instead of the file's
      own template (transformers prefers that file).
    extra_files: file name -> text, written into the directory before it is
      renamed into place (e.g. a marker that the directory is complete).

  Returns:
    The imported model's ModelConfig.

  Raises:
    GGUFImportError: one line naming the file and what is wrong with it.
  """
  gguf_path, dst = os.fspath(gguf_path), os.fspath(dst)
  reader = _open(gguf_path)
  cfg = config_from_gguf(reader, gguf_path)
  tensors = _hf_tensors(reader, gguf_path)
  # The shapes the converter will check when the directory is loaded.
  from mosaic_jax.models import convert  # Late: convert imports the decoder.
  for view_path, view in convert.param_views(cfg).items():
    for name in convert.hf_names(cfg, view_path, view):
      if name not in tensors:
        raise GGUFImportError(f"{gguf_path}: no tensor for {name!r}")
      shape = tuple(int(n) for n in reversed(tensors[name].shape))
      if shape != view.hf_shape:
        raise GGUFImportError(
            f"{gguf_path}: tensor {tensors[name].name!r} has shape "
            f"{list(shape)}, expected {list(view.hf_shape)} by its metadata")
  parent = os.path.dirname(os.path.abspath(dst))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dst), dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp's 0700 would survive the rename.
  try:
    entries = [(name, tuple(int(n) for n in reversed(t.shape)),
                np.dtype(np.float32)) for name, t in tensors.items()]
    safetensors_io.write_safetensors(
        os.path.join(tmp, safetensors_io.SINGLE_FILE), entries,
        lambda name: _hf_array(name, tensors[name], cfg),
        metadata={"format": "pt", "source": os.path.basename(gguf_path)})
    hf_config = cfg.to_hf()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
      value = _token_id(reader, key.replace("pad_", "padding_"))
      if value is not None:
        hf_config[key] = value
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    if tokenizer:
      _write_tokenizer(gguf_path, tmp)
    if chat_template is not None:
      with open(os.path.join(tmp, "chat_template.jinja"), "w",
                encoding="utf-8") as f:
        f.write(chat_template)
    for filename, text in (extra_files or {}).items():
      with open(os.path.join(tmp, filename), "w", encoding="utf-8") as f:
        f.write(text)
    if os.path.exists(dst):
      shutil.rmtree(dst)
    os.rename(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return cfg


def _write_tokenizer(gguf_path: str, out_dir: str) -> None:
  """tokenizer.json, tokenizer_config.json (and the chat template) from the
  GGUF metadata, through transformers' GGUF tokenizer conversion."""
  import transformers  # Heavy import, only needed here.
  try:
    tok = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(gguf_path)),
        gguf_file=os.path.basename(gguf_path), local_files_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0][:200] if str(e) else ""
    raise GGUFImportError(f"{gguf_path}: tokenizer metadata could not be "
                          f"converted ({type(e).__name__}: {first})") from None
  tok.save_pretrained(out_dir)
