"""Settings dataclasses read from config sections (`ml_collections`).

A settings dataclass derives from `Section`: it names its config section
(`SECTION`, e.g. "rl") and lists what is wrong with a set of its field
values (`field_problems`, one line each naming `section.field`). The same
check runs twice from one place: on construction (`__post_init__` raises
`ValueError` with every problem) and on a whole config before any compute
(`section_problems`, which `train.validate` gathers with the checks that
span sections). The checkers below (`choice`, `at_least`, `finite`,
`divides`) write every such line the same way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping


def from_section(cls: type, section: Mapping[str, Any] | Any) -> Any:
  """A settings dataclass from a config section's fields of the same names.

  Fields the section lacks keep their defaults; the section's other fields
  (owned by other consumers of the section) are ignored. List values of
  tuple-typed fields become tuples (a ConfigDict keeps what it was given).
  """
  return cls(**_given(cls, section))


def _given(cls: type, section: Mapping[str, Any] | Any) -> dict[str, Any]:
  """The section's values of `cls`'s fields (list -> tuple for tuples)."""
  values = dict(section)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in values:
      value = values[f.name]
      if isinstance(value, list) and str(f.type).startswith("tuple"):
        value = tuple(value)
      out[f.name] = value
  return out


def _defaults(cls: type) -> dict[str, Any]:
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


class Section:
  """Base of a settings dataclass read from config section `SECTION`."""

  SECTION: ClassVar[str] = ""

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """What is wrong with these values of the fields (every field present),
    one line each naming `SECTION.field`; [] when they can run. Must not
    assume a value has its field's type (a config may hold anything)."""
    del values
    return []

  @classmethod
  def section_problems(cls, section: Mapping[str, Any] | Any) -> list[str]:
    """`field_problems` of a config section (absent fields: defaults)."""
    return cls.field_problems({**_defaults(cls), **_given(cls, section)})

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | Any) -> Any:
    """From a config section with these field names (others ignored)."""
    return from_section(cls, section)

  def __post_init__(self):
    problems = type(self).field_problems(
        {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
    if problems:
      raise ValueError("; ".join(problems))


# ------------------------------------------------------------- checkers --
# Each appends one line to `problems` when `value` fails.


def choice(problems: list[str], name: str, value: Any, allowed) -> None:
  """`value` must be one of `allowed`."""
  if value not in allowed:
    problems.append(f"{name}: {value!r} is not one of "
                    f"{', '.join(map(repr, sorted(allowed)))}")


def at_least(problems: list[str], name: str, value: Any, low: int) -> None:
  """`value` must be an integer (not a bool) >= `low`."""
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    problems.append(f"{name}: must be an integer >= {low}, got {value!r}")


def finite(problems: list[str], name: str, value: Any, low: float, *,
           strict: bool) -> None:
  """`value` must be a finite number > `low` (`strict`) or >= `low`."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > low if strict else value >= low))
  if not ok:
    problems.append(f"{name}: must be a finite number "
                    f"{'>' if strict else '>='} {low}, got {value!r}")


def divides(problems: list[str], name: str, part: int, whole: int,
            whole_name: str) -> None:
  """`part` (a micro-batch size; 0: none) must divide `whole`."""
  if part > 0 and whole % part:
    problems.append(f"{name}={part} does not divide {whole_name}={whole}; "
                    f"set {name} to a divisor of {whole} (0: no "
                    "micro-batching)")
