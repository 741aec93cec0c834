"""Safetensors reading through the library's own reader, and streaming
writing (no pickle, ever).

The format is an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets: [begin, end]}}`, then raw little-endian
bytes. Tensors are read with `safetensors.safe_open(..., framework="numpy")`:
the file is memory-mapped and `get_slice(name)[index]` copies only the bytes
of that slice, so a process loading its shard of a checkpoint reads just that
shard, one tensor at a time; bfloat16 comes back as `ml_dtypes.bfloat16`.
The header is also parsed here, before the library opens the file, so a
malformed or truncated file fails in one line naming the file, the tensor
and the key (the library's own errors name neither).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np
import safetensors

from mosaic_jax.models.config import ModelFileError

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsError(ModelFileError):
  """A checkpoint file is missing, truncated or inconsistent."""


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def check_entry(path: str, name: str, entry, data_size: int) -> None:
  """Fails unless one header entry describes bytes inside the data section.

  Args:
    path: the file (for the message).
    name: the tensor's name.
    entry: its header value, `{dtype, shape, data_offsets: [begin, end]}`.
    data_size: bytes after the header.

  Raises:
    SafetensorsError: naming the file, the tensor and the bad key.
  """
  where = f"{path}: tensor {name!r}"
  if not isinstance(entry, dict):
    raise SafetensorsError(f"{where}: header entry must be an object with "
                           f"dtype, shape and data_offsets, got "
                           f"{type(entry).__name__}")
  for key in ("dtype", "shape", "data_offsets"):
    if key not in entry:
      raise SafetensorsError(f"{where}: header entry has no {key!r}")
  dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
  if not isinstance(dtype, str):
    raise SafetensorsError(f"{where}: dtype must be a string, got {dtype!r}")
  if not isinstance(shape, list) or not all(_is_int(d) and d >= 0
                                            for d in shape):
    raise SafetensorsError(f"{where}: shape must be a list of integers >= 0, "
                           f"got {shape!r}")
  if (not isinstance(offsets, list) or len(offsets) != 2
      or not all(_is_int(o) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1]):
    raise SafetensorsError(f"{where}: data_offsets must be [begin, end] with "
                           f"0 <= begin <= end, got {offsets!r}")
  if offsets[1] > data_size:
    raise SafetensorsError(
        f"{where}: truncated: data_offsets end at byte {offsets[1]} of the "
        f"data section, which has {data_size}")
  if dtype in _DTYPES:
    want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != want:
      raise SafetensorsError(
          f"{where}: dtype {dtype} and shape {shape} need {want} bytes, but "
          f"data_offsets {offsets} hold {offsets[1] - offsets[0]}")


class _File:
  """One .safetensors file: header parsed eagerly, data mapped lazily."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise SafetensorsError(f"{path}: truncated (no header length)")
      (n,) = struct.unpack("<Q", raw)
      if n > size - 8:
        raise SafetensorsError(
            f"{path}: truncated or not safetensors (header of {n} bytes, file of {size})")
      try:
        header = json.loads(f.read(n))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: unreadable header ({e})") from None
      except RecursionError:
        raise SafetensorsError(f"{path}: header nested too deeply") from None
    if not isinstance(header, dict):
      raise SafetensorsError(f"{path}: header must be a JSON object "
                             f"{{name: {{dtype, shape, data_offsets}}}}, got "
                             f"{type(header).__name__}")
    header.pop("__metadata__", None)
    self.data_start = 8 + n
    for name, entry in header.items():
      check_entry(path, name, entry, size - self.data_start)
    self.entries = header
    self._handle = None

  def _open(self):
    """The library's reader, opened on first use (the file stays mapped)."""
    if self._handle is None:
      try:
        self._handle = safetensors.safe_open(self.path, framework="numpy")
      except (safetensors.SafetensorError, OSError) as e:
        raise SafetensorsError(f"{self.path}: unreadable safetensors "
                               f"({e})") from None
    return self._handle

  def _check_dtype(self, name: str) -> None:
    dtype = self.entries[name]["dtype"]
    if dtype not in _DTYPES:
      raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported "
                             f"dtype {dtype}")

  def slice(self, name: str) -> Any:
    """A lazy view of one tensor: indexing it with a tuple of unit-step
    slices reads only those bytes into a numpy array."""
    self._check_dtype(name)
    return self._open().get_slice(name)

  def array(self, name: str) -> np.ndarray:
    """One whole tensor as a numpy array."""
    self._check_dtype(name)
    return self._open().get_tensor(name)


class SafetensorsDir:
  """All tensors of an HF checkpoint directory (one file or an indexed set)."""

  def __init__(self, directory: str):
    self.directory = directory
    index_path = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(index_path):
      weight_map = _read_weight_map(index_path)
    elif os.path.isfile(single):
      weight_map = None
    else:
      raise FileNotFoundError(
          f"{directory}: no {SINGLE_FILE} or {INDEX_FILE} (safetensors only; "
          "pickle checkpoints are never loaded)")
    self._files: dict[str, _File] = {}
    if weight_map is None:
      f = self._open(SINGLE_FILE)
      self._where = {name: SINGLE_FILE for name in f.entries}
    else:
      self._where = dict(weight_map)
      for filename in sorted(set(weight_map.values())):
        self._open(filename)

  def _open(self, filename: str) -> _File:
    if filename not in self._files:
      path = _inside(self.directory, filename)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: listed in the checkpoint but missing")
      self._files[filename] = _File(path)
    return self._files[filename]

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def names(self) -> list[str]:
    return sorted(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entry_file(name).entries[name]["shape"])

  def dtype(self, name: str) -> str:
    """The tensor's safetensors dtype name (`F32`, `BF16`, ...)."""
    return self._entry_file(name).entries[name]["dtype"]

  def file_of(self, name: str) -> str:
    """The path of the file that holds the tensor."""
    return self._entry_file(name).path

  def _entry_file(self, name: str) -> _File:
    if name not in self._where:
      raise KeyError(f"{self.directory}: tensor {name!r} is missing from the checkpoint")
    f = self._open(self._where[name])
    if name not in f.entries:
      raise SafetensorsError(f"{f.path}: index lists {name!r} but the file lacks it")
    return f

  def slice(self, name: str) -> Any:
    """A lazy view of one tensor (`_File.slice`): index it to read part."""
    return self._entry_file(name).slice(name)

  def array(self, name: str) -> np.ndarray:
    """One whole tensor as a numpy array."""
    return self._entry_file(name).array(name)


def _read_weight_map(index_path: str) -> dict[str, str]:
  """The index's `weight_map` {tensor name: file name}.

  Raises:
    SafetensorsError: the index is not JSON or the map is not an object of
      strings.
  """
  try:
    with open(index_path, encoding="utf-8") as f:
      index = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise SafetensorsError(f"{index_path}: not a JSON index "
                           f"({type(e).__name__}: {e})") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise SafetensorsError(f"{index_path}: no 'weight_map' object")
  for name, filename in weight_map.items():
    if not isinstance(filename, str) or not filename:
      raise SafetensorsError(f"{index_path}: weight_map[{name!r}] must be a "
                             f"file name, got {filename!r}")
  return weight_map


def _inside(directory: str, filename: str) -> str:
  """`directory/filename`, refused unless it resolves inside `directory`
  (an index naming `../../etc/passwd` or an absolute path, or a link out).

  Raises:
    SafetensorsError: naming the file and the directory.
  """
  root = os.path.realpath(directory)
  path = os.path.realpath(os.path.join(root, filename))
  if os.path.commonpath([root, path]) != root or path == root:
    raise SafetensorsError(
        f"{os.path.join(directory, INDEX_FILE)}: weight_map names "
        f"{filename!r}, which is outside the model directory {directory}; "
        "only files inside it are read")
  return os.path.join(directory, filename)


def write_safetensors(path: str, entries: list[tuple[str, tuple[int, ...], np.dtype]],
                      get: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes tensors one at a time: only one is materialised (by `get`) at once.

  Args:
    path: output file.
    entries: (name, shape, dtype) of every tensor, in file order.
    get: name -> array of that shape and dtype.
    metadata: optional string metadata for the header.
  """
  header, offset = {}, 0
  for name, shape, dtype in entries:
    dt = np.dtype(dtype)
    if dt not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: unsupported dtype {dt}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    header[name] = {"dtype": _NAMES[dt], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in entries:
      arr = np.ascontiguousarray(get(name), dtype=dtype)
      if arr.shape != tuple(shape):
        raise SafetensorsError(f"tensor {name!r}: got shape {arr.shape}, declared {shape}")
      f.write(arr.tobytes())


def iter_shards(named: list[tuple[str, tuple[int, ...], np.dtype]],
                max_bytes: int) -> Iterator[list[str]]:
  """Groups tensor names into consecutive shards of at most max_bytes each."""
  shard, size = [], 0
  for name, shape, dtype in named:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if shard and size + nbytes > max_bytes:
      yield shard
      shard, size = [], 0
    shard.append(name)
    size += nbytes
  if shard:
    yield shard
