"""Hugging Face hub ids as model paths, through the local cache only.

`resolve("Qwen/Qwen3-0.6B")` is the snapshot directory of that model in the
Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`), as `huggingface-cli download Qwen/Qwen3-0.6B`
leaves it. Nothing is downloaded: loading never touches the network, so a
run offline works whenever the files are there, and fails in one line that
says how to get them when they are not.
"""
from __future__ import annotations

import os
import re

from mosaic_jax.models.config import ModelFileError

# `owner/name`, as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str) -> bool:
  """Whether `path` reads as `owner/name` and is not a local path."""
  path = os.fspath(path)
  return (bool(_HUB_ID.match(path)) and not os.path.exists(path)
          and not path.startswith("."))


def cache_dir() -> str | None:
  """The hub cache directory the environment names (None: the library's
  default). Read at call time, so a changed `HF_HUB_CACHE` takes effect."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def resolve(path: str | os.PathLike, revision: str | None = None) -> str:
  """A local model directory for `path`: `path` itself when it is not a hub
  id, else the cached snapshot of that hub id.

  Args:
    path: a directory, or a hub id `owner/name`.
    revision: branch, tag or commit of the snapshot (default: main).

  Raises:
    ModelFileError: a hub id that is not in the local cache (the message
      names the id, the cache directory and the download command).
  """
  path = os.fspath(path)
  if not is_hub_id(path):
    return path
  import huggingface_hub  # Only needed for hub ids.
  where = cache_dir()
  try:
    return huggingface_hub.snapshot_download(
        path, revision=revision, cache_dir=where, local_files_only=True)
  except (huggingface_hub.errors.LocalEntryNotFoundError, OSError,
          ValueError) as e:
    shown = where or huggingface_hub.constants.HF_HUB_CACHE
    raise ModelFileError(
        f"{path}: not a local directory, and not in the Hugging Face cache "
        f"{shown} ({type(e).__name__}); download it first: "
        f"huggingface-cli download {path}") from None
