"""Settings dataclasses read from config sections (`ml_collections`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def from_section(cls: type, section: Mapping[str, Any] | Any) -> Any:
  """A settings dataclass from a config section's fields of the same names.

  Fields the section lacks keep their defaults; the section's other fields
  (owned by other consumers of the section) are ignored. List values of
  tuple-typed fields become tuples (a ConfigDict keeps what it was given).
  """
  values = dict(section)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      value = values[f.name]
      if isinstance(value, list) and str(f.type).startswith("tuple"):
        value = tuple(value)
      out[f.name] = value
  return cls(**out)
