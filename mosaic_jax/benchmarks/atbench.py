"""ATBench trajectory files: the loader (`load_trajectories`).

Schema. The dataset card of HF `AI45Research/ATBench` (configs `ATBench` ->
`ATBench/test.json`, 1,000 trajectories; `ATBench500` -> `ATBench500/test.json`,
the original 500) documents a trajectory-level binary `label` (0 safe,
1 unsafe) and a three-axis taxonomy: risk source, failure mode, real-world
harm. Third-party loaders read those as `risk_source`, `failure_mode`,
`real_world_harm`, and the trajectories follow the R-Judge/ASSEBench layout of
a `contents` list of turns `{"role": "user"|"agent"|"environment", "content"
| "thought" | "action"}` (possibly nested one level, one list per round).
The card itself does not spell the per-record keys out, so this loader is
deliberately tolerant where the sources disagree and strict elsewhere:

  record := {"contents": [turn | [turn, ...], ...],     required, non-empty
             "label": 0 | 1 | "safe" | "unsafe",        required
             "id": str | int,                  optional (else "record-<index>")
             "risk_source" | "failure_mode" | "real_world_harm":
                 str | [str, ...] | null                optional}
  turn   := {"role": str, ...string or JSON fields}

The file is a JSON list of records (or `{"data": [...]}`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from mosaic_jax.benchmarks import jsonfiles
from mosaic_jax.benchmarks.jsonfiles import DatasetError

FIELDS = ("risk_source", "failure_mode", "real_world_harm")


_LABELS = {0: False, 1: True, "safe": False, "unsafe": True}


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One ATBench item: turns, the gold label and the taxonomy labels."""
  id: str
  turns: tuple[Mapping[str, Any], ...]
  unsafe: bool
  taxonomy: Mapping[str, tuple[str, ...]]
  source: str


def _flatten(path: str, label: str, contents: list[Any]
             ) -> list[Mapping[str, Any]]:
  turns = []
  for i, item in enumerate(contents):
    for turn in (item if isinstance(item, list) else [item]):
      if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str):
        raise DatasetError(f"{path}: {label}: contents[{i}] must be a turn "
                           "object with a string 'role'")
      turns.append(dict(turn))
  if not turns:
    raise DatasetError(f"{path}: {label}: field 'contents' has no turns")
  return turns


def _taxonomy(path: str, label: str, record: Mapping[str, Any]
              ) -> dict[str, tuple[str, ...]]:
  out = {}
  for field in FIELDS:
    value = record.get(field)
    if value in (None, "", []):
      continue
    values = value if isinstance(value, list) else [value]
    jsonfiles.check_string_list(path, label, field, values)
    out[field] = tuple(values)
  return out


def load_trajectories(path: str | os.PathLike) -> list[Trajectory]:
  """Loads and validates an ATBench JSON file (schema in the module docstring).

  Raises:
    DatasetError: missing/invalid/empty file or malformed record, naming the
      file and the record index and id.
  """
  path = os.fspath(path)
  data = jsonfiles.read_json(path)
  records = jsonfiles.record_list(
      path, data, "data" if isinstance(data, Mapping) else None)
  out, seen = [], {}
  for index, record in enumerate(records):
    jsonfiles.check_fields(path, index, record,
                           {"contents": list, "label": (int, str),
                            "id": (str, int)},
                           id_key="id", optional=("id",))
    label = jsonfiles.record_label(index, record, "id")
    gold = record["label"]
    if isinstance(gold, str):
      gold = gold.strip().casefold()
    if gold not in _LABELS:
      raise DatasetError(f"{path}: {label}: field 'label' must be 0, 1, "
                         f"'safe' or 'unsafe', got {record['label']!r}")
    key = str(record.get("id", f"record-{index}"))
    if key in seen:
      raise DatasetError(f"{path}: {label}: duplicate id, first used by "
                         f"record {seen[key]}")
    seen[key] = index
    out.append(Trajectory(key, tuple(_flatten(path, label, record["contents"])),
                          _LABELS[gold], _taxonomy(path, label, record), path))
  return out
