"""The actions an assistant turn can resolve to (shared by parser, envs, verifiers).

One assistant turn is `<think>plan</think>`, optionally
`<safety_thoughts>check</safety_thoughts>`, then exactly one action. Anything that
does not fit the protocol is an `InvalidAction` carrying a human-readable reason;
model output never raises.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Union

REFUSAL_TOOL = "refusal_tool"


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """A call of a named tool with JSON arguments (non-terminal)."""
  name: str
  arguments: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Refusal:
  """`refusal_tool` was called (terminal): the agent declines the task."""
  reason: str


@dataclasses.dataclass(frozen=True)
class Answer:
  """A plain-text final answer (terminal)."""
  text: str


@dataclasses.dataclass(frozen=True)
class InvalidAction:
  """Malformed output; the environment answers with an error observation."""
  reason: str


Action = Union[ToolCall, Refusal, Answer, InvalidAction]


@dataclasses.dataclass(frozen=True)
class ParsedTurn:
  """One assistant turn split into its protocol parts."""
  action: Action
  plan: str | None = None
  safety_thoughts: str | None = None

  @property
  def used_safety_thoughts(self) -> bool:
    return self.safety_thoughts is not None


def is_terminal(action: Action) -> bool:
  return isinstance(action, (Refusal, Answer))


# Bounds on the JSON values an action may carry. Everything a parser accepts
# and every `Action` an environment runs stays inside them, so no argument
# can overflow a float, exhaust the recursion limit in `copy.deepcopy`, or
# carry text a tokenizer cannot encode. The digit bound is far below
# Python's int-parsing limit (4300 digits) and above any real quantity.
MAX_INT_DIGITS = 100
MAX_DEPTH = 32
MAX_STRING_CHARS = 50_000
MAX_JSON_NODES = 10_000

# 100 decimal digits need 333 bits; ints are measured in bits, never str().
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
  """Whether `text` holds a lone surrogate (not encodable as UTF-8)."""
  return not text.isascii() and _SURROGATE_RE.search(text) is not None


def replace_surrogates(text: str) -> str:
  """`text` with every lone surrogate replaced by U+FFFD."""
  if not has_surrogates(text):
    return text
  return _SURROGATE_RE.sub("\ufffd", text)


def check_json_value(value: Any, surrogates_ok: bool = False,
                     max_depth: int = MAX_DEPTH) -> str | None:
  """Why `value` is not a bounded JSON value, or None when it is one.

  A bounded JSON value is None, a bool, an int of at most `MAX_INT_DIGITS`
  digits, a finite float, a str of at most `MAX_STRING_CHARS` characters
  without lone surrogates, or a list / dict with str keys of such values,
  nested at most `MAX_DEPTH` deep and `MAX_JSON_NODES` values in all. The
  walk is iterative, so a value nested past the recursion limit is reported,
  not raised on. `surrogates_ok`: skip the surrogate check (the parser
  replaces them after this check). `max_depth`: the depth bound (the value
  itself is at depth 1).
  """
  stack = [(value, 1)]
  nodes = 0
  while stack:
    node, depth = stack.pop()
    nodes += 1
    if nodes > MAX_JSON_NODES:
      return f"more than {MAX_JSON_NODES} values"
    if depth > max_depth:
      return f"a value nested deeper than {MAX_DEPTH} levels"
    if node is None or isinstance(node, bool):
      continue
    if isinstance(node, int):
      if node.bit_length() > _MAX_INT_BITS:
        return f"an integer of more than {MAX_INT_DIGITS} digits"
      continue
    if isinstance(node, float):
      if node != node or node in (float("inf"), float("-inf")):
        return "a number that is not finite (NaN or infinity)"
      continue
    if isinstance(node, str):
      if len(node) > MAX_STRING_CHARS:
        return f"a string of more than {MAX_STRING_CHARS} characters"
      if not surrogates_ok and has_surrogates(node):
        return "a string with a lone surrogate (not valid Unicode)"
      continue
    if isinstance(node, list):
      stack.extend((item, depth + 1) for item in node)
      continue
    if isinstance(node, dict):
      for key, item in node.items():
        if not isinstance(key, str):
          return f"an object key of type {type(key).__name__}"
        stack.append((key, depth + 1))
        stack.append((item, depth + 1))
      continue
    return f"a value of type {type(node).__name__}"
  return None


def check_action(action: Any) -> str | None:
  """Why `action` is not a well-typed `Action`, or None when it is one.

  Parsed turns always pass; this catches `Action` objects built elsewhere
  (scripted or text policies, bridges) with wrong types, e.g.
  `ToolCall(["x"], {})` or `ToolCall("refusal_tool", "abc")`, so that
  environments and verifiers treat them as invalid actions instead of
  raising.
  """
  if isinstance(action, ToolCall):
    if not isinstance(action.name, str) or not action.name:
      return (f"tool name must be a non-empty string, got "
              f"{type(action.name).__name__}")
    if not isinstance(action.arguments, Mapping):
      return (f"arguments of {action.name[:40]!r} must be an object, got "
              f"{type(action.arguments).__name__}")
    problem = check_json_value(dict(action.arguments))
    return None if problem is None else (
        f"arguments of {action.name[:40]!r} hold {problem}")
  if isinstance(action, (Refusal, Answer)):
    text = action.reason if isinstance(action, Refusal) else action.text
    if not isinstance(text, str):
      return (f"{type(action).__name__} text must be a string, got "
              f"{type(text).__name__}")
    problem = check_json_value(text)
    return None if problem is None else f"{type(action).__name__} is {problem}"
  if isinstance(action, InvalidAction):
    return None
  return f"unsupported action type {type(action).__name__}"


def replace_surrogates_in(value: Any) -> Any:
  """A bounded JSON value (`check_json_value`) with the lone surrogates of
  every string and key replaced by U+FFFD."""
  if isinstance(value, str):
    return replace_surrogates(value)
  if isinstance(value, list):
    return [replace_surrogates_in(v) for v in value]
  if isinstance(value, dict):
    return {replace_surrogates(k): replace_surrogates_in(v)
            for k, v in value.items()}
  return value


# ------------------------------------------------------------------ JSON --

_ACTIONS = {cls.__name__: cls for cls in (ToolCall, Refusal, Answer,
                                          InvalidAction)}


def turn_to_dict(turn: ParsedTurn) -> dict[str, Any]:
  """A JSON form of one parsed turn (`turn_from_dict` inverts it)."""
  action = turn.action
  fields = ({"name": action.name, "arguments": action.arguments}
            if isinstance(action, ToolCall) else
            {"reason": action.reason} if isinstance(action, (Refusal,
                                                              InvalidAction))
            else {"text": action.text})
  return {"action": type(action).__name__, **fields, "plan": turn.plan,
          "safety_thoughts": turn.safety_thoughts}


def turn_from_dict(data: Mapping[str, Any]) -> ParsedTurn:
  data = dict(data)
  cls = _ACTIONS[data.pop("action")]
  plan, safety = data.pop("plan"), data.pop("safety_thoughts")
  return ParsedTurn(cls(**data), plan=plan, safety_thoughts=safety)


def turns_to_json(turns: Iterable[ParsedTurn]) -> list[dict[str, Any]]:
  return [turn_to_dict(t) for t in turns]


def turns_from_json(data: Iterable[Mapping[str, Any]]
                    ) -> tuple[ParsedTurn, ...]:
  return tuple(turn_from_dict(t) for t in data)
