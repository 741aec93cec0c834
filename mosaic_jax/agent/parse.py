"""Parse one assistant turn into a protocol action; never raises on model output.

Grammar (blocks separated by whitespace; see `protocol.format_turn`):

  turn   := [<think> plan </think>] [<safety_thoughts> check </safety_thoughts>]
            action
  action := <tool_call> {"name": str, "arguments": {...}} </tool_call> | text

Anything else becomes an `InvalidAction` whose reason names the first problem
found. The scan walks the protocol tags left to right, so a malformed turn is
described by where it goes wrong (nested, unterminated, duplicated, out of
order) rather than by a generic failure.
"""
from __future__ import annotations

import json
import re
from typing import Any, Collection, Mapping, Sequence

from mosaic_jax.agent.actions import (MAX_DEPTH, MAX_INT_DIGITS,
                                      REFUSAL_TOOL, Answer,
                                      InvalidAction, ParsedTurn, Refusal,
                                      ToolCall, check_json_value,
                                      replace_surrogates,
                                      replace_surrogates_in)
from mosaic_jax.agent.protocol import (CALL_CLOSE, CALL_OPEN, RESPONSE_OPEN,
                                       SAFETY_CLOSE, SAFETY_OPEN, THINK_CLOSE,
                                       THINK_OPEN, ToolSchema, schema_name)

# Tokens a sampler may leave at the end of a turn (ChatML, Qwen, Phi-4).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|end|>")

_TAG_RE = re.compile(r"</?(?:think|safety_thoughts|tool_call|tool_response)>")
# A float literal longer than this is refused before float() reads it.
_MAX_FLOAT_CHARS = 400
_CALL_KEYS = frozenset({"name", "arguments"})
_MAX_NAME_IN_REASON = 40

# JSON-schema primitive types as Python checks; bool is excluded from numbers
# because json gives True for `true`, and `true` is not a valid integer.
_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


class _Invalid(Exception):
  """Internal: the first protocol violation found, with its reason."""


def _parse_int(literal: str) -> int:
  # Measured before int(): Python refuses more than 4300 digits with a
  # ValueError, and a 10^309 int overflows float() in the tools.
  if len(literal.lstrip("-")) > MAX_INT_DIGITS:
    raise _Invalid(f"tool call holds an integer of more than "
                   f"{MAX_INT_DIGITS} digits")
  return int(literal)


def _parse_float(literal: str) -> float:
  value = float(literal) if len(literal) <= _MAX_FLOAT_CHARS else None
  if value is None or value != value or abs(value) == float("inf"):
    raise _Invalid("tool call holds a number that is not finite or is too "
                   "long (NaN, Infinity and 1e999 are refused)")
  return value


def _parse_constant(literal: str) -> float:
  raise _Invalid(f"tool call holds {literal}, which is not a JSON number")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)


def _short(name: str) -> str:
  return repr(name if len(name) <= _MAX_NAME_IN_REASON else
              name[:_MAX_NAME_IN_REASON] + "...")


def strip_end_of_turn(text: str) -> str:
  """`text` without trailing whitespace and end-of-turn tokens."""
  text = text.rstrip()
  stripped = True
  while stripped:
    stripped = False
    for token in END_OF_TURN_TOKENS:
      if text.endswith(token):
        text = text[:-len(token)].rstrip()
        stripped = True
  return text


class _Scanner:
  """Walks the protocol tags of one turn body, left to right."""

  def __init__(self, body: str):
    self.body = body
    self.tags = list(_TAG_RE.finditer(body))
    self.index = 0  # next unread tag
    self.pos = 0  # end of the consumed text

  def peek(self) -> re.Match | None:
    return self.tags[self.index] if self.index < len(self.tags) else None

  def text_before_peek(self) -> str:
    tag = self.peek()
    end = tag.start() if tag is not None else len(self.body)
    return self.body[self.pos:end]

  def block(self, open_tag: str, close_tag: str) -> str:
    """Consumes `open_tag … close_tag` (open at peek); returns the inner text."""
    start = self.tags[self.index]
    self.index += 1
    close = self.peek()
    if close is None:
      raise _Invalid(f"unterminated {open_tag}")
    if close.group() != close_tag:
      raise _Invalid(f"{close.group()} inside {open_tag}")
    self.index += 1
    self.pos = close.end()
    return self.body[start.end():close.start()]


def _misplaced(tag: str, plan: str | None, safety: str | None) -> str:
  """The reason for a protocol tag found where the action should start."""
  if tag == RESPONSE_OPEN or tag == "</tool_response>":
    return "<tool_response> is written by the environment, not the model"
  if tag == THINK_OPEN:
    if plan is not None:
      return "more than one <think> block"
    return ("<think> after <safety_thoughts>" if safety is not None else
            "text before <think>")
  if tag == SAFETY_OPEN:
    return ("more than one <safety_thoughts> block" if safety is not None else
            "text before <safety_thoughts>")
  return f"{tag} without its opening tag"


def _check_arguments(arguments: Mapping[str, Any],
                     parameters: Mapping[str, Any]) -> None:
  """Checks top-level argument names, required ones, types and enums."""
  properties = parameters.get("properties") or {}
  for key in parameters.get("required") or []:
    if key not in arguments:
      raise _Invalid(f"missing required argument {_short(key)}")
  for key, value in arguments.items():
    spec = properties.get(key)
    if spec is None:
      if parameters.get("additionalProperties", False):
        continue
      raise _Invalid(f"unknown argument {_short(key)}")
    expected = spec.get("type")
    allowed = [expected] if isinstance(expected, str) else list(expected or [])
    checks = [_JSON_TYPES[t] for t in allowed if t in _JSON_TYPES]
    if checks and not any(check(value) for check in checks):
      raise _Invalid(f"argument {_short(key)} must be of type "
                     f"{' or '.join(allowed)}")
    if "enum" in spec and value not in spec["enum"]:
      raise _Invalid(f"argument {_short(key)} is not one of the allowed values")


def _decode_call(inner: str) -> tuple[str, dict[str, Any]]:
  """The name and arguments of the JSON inside `<tool_call>`."""
  inner = inner.strip()
  if not inner:
    raise _Invalid("empty <tool_call>")
  try:
    obj, end = _DECODER.raw_decode(inner)
  except json.JSONDecodeError as e:
    raise _Invalid(f"tool call is not valid JSON ({e.msg} at char {e.pos})")
  except RecursionError:
    # Far past the bound (how far depends on the caller's stack): the same
    # reason as a value the bound check refuses.
    raise _Invalid(f"tool call holds a value nested deeper than {MAX_DEPTH} "
                   "levels")
  if inner[end:].strip():
    raise _Invalid("trailing text after the tool call JSON")
  # The call object wraps the arguments: they get the whole depth bound.
  problem = check_json_value(obj, surrogates_ok=True, max_depth=MAX_DEPTH + 1)
  if problem is not None:
    raise _Invalid(f"tool call holds {problem}")
  obj = replace_surrogates_in(obj)
  if not isinstance(obj, dict):
    raise _Invalid("tool call must be a JSON object")
  name = obj.get("name")
  if not isinstance(name, str) or not name:
    raise _Invalid("tool call needs a non-empty string 'name'")
  if "arguments" not in obj:
    raise _Invalid("tool call needs 'arguments'")
  extra = sorted(set(obj) - _CALL_KEYS)
  if extra:
    raise _Invalid(f"unexpected key {_short(extra[0])} in tool call")
  if not isinstance(obj["arguments"], dict):
    raise _Invalid("arguments must be a JSON object")
  return name, obj["arguments"]


def _action_of_call(name: str, arguments: dict[str, Any],
                    tool_names: Collection[str] | None,
                    schemas: Mapping[str, ToolSchema]):
  if name == REFUSAL_TOOL:
    reason = arguments.get("reason")
    if set(arguments) != {"reason"}:
      raise _Invalid("refusal_tool takes exactly one argument, 'reason'")
    if not isinstance(reason, str):
      raise _Invalid("refusal reason must be a string")
    if not reason.strip():
      raise _Invalid("refusal reason is empty")
    return Refusal(reason)
  if tool_names is not None and name not in tool_names:
    raise _Invalid(f"unknown tool {_short(name)}")
  if name in schemas:
    function = schemas[name].get("function", schemas[name])
    _check_arguments(arguments, function.get("parameters") or {})
  return ToolCall(name, arguments)


def _parse(text: str, tool_names: Collection[str] | None,
           schemas: Mapping[str, ToolSchema], think_opened: bool) -> ParsedTurn:
  body = strip_end_of_turn(text)
  if think_opened and not body.lstrip().startswith(THINK_OPEN):
    # The generation prompt already holds `<think>\n`; restore it.
    body = THINK_OPEN + "\n" + body
  scan = _Scanner(body)
  plan = safety = None
  parsed = lambda action: ParsedTurn(action, plan=plan, safety_thoughts=safety)
  try:
    first = scan.peek()
    if first is not None and first.group() == THINK_CLOSE:
      # Like Qwen3's own template: text before a lone `</think>` is the plan.
      plan = body[:first.start()].strip()
      scan.index, scan.pos = 1, first.end()
    elif (first is not None and first.group() == THINK_OPEN and
          not scan.text_before_peek().strip()):
      plan = scan.block(THINK_OPEN, THINK_CLOSE).strip()
    tag = scan.peek()
    if (tag is not None and tag.group() == SAFETY_OPEN and
        not scan.text_before_peek().strip()):
      safety = scan.block(SAFETY_OPEN, SAFETY_CLOSE).strip()

    tag = scan.peek()
    if tag is None:
      answer = body[scan.pos:].strip()
      if answer:
        return parsed(Answer(answer))
      return parsed(InvalidAction("no action after the reasoning" if
                                  plan is not None or safety is not None else
                                  "empty turn"))
    if tag.group() != CALL_OPEN:
      raise _Invalid(_misplaced(tag.group(), plan, safety))
    if scan.text_before_peek().strip():
      raise _Invalid("text before <tool_call>")
    inner = scan.block(CALL_OPEN, CALL_CLOSE)
    rest = scan.peek()
    if rest is not None:
      n_calls = 1 + sum(t.group() == CALL_OPEN for t in scan.tags[scan.index:])
      raise _Invalid(f"{n_calls} tool calls in one turn" if n_calls > 1 else
                     f"{rest.group()} after </tool_call>")
    if body[scan.pos:].strip():
      raise _Invalid("text after </tool_call>")
    name, arguments = _decode_call(inner)
    return parsed(_action_of_call(name, arguments, tool_names, schemas))
  except _Invalid as e:
    return parsed(InvalidAction(str(e)))


def parse_turn(text: str,
               tool_names: Collection[str] | None = None,
               *,
               schemas: Sequence[ToolSchema] | None = None,
               think_opened: bool = False) -> ParsedTurn:
  """Parses one assistant turn; malformed output becomes an `InvalidAction`.

  Args:
    text: the decoded assistant turn, possibly ending in end-of-turn tokens.
    tool_names: the tools of the environment; a call of any other tool is
      invalid. `refusal_tool` is always allowed. None: any name is accepted
      (or the names of `schemas`, when given).
    schemas: OpenAI/HF tool schemas; when given, arguments are checked against
      their top-level JSON schema (required, unknown names, types, enums).
    think_opened: the generation prompt already opened `<think>` (Qwen3-
      Thinking), so `text` starts inside the plan.

  Returns:
    The turn's action, plan and safety check. A lone `</think>` counts as the
    end of the plan even when `think_opened` is False, as in Qwen3's template.
  """
  if not isinstance(text, str):
    return ParsedTurn(InvalidAction("turn is not text"))
  # Plans, answers and refusal reasons reach observations, transcripts and
  # tokenizers, which cannot encode a lone surrogate.
  text = replace_surrogates(text)
  by_name = {schema_name(s): s for s in schemas or []}
  if tool_names is None and schemas is not None:
    tool_names = set(by_name)
  try:
    return _parse(text, tool_names, by_name, think_opened)
  except Exception as e:  # pylint: disable=broad-except
    # Model output must never crash a rollout; this is a parser bug, reported
    # as an invalid action so the episode goes on.
    return ParsedTurn(InvalidAction(f"parser error ({type(e).__name__})"))
