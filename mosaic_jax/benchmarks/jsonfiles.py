"""Reading benchmark JSON files with errors that name the file and the record.

Hub-hosted benchmarks cannot be downloaded at run time, so every loader reads
a local file in the published schema. A malformed file must fail loudly and
point at the exact place: `DatasetError` messages start with the file path and,
for a bad record, its index and id (`file: record 3 (id '1-2'): ...`).

Records are checked by pydantic models of their schema (`Strict`, one per
benchmark beside its loader); `validate` turns the first pydantic error into
that message, naming the field (`'trajectory.toolkits'[0]`) and what it must
be.
"""
from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Iterator, Mapping, Sequence, TypeVar

import pydantic
import pydantic_core

# Deepest nesting a benchmark file may have: the published schemas nest a
# handful of levels; Python's parser dies of recursion near 1,000.
MAX_DEPTH = 64
# Strings (skipped whole), structure characters and the non-standard
# literals Python's json accepts (NaN, Infinity, -Infinity).
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]|-?Infinity|NaN')


class DatasetError(ValueError):
  """A benchmark file is missing, unreadable, empty or malformed."""


def read_json(path: str | os.PathLike) -> Any:
  """The parsed JSON content of `path`.

  Raises:
    DatasetError: the file is missing or not valid JSON (the message names the
      file and, for a syntax error, the line and column).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DatasetError(f"{path}: no such file")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    prefix = raw[:e.start].decode("utf-8", errors="replace")
    where, _ = scan(prefix + " ")
    raise DatasetError(
        f"{path}: not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
        f"({_position(prefix, len(prefix))}, in {where}); re-save the "
        "file as UTF-8") from None
  where, problem = scan(text)
  if problem:
    raise DatasetError(f"{path}: {where}: {problem}")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: invalid JSON at line {e.lineno} column "
                       f"{e.colno}: {e.msg}") from e


def _position(text: str, offset: int) -> str:
  line = text.count("\n", 0, offset) + 1
  return f"line {line} column {offset - text.rfind(chr(10), 0, offset)}"


def _path_text(stack: list[list[Any]]) -> str:
  """`behaviors[3].prompt` for the open containers' current members."""
  parts = []
  for kind, index, key in stack:
    if kind == "[":
      parts.append(f"[{index}]")
    elif key is not None:
      parts.append(f".{key}")
  if len(parts) > 8:
    parts = parts[:8] + [f"... ({len(parts) - 8} more levels)"]
  text = "".join(parts).lstrip(".")
  return f"record {text}" if text else "the top level"


def scan(text: str, max_depth: int = MAX_DEPTH) -> tuple[str, str | None]:
  """Where the end of `text` is, and the first thing Python's parser would
  accept but a benchmark file must not have, without parsing values.

  Walks strings and structure characters only (a regular expression, so
  it is linear and never recurses). Problems: nesting deeper than
  `max_depth`, and the non-standard literals `NaN`, `Infinity`, `-Infinity`.

  Returns:
    (`record behaviors[3].prompt` or `the top level`: the member being
    read where the scan stopped, the problem with its line and column or
    None).
  """
  stack: list[list[Any]] = []  # [kind, element index, current key]
  last_string = None
  for m in _TOKENS.finditer(text):
    token = m.group()
    if token[0] == '"':
      last_string = token
      continue
    if token in ("[", "{"):
      stack.append([token, 0, None])
      if len(stack) > max_depth:
        return (_path_text(stack[:-1]),
                f"nested deeper than {max_depth} levels at "
                f"{_position(text, m.start())}")
    elif token in ("]", "}"):
      if stack:
        stack.pop()
    elif token == ",":
      if stack:
        stack[-1][1] += 1
        stack[-1][2] = None
    elif token == ":":
      if stack and last_string is not None:
        try:
          stack[-1][2] = json.loads(last_string)
        except ValueError:
          stack[-1][2] = last_string
    else:
      return (_path_text(stack),
              f"non-finite number {token} at {_position(text, m.start())} "
              "(JSON has no NaN or Infinity; write null or a finite number)")
    last_string = None
  return _path_text(stack), None


def record_list(path: str, data: Any, key: str | None = None) -> list[Any]:
  """The list of records of a file: `data` itself or `data[key]`.

  Raises:
    DatasetError: the records are not a list, or the list is empty.
  """
  where = f"top-level key '{key}'" if key else "top level"
  if key is not None:
    if not isinstance(data, Mapping) or key not in data:
      raise DatasetError(f"{path}: expected a JSON object with a '{key}' list")
    data = data[key]
  if not isinstance(data, list):
    raise DatasetError(f"{path}: {where} must be a list of records, got "
                       f"{type(data).__name__}")
  if not data:
    raise DatasetError(f"{path}: no records (empty list at {where})")
  return data


def record_label(index: int, record: Any, id_key: str | None) -> str:
  """`record 3 (id '1-2')`, or `record 3` when the record has no id."""
  if id_key and isinstance(record, Mapping) and id_key in record:
    return f"record {index} ({id_key} {record[id_key]!r})"
  return f"record {index}"


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", list: "a list", dict: "an object"}
# pydantic's error types -> what the value must be.
_PYDANTIC_WANTED = {"string_type": "a string", "bool_type": "a boolean",
                    "int_type": "an integer", "float_type": "a number",
                    "list_type": "a list", "dict_type": "an object",
                    "model_type": "an object", "model_attributes_type":
                    "an object"}


class Strict(pydantic.BaseModel):
  """A benchmark record's schema: JSON types as they are (no coercion: "1"
  is not an integer, 1 is not a string, true is not an integer); fields
  the schema does not name are kept (`model_extra`)."""
  model_config = pydantic.ConfigDict(strict=True, extra="allow",
                                     frozen=True)


def one_of(*types: type) -> Any:
  """A field type accepting a value of any of `types` as it is (a boolean
  only when `bool` is among them), for a field the published files write
  in several types (an id as "1-2" or 68)."""
  wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)

  def check(value: Any) -> Any:
    if (isinstance(value, bool) and bool not in types) or not isinstance(
        value, types):
      raise pydantic_core.PydanticCustomError(
          "wrong_type", "must be {wanted}, got {got}",
          {"wanted": wanted, "got": type(value).__name__})
    return value
  return Annotated[Any, pydantic.BeforeValidator(check)]


def invalid(message: str, **context: Any) -> pydantic_core.PydanticCustomError:
  """A validator's error, shown as `field '<name>' <message>`; an `index`
  in `context` is appended to the name (`'contents'[0]`)."""
  return pydantic_core.PydanticCustomError("invalid", message, context)


def _field_text(loc: Sequence[Any], index: Any = None) -> str:
  """`'trajectory.toolkits'[0]` of pydantic's location tuple."""
  names = [str(p) for p in loc if not isinstance(p, int)]
  indices = "".join(f"[{p}]" for p in loc if isinstance(p, int))
  if index is not None:
    indices += f"[{index}]"
  return f"'{'.'.join(names)}'{indices}"


def describe(error: Mapping[str, Any]) -> str:
  """One pydantic error as this module's messages write it: `missing field
  'x'`, `field 'x'[1] must be a string, got int`, `expected a JSON object,
  got list` (the record itself)."""
  loc, kind = tuple(error["loc"]), error["type"]
  got = type(error.get("input")).__name__
  if not loc:
    return f"expected a JSON object, got {got}"
  field = _field_text(loc, (error.get("ctx") or {}).get("index"))
  if kind == "missing":
    return f"missing field {field}"
  if kind in _PYDANTIC_WANTED:
    return f"field {field} must be {_PYDANTIC_WANTED[kind]}, got {got}"
  if kind == "too_short":
    return f"field {field} must not be empty"
  return f"field {field} {error['msg']}"


ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def validate(path: str, index: int, record: Any, model: type[ModelT],
             id_key: str | None = None) -> ModelT:
  """`record` as `model` (a `Strict` schema).

  Args:
    path: the file, for the message.
    index: the record's position in the file.
    record: the parsed record.
    model: its schema.
    id_key: the record's id field, named in the message when present.

  Raises:
    DatasetError: `{path}: record 3 (id '1-2'): field 'x' ...`, naming the
      first bad field (in the schema's order) and what it must be.
  """
  try:
    return model.model_validate(record)
  except pydantic.ValidationError as e:
    raise DatasetError(f"{path}: {record_label(index, record, id_key)}: "
                       f"{describe(e.errors()[0])}") from None


def unique_records(path: str, records: Sequence[Any], model: type[ModelT],
                   id_key: str) -> Iterator[tuple[int, Any, ModelT, str]]:
  """Each record of a file validated, with its unique key.

  The key is the record's `id_key` field as a string, or `record-<index>`
  when the schema lets that field be absent (None).

  Yields:
    (index, record as parsed, record as `model`, key), in file order.

  Raises:
    DatasetError: a malformed record (`validate`), or `{path}: record 3
      (id '1-2'): duplicate id, first used by record 1`.
  """
  seen: dict[str, int] = {}
  for index, record in enumerate(records):
    valid = validate(path, index, record, model, id_key)
    value = getattr(valid, id_key)
    key = str(value if value is not None else f"record-{index}")
    if key in seen:
      raise DatasetError(f"{path}: {record_label(index, record, id_key)}: "
                         f"duplicate {id_key}, first used by record "
                         f"{seen[key]}")
    seen[key] = index
    yield index, record, valid, key
