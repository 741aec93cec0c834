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
from typing import Annotated, Any, Mapping

import pydantic

from mosaic_jax.benchmarks import jsonfiles

FIELDS = ("risk_source", "failure_mode", "real_world_harm")


_LABELS = {0: False, 1: True, "safe": False, "unsafe": True}


def _as_list(value: Any) -> Any:
  """A taxonomy value as a list: absent/null/"" -> [], "x" -> ["x"]."""
  if value is None or value == "":
    return []
  return [value] if isinstance(value, str) else value


# str | [str, ...] | null, read as a list of strings.
_Taxonomy = Annotated[list[str], pydantic.BeforeValidator(_as_list)]


def _turns(contents: list[Any]) -> list[dict[str, Any]]:
  """`contents` flattened one level (a round may be a list of turns)."""
  turns = []
  for i, item in enumerate(contents):
    for turn in (item if isinstance(item, list) else [item]):
      if not isinstance(turn, Mapping) or not isinstance(turn.get("role"),
                                                          str):
        raise jsonfiles.invalid(
            "must be a turn object with a string 'role'", index=i)
      turns.append(dict(turn))
  if not turns:
    raise jsonfiles.invalid("has no turns")
  return turns


class TrajectoryRecord(jsonfiles.Strict):
  """A record of the file (module docstring); `contents` flattened to its
  turns, `label` checked against the published values."""
  contents: Annotated[list[Any], pydantic.AfterValidator(_turns)]
  label: jsonfiles.one_of(int, str)
  id: jsonfiles.one_of(str, int) = None
  risk_source: _Taxonomy = []
  failure_mode: _Taxonomy = []
  real_world_harm: _Taxonomy = []

  @pydantic.field_validator("label")
  @classmethod
  def _known_label(cls, value: Any) -> Any:
    key = value.strip().casefold() if isinstance(value, str) else value
    if key not in _LABELS:
      raise jsonfiles.invalid("must be 0, 1, 'safe' or 'unsafe', got "
                              "{got}", got=repr(value))
    return key


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One ATBench item: turns, the gold label and the taxonomy labels."""
  id: str
  turns: tuple[Mapping[str, Any], ...]
  unsafe: bool
  taxonomy: Mapping[str, tuple[str, ...]]
  source: str


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
  out = []
  for _, _, valid, key in jsonfiles.unique_records(
      path, records, TrajectoryRecord, "id"):
    taxonomy = {f: tuple(getattr(valid, f)) for f in FIELDS
                if getattr(valid, f)}
    out.append(Trajectory(key, tuple(valid.contents), _LABELS[valid.label],
                          taxonomy, path))
  return out
