"""AgentHarm behaviour files: the loader (`load_behaviors`).

Schema (verified against the dataset card of HF `ai-safety-institute/AgentHarm`,
whose configs read `benchmark/{harmful,benign}_behaviors_{test_public,
validation}.json` with `field: behaviors`, and against the inspect_evals
`agentharm` loader): each file is `{"behaviors": [record, ...]}`, a record is

  {"id": "1-2", "id_original": "68", "name": str, "category": str,
   "prompt": str, "target_functions": [str, ...], "grading_function": str,
   "detailed_prompt": bool, "hint_included": bool}
"""
from __future__ import annotations

import dataclasses
import os
import re

import pydantic

from mosaic_jax.benchmarks import jsonfiles
from mosaic_jax.benchmarks.jsonfiles import DatasetError


class BehaviorRecord(jsonfiles.Strict):
  """A record of the file, as published (module docstring)."""
  id: jsonfiles.one_of(str, int)
  id_original: jsonfiles.one_of(str, int)
  name: str
  category: str
  prompt: str
  target_functions: list[str] = pydantic.Field(min_length=1)
  grading_function: str
  detailed_prompt: bool
  hint_included: bool


_FILE_RE = re.compile(r"(harmful|benign)_behaviors_(\w+)\.json$")


@dataclasses.dataclass(frozen=True)
class Behavior:
  """One AgentHarm behaviour (published fields plus where it came from)."""
  id: str
  id_original: str
  name: str
  category: str
  prompt: str
  target_functions: tuple[str, ...]
  grading_function: str
  detailed_prompt: bool
  hint_included: bool
  harmful: bool
  split: str
  source: str


def _kind_and_split(path: str, harmful: bool | None) -> tuple[bool, str]:
  match = _FILE_RE.search(os.path.basename(path))
  if harmful is None and match is None:
    raise DatasetError(f"{path}: cannot tell harmful from benign behaviours "
                       "by the file name; pass harmful=True or False")
  if harmful is None:
    harmful = match.group(1) == "harmful"
  return harmful, match.group(2) if match else "unknown"


def load_behaviors(path: str | os.PathLike, harmful: bool | None = None
                   ) -> list[Behavior]:
  """Loads and validates one AgentHarm behaviours file.

  Args:
    path: a JSON file in the published schema (module docstring).
    harmful: whether the file holds harmful behaviours; None infers it from
      the published file name (`harmful_behaviors_*.json` /
      `benign_behaviors_*.json`).

  Returns:
    The behaviours, in file order.

  Raises:
    DatasetError: missing/invalid/empty file or a malformed or duplicate
      record; the message names the file and the record index and id.
  """
  path = os.fspath(path)
  is_harmful, split = _kind_and_split(path, harmful)
  records = jsonfiles.record_list(path, jsonfiles.read_json(path), "behaviors")
  behaviors = []
  for _, _, valid, key in jsonfiles.unique_records(
      path, records, BehaviorRecord, "id"):
    behaviors.append(Behavior(
        id=key, id_original=str(valid.id_original), name=valid.name,
        category=valid.category, prompt=valid.prompt,
        target_functions=tuple(valid.target_functions),
        grading_function=valid.grading_function,
        detailed_prompt=valid.detailed_prompt,
        hint_included=valid.hint_included, harmful=is_harmful,
        split=split, source=path))
  return behaviors
