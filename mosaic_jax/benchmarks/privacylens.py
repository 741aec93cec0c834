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

from mosaic_jax.benchmarks import jsonfiles
from mosaic_jax.benchmarks.jsonfiles import DatasetError

_TRAJECTORY_FIELDS = {"user_instruction": str, "toolkits": list,
                      "executable_trajectory": str, "final_action": str,
                      "sensitive_info_items": list, "user_name": str,
                      "user_email": str}


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
  items, seen = [], {}
  for index, record in enumerate(records):
    jsonfiles.check_fields(path, index, record,
                           {"name": (str, int), "seed": dict, "vignette": dict,
                            "trajectory": dict}, id_key="name")
    label = jsonfiles.record_label(index, record, "name")
    trajectory = record["trajectory"]
    jsonfiles.check_fields(path, index, trajectory, _TRAJECTORY_FIELDS,
                           optional=("user_name", "user_email"),
                           label=f"{label}: trajectory")
    jsonfiles.check_string_list(path, label, "trajectory.toolkits",
                                trajectory["toolkits"])
    jsonfiles.check_string_list(path, label, "trajectory.sensitive_info_items",
                                trajectory["sensitive_info_items"],
                                non_empty=True)
    key = str(record["name"])
    if key in seen:
      raise DatasetError(f"{path}: {label}: duplicate name, first used by "
                         f"record {seen[key]}")
    seen[key] = index
    items.append(Item(key, dict(record["seed"]), dict(record["vignette"]),
                      dict(trajectory), path))
  return items
