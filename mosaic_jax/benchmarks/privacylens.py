"""PrivacyLens item files: the loader (`load_items`).

Schema (verified against the README of github.com/SALT-NLP/PrivacyLens, which
documents `data/main_data.json`, also on HF `SALT-NLP/PrivacyLens`): a JSON
list of items

  {"name": str,
   "seed": {"data_type", "data_subject", "data_sender", "data_sender_name",
            "data_recipient", "transmission_principle", "source", ...},
   "vignette": {"story", "data_type_concrete", "data_subject_concrete",
                "data_sender_concrete", "data_recipient_concrete"},
   "trajectory": {"user_name", "user_email", "user_instruction",
                  "toolkits": [str], "executable_trajectory": str,
                  "final_action": str, "sensitive_info_items": [str]}}

Only `name`, `seed`, `vignette` (objects) and the trajectory fields the agent
prompt and the leak check read are required; `seed`/`vignette` contents are
kept as they are.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import pydantic

from mosaic_jax.benchmarks import jsonfiles


class TrajectoryRecord(jsonfiles.Strict):
  """An item's `trajectory`: the fields the agent prompt and the leak check
  read (the others are kept)."""
  user_instruction: str
  toolkits: list[str]
  executable_trajectory: str
  final_action: str
  sensitive_info_items: list[str] = pydantic.Field(min_length=1)
  # Optional; a string when present.
  user_name: str = None  # type: ignore[assignment]
  user_email: str = None  # type: ignore[assignment]


class ItemRecord(jsonfiles.Strict):
  """A record of the file (module docstring)."""
  name: jsonfiles.one_of(str, int)
  seed: dict[str, Any]
  vignette: dict[str, Any]
  trajectory: TrajectoryRecord


@dataclasses.dataclass(frozen=True)
class Item:
  """One PrivacyLens data point."""
  name: str
  seed: Mapping[str, Any]
  vignette: Mapping[str, Any]
  trajectory: Mapping[str, Any]
  source: str

  @property
  def sensitive_items(self) -> tuple[str, ...]:
    return tuple(self.trajectory["sensitive_info_items"])


def load_items(path: str | os.PathLike) -> list[Item]:
  """Loads and validates a PrivacyLens JSON file (module docstring).

  Raises:
    DatasetError: missing/invalid/empty file or malformed record, naming the
      file and the record index and name.
  """
  path = os.fspath(path)
  records = jsonfiles.record_list(path, jsonfiles.read_json(path))
  items = []
  for _, record, valid, key in jsonfiles.unique_records(
      path, records, ItemRecord, "name"):
    # As written in the file (every trajectory field, absent ones absent).
    items.append(Item(key, dict(valid.seed), dict(valid.vignette),
                      dict(record["trajectory"]), path))
  return items
