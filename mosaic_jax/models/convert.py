"""Hugging Face safetensors directory <-> Flax decoder.

Each of our parameters is a *view* of an HF tensor: an optional row range (the
fused Phi-3 `qkv_proj` / `gate_up_proj`), a reshape that splits dimensions
(`[n*h, d]` -> `[n, h, d]`) and a transpose to our layout. Reading through the
view slices the memory-mapped file, so a process that owns a shard of a
parameter reads that shard only, and no full unsharded copy of the checkpoint is
ever built on the host. Writing walks the views backwards.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mosaic_jax import sharding as sharding_lib
from mosaic_jax.models import decoder as decoder_lib
from mosaic_jax.models import hub
from mosaic_jax.models import lora as lora_lib
from mosaic_jax.models import presets
from mosaic_jax.models import safetensors_io
from mosaic_jax.models.config import ModelConfig, ModelFileError, dtype_name

_LAYER = "model.layers.{i}."
# Safetensors dtypes a weight may be stored in (an integer tensor is a
# relabelled or foreign file: its bytes would load as finite garbage).
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclasses.dataclass(frozen=True)
class _View:
  """Our per-layer array as a view of one HF tensor.

  Attributes:
    hf_name: tensor name; `{i}` is replaced by the layer index.
    hf_shape: full shape of the HF tensor, for validation.
    rows: (start, stop) along the HF tensor's first dim (fused tensors).
    split: shape the row range is reshaped to; consecutive groups multiply
      to the HF dims.
    perm: transpose from `split` to our layout.
  """
  hf_name: str
  hf_shape: tuple[int, ...]
  rows: tuple[int, int] | None
  split: tuple[int, ...]
  perm: tuple[int, ...]

  @property
  def our_shape(self) -> tuple[int, ...]:
    return tuple(self.split[p] for p in self.perm)

  def _groups(self) -> list[list[int]]:
    """Split dims grouped by the HF dim they come from."""
    hf = list(self.hf_shape)
    if self.rows:
      hf[0] = self.rows[1] - self.rows[0]
    groups, j = [], 0
    for size in hf:
      group, prod = [], 1
      while prod < size or not group:
        group.append(j)
        prod *= self.split[j]
        j += 1
      if prod != size:
        raise AssertionError(f"bad view {self}")
      groups.append(group)
    return groups

  def read(self, tensor: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    """Reads our[index] from the HF tensor, touching only the rows it needs."""
    split_slices = [slice(None)] * len(self.split)
    for our_dim, split_dim in enumerate(self.perm):
      split_slices[split_dim] = index[our_dim]
    hf_index, inner_index, inner_shape = [], [], []
    offset = self.rows[0] if self.rows else 0
    for g, group in enumerate(self._groups()):
      outer = group[0]
      start, stop, _ = split_slices[outer].indices(self.split[outer])
      inner = math.prod(self.split[j] for j in group[1:])
      base = offset if g == 0 else 0
      hf_index.append(slice(base + start * inner, base + stop * inner))
      inner_shape += [stop - start] + [self.split[j] for j in group[1:]]
      inner_index += [slice(None)] + [split_slices[j] for j in group[1:]]
    block = np.asarray(tensor[tuple(hf_index)]).reshape(inner_shape)
    return block[tuple(inner_index)].transpose(self.perm)

  def write(self, out: np.ndarray, ours: np.ndarray) -> None:
    """Writes our full array into its place in the (preallocated) HF tensor."""
    inverse = np.argsort(self.perm)
    block = ours.transpose(inverse).reshape(
        [self.rows[1] - self.rows[0]] + list(self.hf_shape[1:])
        if self.rows else self.hf_shape)
    if self.rows:
      out[self.rows[0]:self.rows[1]] = block
    else:
      out[...] = block


def param_views(cfg: ModelConfig) -> dict[tuple[str, ...], _View]:
  """Our parameter path -> HF view (stacked params: per-layer view)."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn, mlp = _LAYER + "self_attn.", _LAYER + "mlp."
  views = {
      ("embed_vd",): _View("model.embed_tokens.weight", (v, d), None, (v, d), (0, 1)),
      ("final_norm_d",): _View("model.norm.weight", (d,), None, (d,), (0,)),
      ("blocks", "attn_norm_ld"): _View(_LAYER + "input_layernorm.weight", (d,), None, (d,), (0,)),
      ("blocks", "mlp_norm_ld"): _View(_LAYER + "post_attention_layernorm.weight", (d,), None, (d,), (0,)),
      ("blocks", "wo_lnhd"): _View(attn + "o_proj.weight", (d, n * h), None, (d, n, h), (1, 2, 0)),
      ("blocks", "w_down_lfd"): _View(mlp + "down_proj.weight", (d, f), None, (d, f), (1, 0)),
  }
  if not cfg.tie_embeddings:
    views[("lm_head_dv",)] = _View("lm_head.weight", (v, d), None, (v, d), (1, 0))
  if cfg.family == "phi3":
    qkv = (n * h + 2 * k * h, d)
    views[("blocks", "wq_ldnh")] = _View(attn + "qkv_proj.weight", qkv, (0, n * h), (n, h, d), (2, 0, 1))
    views[("blocks", "wk_ldkh")] = _View(attn + "qkv_proj.weight", qkv, (n * h, (n + k) * h), (k, h, d), (2, 0, 1))
    views[("blocks", "wv_ldkh")] = _View(attn + "qkv_proj.weight", qkv, ((n + k) * h, (n + 2 * k) * h), (k, h, d), (2, 0, 1))
    views[("blocks", "w_gate_ldf")] = _View(mlp + "gate_up_proj.weight", (2 * f, d), (0, f), (f, d), (1, 0))
    views[("blocks", "w_up_ldf")] = _View(mlp + "gate_up_proj.weight", (2 * f, d), (f, 2 * f), (f, d), (1, 0))
  else:
    views[("blocks", "wq_ldnh")] = _View(attn + "q_proj.weight", (n * h, d), None, (n, h, d), (2, 0, 1))
    views[("blocks", "wk_ldkh")] = _View(attn + "k_proj.weight", (k * h, d), None, (k, h, d), (2, 0, 1))
    views[("blocks", "wv_ldkh")] = _View(attn + "v_proj.weight", (k * h, d), None, (k, h, d), (2, 0, 1))
    views[("blocks", "w_gate_ldf")] = _View(mlp + "gate_proj.weight", (f, d), None, (f, d), (1, 0))
    views[("blocks", "w_up_ldf")] = _View(mlp + "up_proj.weight", (f, d), None, (f, d), (1, 0))
  if cfg.qkv_bias:
    views[("blocks", "bq_lnh")] = _View(attn + "q_proj.bias", (n * h,), None, (n, h), (0, 1))
    views[("blocks", "bk_lkh")] = _View(attn + "k_proj.bias", (k * h,), None, (k, h), (0, 1))
    views[("blocks", "bv_lkh")] = _View(attn + "v_proj.bias", (k * h,), None, (k, h), (0, 1))
  if cfg.mlp_bias:
    views[("blocks", "b_gate_lf")] = _View(mlp + "gate_proj.bias", (f,), None, (f,), (0,))
    views[("blocks", "b_up_lf")] = _View(mlp + "up_proj.bias", (f,), None, (f,), (0,))
    views[("blocks", "b_down_ld")] = _View(mlp + "down_proj.bias", (d,), None, (d,), (0,))
  if cfg.o_bias:
    views[("blocks", "bo_ld")] = _View(attn + "o_proj.bias", (d,), None, (d,), (0,))
  if cfg.qk_norm:
    views[("blocks", "q_norm_lh")] = _View(attn + "q_norm.weight", (h,), None, (h,), (0,))
    views[("blocks", "k_norm_lh")] = _View(attn + "k_norm.weight", (h,), None, (h,), (0,))
  return views


def hf_names(cfg: ModelConfig, path: tuple[str, ...], view: _View) -> list[str]:
  """The HF tensor names of one parameter view (one per layer when stacked)."""
  if path[0] == "blocks":
    return [view.hf_name.format(i=i) for i in range(cfg.num_layers)]
  return [view.hf_name]


def _check_tensors(cfg: ModelConfig, files: safetensors_io.SafetensorsDir,
                   views: dict[tuple[str, ...], _View]) -> None:
  """Fails before any loading if a tensor is missing or has the wrong shape."""
  for path, view in views.items():
    for name in hf_names(cfg, path, view):
      if name not in files:
        raise KeyError(
            f"{files.directory}: tensor {name!r} is missing (expected shape "
            f"{list(view.hf_shape)} for {cfg.family})")
      shape = files.shape(name)
      if shape != view.hf_shape:
        raise ValueError(
            f"{files.directory}: tensor {name!r} has shape {list(shape)}, "
            f"expected {list(view.hf_shape)} for this config")
      if files.dtype(name) not in FLOAT_DTYPES:
        raise safetensors_io.SafetensorsError(
            f"{files.file_of(name)}: tensor {name!r} has dtype "
            f"{files.dtype(name)}; weights must be one of "
            f"{', '.join(FLOAT_DTYPES)}")


def _finite(block: np.ndarray, files: safetensors_io.SafetensorsDir,
            name: str) -> np.ndarray:
  """`block`, refused if it holds NaN or inf (a broken checkpoint would
  train on garbage and fail at its first save).

  Raises:
    SafetensorsError: naming the file and the tensor.
  """
  if not np.isfinite(block).all():
    bad = int(np.size(block) - np.isfinite(block).sum())
    raise safetensors_io.SafetensorsError(
        f"{files.file_of(name)}: tensor {name!r} holds {bad} non-finite "
        "value(s) (NaN or inf); re-export the checkpoint")
  return block


def _reader(cfg: ModelConfig, files: safetensors_io.SafetensorsDir,
            path: tuple[str, ...], view: _View, dtype) -> Callable:
  """index over our (stacked) array -> numpy block of that index."""
  stacked = path[0] == "blocks"

  def one(name: str, index: tuple[slice, ...]) -> np.ndarray:
    # get_slice: only the rows of `index` leave the memory-mapped file.
    return _finite(view.read(files.slice(name), index), files,
                   name).astype(dtype)

  def read(index: tuple[slice, ...]) -> np.ndarray:
    if not stacked:
      return one(view.hf_name, index)
    layers = range(*index[0].indices(cfg.num_layers))
    return np.stack([one(view.hf_name.format(i=i), index[1:])
                     for i in layers])
  return read


def from_pretrained(path: str, *, dtype=jnp.float32, mesh: Mesh | None = None,
                    compute_dtype=None, rules=sharding_lib.DEFAULT_RULES,
                    **config_overrides) -> decoder_lib.Decoder:
  """Loads an HF safetensors directory (Qwen2, Qwen3, Phi3 or Llama) into a
  Decoder.

  Args:
    path: directory with config.json and model.safetensors (or an index),
      or a hub id in the local Hugging Face cache (`models.hub`).
    dtype: parameter dtype.
    mesh: place each parameter directly in its sharded layout on this mesh;
      each process reads only the slices its devices hold.
    compute_dtype: activation dtype (default: dtype).
    rules: logical-axis rules for the mesh.
    **config_overrides: ModelConfig fields to override (e.g. remat).

  Raises:
    FileNotFoundError, KeyError, ValueError naming the file, tensor and shape.
    ModelFileError: a hub id that is not in the local cache.
  """
  path = hub.resolve(path)
  cfg = ModelConfig.from_hf(path, param_dtype=dtype_name(dtype),
                            dtype=dtype_name(compute_dtype or dtype),
                            **config_overrides)
  files = safetensors_io.SafetensorsDir(os.fspath(path))
  views = param_views(cfg)
  _check_tensors(cfg, files, views)
  graphdef, abstract = nnx.split(decoder_lib.abstract_model(cfg))
  np_dtype = np.dtype(cfg.jnp_param_dtype)
  leaves = []
  for var_path, var in nnx.to_flat_state(abstract):
    read = _reader(cfg, files, var_path, views[var_path], np_dtype)
    shape = var.get_value().shape
    if mesh is None:
      value = jnp.asarray(read(tuple(slice(None) for _ in shape)))
    else:
      target = sharding_lib.logical_sharding(
          var.get_metadata()["logical_axes"], shape, mesh, rules,
          what="/".join(var_path))
      value = jax.make_array_from_callback(shape, target, read)
    leaves.append((var_path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def save_pretrained(model: decoder_lib.Decoder, path: str, *,
                    max_shard_bytes: int = 4 << 30, tokenizer=None) -> None:
  """Writes an HF-loadable directory: config.json + safetensors (+ index).

  The directory is written under a temporary name and renamed into place, so
  a crash never leaves a half-written checkpoint. One HF tensor is
  materialised on the host at a time. LoRA adapters (`models.lora`) are
  merged into the weights they adapt (`model` itself is left unchanged).
  """
  model = lora_lib.merged(model)
  cfg = model.cfg
  views = param_views(cfg)
  state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  np_dtype = np.dtype(cfg.jnp_param_dtype)
  # HF tensor name -> [(our path, layer index or None, view)].
  sources: dict[str, list] = {}
  for var_path, view in views.items():
    for i, name in enumerate(hf_names(cfg, var_path, view)):
      sources.setdefault(name, []).append(
          (var_path, i if var_path[0] == "blocks" else None, view))
  entries = [(name, parts[0][2].hf_shape, np_dtype) for name, parts in sources.items()]

  def get(name: str) -> np.ndarray:
    out = np.empty(sources[name][0][2].hf_shape, np_dtype)
    for var_path, layer, view in sources[name]:
      value = state[var_path].get_value()
      value = value[layer] if layer is not None else value
      view.write(out, np.asarray(jax.device_get(value)).astype(np_dtype))
    return out

  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path), dir=parent)
  try:
    shards = list(safetensors_io.iter_shards(entries, max_shard_bytes))
    by_name = {e[0]: e for e in entries}
    weight_map = {}
    for s, names in enumerate(shards):
      filename = (safetensors_io.SINGLE_FILE if len(shards) == 1
                  else f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors")
      safetensors_io.write_safetensors(
          os.path.join(tmp, filename), [by_name[n] for n in names], get,
          metadata={"format": "pt"})
      weight_map.update({n: filename for n in names})
    if len(shards) > 1:
      total = sum(int(np.prod(e[1])) * np_dtype.itemsize for e in entries)
      with open(os.path.join(tmp, safetensors_io.INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(cfg.to_hf(), f, indent=2)
    if tokenizer is not None:
      tokenizer.save_pretrained(tmp)
    if os.path.exists(path):
      old = path + ".old"
      shutil.rmtree(old, ignore_errors=True)
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


GENERATION_CONFIG = "generation_config.json"


def copy_generation_config(src: str, dst: str) -> bool:
  """Copies `src/generation_config.json` (HF's default decoding settings and
  stop ids) into `dst` when there is one; returns whether it was copied."""
  source = os.path.join(os.fspath(src), GENERATION_CONFIG)
  if not os.path.isfile(source):
    return False
  shutil.copyfile(source, os.path.join(os.fspath(dst), GENERATION_CONFIG))
  return True


def load_tokenizer(path: str):
  """The tokenizer (and its chat template) stored beside the weights.

  Remote code is never trusted: only tokenizers transformers implements load.
  """
  import transformers  # Heavy import, only needed here.
  return transformers.AutoTokenizer.from_pretrained(
      hub.resolve(path), trust_remote_code=False, local_files_only=True)


# ------------------------------------------------------------------ orbax --

ORBAX_PARAMS = "params"


def save_orbax(model: decoder_lib.Decoder, path: str, tokenizer=None) -> None:
  """Writes params as an orbax checkpoint beside the HF config.json.

  orbax writes into a temporary directory and renames it when complete, so a
  crash never leaves a readable half-checkpoint.
  """
  import orbax.checkpoint as ocp  # Heavy import, only needed here.
  path = os.path.abspath(os.fspath(path))
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, ORBAX_PARAMS), nnx.state(model, nnx.Param))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(model.cfg.to_hf(), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(path)


def load_orbax(path: str, *, dtype=None, compute_dtype=None,
               mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES,
               **config_overrides) -> decoder_lib.Decoder:
  """Restores a model written by `save_orbax` (sharded onto `mesh` if given)
  with its saved dtypes, or parameters (and activations) in `dtype`, and
  activations in `compute_dtype` if given."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.fspath(path))
  params_dir = os.path.join(path, ORBAX_PARAMS)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{path}: no orbax '{ORBAX_PARAMS}' directory")
  cfg = ModelConfig.from_hf(path, **config_overrides)
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype_name(dtype), dtype=dtype_name(dtype))
  if compute_dtype is not None:
    cfg = cfg.replace(dtype=dtype_name(compute_dtype))
  graphdef, abstract = nnx.split(decoder_lib.abstract_model(cfg))

  def target(var_path, var):
    value = var.get_value()
    sharding = None
    if mesh is not None:
      sharding = sharding_lib.logical_sharding(
          var.get_metadata()["logical_axes"], value.shape, mesh, rules,
          what="/".join(var_path))
    elif jax.devices():
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return var.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))

  leaves = [(p, target(p, v)) for p, v in nnx.to_flat_state(abstract)]
  with ocp.StandardCheckpointer() as ckptr:
    try:
      state = ckptr.restore(params_dir, nnx.from_flat_state(leaves))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for damaged files.
      raise ModelFileError(_orbax_problem(params_dir, e)) from e
  return nnx.merge(graphdef, state)


def _orbax_problem(params_dir: str, error: Exception) -> str:
  """One line for an orbax params directory that cannot be read."""
  first = str(error).splitlines()[0][:300] if str(error) else ""
  return (f"{params_dir}: unreadable orbax params ({type(error).__name__}: "
          f"{first}); re-export the model (convert.save_orbax)")


def _orbax_shapes(params_dir: str) -> dict[str, tuple[int, ...]]:
  """`{"blocks/wq_ldnh": shape}` from an orbax params directory's metadata
  (no array is read).

  Raises:
    ModelFileError: the metadata is missing or unreadable.
  """
  import orbax.checkpoint as ocp
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(params_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  except Exception as e:  # pylint: disable=broad-except
    raise ModelFileError(_orbax_problem(params_dir, e)) from e
  out = {}
  for path, leaf in flat:
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    keys = keys[:-1] if keys and keys[-1] == "value" else keys
    if hasattr(leaf, "shape"):
      out["/".join(keys)] = tuple(leaf.shape)
  if not out:
    raise ModelFileError(f"{params_dir}: no readable orbax metadata "
                         "(_METADATA missing or damaged); re-export the "
                         "model (convert.save_orbax)")
  return out


def check_model_dir(path: str, **config_overrides) -> ModelConfig:
  """Checks a model directory without loading a weight: its config.json,
  and the safetensors headers (names, shapes, dtypes) or orbax metadata
  against it.

  Args:
    path: an HF safetensors or orbax model directory.
    **config_overrides: ModelConfig fields to override (as for loading).

  Returns:
    The directory's ModelConfig.

  Raises:
    ModelFileError: one line naming the file and the key.
  """
  try:
    return _check_model_dir(hub.resolve(path), **config_overrides)
  except ModelFileError:
    raise
  except (OSError, KeyError, ValueError) as e:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise ModelFileError(text) from e


def _check_model_dir(path: str, **config_overrides) -> ModelConfig:
  """`check_model_dir` with the readers' own exception types."""
  path = os.fspath(path)
  if not os.path.isfile(os.path.join(path, "config.json")):
    found = sorted(os.listdir(path))[:8] if os.path.isdir(path) else []
    raise FileNotFoundError(
        f"{path}: no config.json (found: {', '.join(found) or 'nothing'}); "
        "expected an HF safetensors or orbax model directory")
  cfg = ModelConfig.from_hf(path, **config_overrides)
  params_dir = os.path.join(path, ORBAX_PARAMS)
  if not os.path.isdir(params_dir):
    _check_tensors(cfg, safetensors_io.SafetensorsDir(path), param_views(cfg))
    return cfg
  saved = _orbax_shapes(params_dir)
  want = {"/".join(p): tuple(v.get_value().shape) for p, v in
          nnx.to_flat_state(nnx.state(decoder_lib.abstract_model(cfg),
                                      nnx.Param))}
  for name in sorted(set(saved) | set(want)):
    if saved.get(name) != want.get(name):
      raise ModelFileError(
          f"{params_dir}: parameter {name!r} is "
          f"{saved.get(name, 'absent')} there but "
          f"{want.get(name, 'absent')} by {os.path.join(path, 'config.json')}")
  return cfg


def load_model(path: str, *, dtype=None, compute_dtype=None,
               mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES,
               preset: str = "", **config_overrides) -> decoder_lib.Decoder:
  """The one model loader: an HF safetensors directory (or a hub id in the
  local cache), an orbax model directory (`save_orbax`) or a training
  checkpoint (a step directory, a checkpoints directory or a training
  workdir: its newest step; `restore_model`).

  A model directory is checked first (`check_model_dir`): a bad file, or a
  path that is none of these, fails before any array is built, in one line
  naming the path.

  Args:
    path: the directory (or hub id).
    dtype: parameter dtype; None: float32 for HF, the saved one otherwise.
    compute_dtype: activation dtype; None: `dtype` (orbax and training
      checkpoints without `dtype`: the saved one).
    mesh: place each parameter in its sharded layout on this mesh (model
      directories load each one into place; a training checkpoint is
      restored onto one device, then moved).
    rules: logical-axis rules for the mesh.
    preset: the architecture of a training checkpoint that has no
      config.json beside it (`run_model_config`).
    **config_overrides: ModelConfig fields to override (e.g. remat).

  Raises:
    ModelFileError: a model directory that cannot be read, or a path that is
      no model directory.
    FileNotFoundError, ValueError: a training checkpoint that cannot be
      loaded as asked (`restore_model`).
  """
  step_dir = (training_step_dir(os.fspath(path))
              if os.path.isdir(path) else None)
  if step_dir is not None:
    model = restore_model(step_dir, preset)
    if dtype is not None and dtype_name(dtype) != model.cfg.param_dtype:
      raise ValueError(f"{path}: training checkpoints restore in their saved "
                       f"dtype {model.cfg.param_dtype}, not "
                       f"{dtype_name(dtype)}")
    if compute_dtype is not None or config_overrides:
      model = _with_config(model, compute_dtype, config_overrides)
    if mesh is not None:
      # Restored whole onto one device, then moved into its layout.
      sharding_lib.shard_params(model, mesh, rules)
    return model
  path = hub.resolve(path)
  check_model_dir(path)
  if os.path.isdir(os.path.join(os.fspath(path), ORBAX_PARAMS)):
    return load_orbax(path, dtype=dtype, compute_dtype=compute_dtype,
                      mesh=mesh, rules=rules, **config_overrides)
  return from_pretrained(path, dtype=jnp.float32 if dtype is None else dtype,
                         mesh=mesh, compute_dtype=compute_dtype, rules=rules,
                         **config_overrides)


def _with_config(model: decoder_lib.Decoder, compute_dtype,
                 overrides) -> decoder_lib.Decoder:
  """`model`'s params under its config with these fields replaced."""
  cfg = model.cfg.replace(**overrides)
  if compute_dtype is not None:
    cfg = cfg.replace(dtype=dtype_name(compute_dtype))
  graphdef, _ = nnx.split(decoder_lib.abstract_model(cfg))
  return nnx.merge(graphdef, nnx.state(model))


# ----------------------------------------- a training checkpoint's params --
# `train.checkpoint.Checkpointer` writes `<step>/state/` (an orbax PyTree of
# params, opt_state, step, rng); only its params are read here.

TRAINING_STATE = "state"


def training_step_dir(path: str) -> str | None:
  """The step directory of a training checkpoint at `path`, or None.

  `path` is a step dir (it holds `state/`), a `Checkpointer` directory
  (numbered step dirs; the newest is taken) or a training workdir (its
  `checkpoints/`, newest step).
  """
  if os.path.isdir(os.path.join(path, TRAINING_STATE)):
    return path
  nested = os.path.join(path, "checkpoints")
  if os.path.isdir(nested):
    found = training_step_dir(nested)
    if found is not None:
      return found
  steps = [d for d in os.listdir(path)
           if d.isdigit()
           and os.path.isdir(os.path.join(path, d, TRAINING_STATE))]
  return os.path.join(path, max(steps, key=int)) if steps else None


def run_model_config(step_dir: str, preset: str = "") -> ModelConfig:
  """The architecture of a training checkpoint's params.

  A training checkpoint holds arrays only. The architecture is the
  config.json of the run: beside the checkpoints, or of the reference
  policy `train.run` writes at the end of SFT; else the named preset.

  Raises:
    FileNotFoundError: no config.json and no preset.
  """
  checkpoints = os.path.dirname(step_dir)
  workdir = os.path.dirname(checkpoints)
  for where in (step_dir, checkpoints, workdir,
                os.path.join(workdir, "reference")):
    if os.path.isfile(os.path.join(where, "config.json")):
      return ModelConfig.from_hf(where)
  if preset:
    return presets.PRESETS[preset]
  raise FileNotFoundError(
      f"{step_dir}: a training checkpoint without a config.json beside it "
      "(or in <workdir>/reference); set --config.model_preset to its "
      f"architecture ({', '.join(presets.PRESETS)})")


def holds_lora_adapters(state_dir: str) -> bool:
  """Whether a training checkpoint's params are LoRA adapters (`model.lora`),
  from its metadata's names (no array is read)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(state_dir)
  except Exception:  # pylint: disable=broad-except
    return False  # The restore below reports a damaged checkpoint.
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return any("_lora_" in jax.tree_util.keystr(path) for path, _ in flat)


def restore_model(step_dir: str, preset: str = "") -> decoder_lib.Decoder:
  """The params of a training checkpoint's step directory as a model (the
  optimizer moments are never read), in their saved dtype.

  Raises:
    ValueError: the checkpoint holds LoRA adapters only.
    FileNotFoundError: its architecture is unknown (`run_model_config`).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  cfg = run_model_config(step_dir, preset)
  if holds_lora_adapters(os.path.join(step_dir, TRAINING_STATE)):
    raise ValueError(
        f"{step_dir}: a LoRA training checkpoint holds the adapters only "
        "(model.lora); evaluate <workdir>/reference, or a model exported "
        "with convert.save_pretrained (it merges the adapters)")
  graphdef, abstract = nnx.split(decoder_lib.abstract_model(cfg))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  # partial_restore: the optimizer moments (2x the params) are never read.
  target = {"params": abstract}
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(
        os.path.join(step_dir, TRAINING_STATE), args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  return nnx.merge(graphdef, restored["params"])
