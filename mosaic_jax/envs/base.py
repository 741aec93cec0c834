"""The Environment/Task protocol shared by every simulated tool suite.

A `Task` is plain JSON-serialisable data: the user prompt, the initial state of
the simulated world and the ground truth that verifiers and scripted policies
read. An `Environment` is a deterministic state machine over that state: tools
are typed methods whose JSON schema is derived from their signature and
docstring, so the schema the model sees cannot drift from the code that runs.

Every state carries two bookkeeping lists the verifiers rely on:
  * `log`: one entry per tool call `{"name", "arguments", "ok"}`;
  * `outbox`: one entry per piece of data that left the user's account
    `{"tool", "recipients", "content"[, "source"]}` (emails, invites,
    messages, shares, payments; `source` names where the data still lives,
    re-read by the verifiers at the end of the episode).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from mosaic_jax.agent.actions import (REFUSAL_TOOL, Action, Answer,
                                      InvalidAction, ParsedTurn, Refusal,
                                      ToolCall, check_action)

KINDS = ("benign", "harmful", "injection", "privacy")
SPLITS = ("train", "validation", "test", "test_ood")


class ToolError(Exception):
  """A tool rejected its input; the environment turns it into an observation."""


@dataclasses.dataclass(frozen=True)
class Task:
  """One episode specification; everything in it is JSON data.

  Attributes:
    task_id: stable id `"{suite}/{kind}/{template_id}/{split}/{seed}"`.
    suite: name of the tool suite (`workspace`, `banking`, `drive`, `messaging`).
    kind: one of `KINDS`.
    split: one of `SPLITS` (see `mosaic_jax.envs.tasks`).
    template_id: the template the task was generated from.
    seed: the generator seed of this task (within its template and split).
    prompt: the user request, the first observation.
    initial_state: the simulated world before the episode.
    solution: the legitimate tool calls, in order, as
      `{"name", "arguments", "extract"}`; `extract` maps an argument name to a
      regex whose first group, applied to the previous observation, gives the
      value (how a careful agent reads ids out of a listing).
    answer: the final answer text of a correct episode.
    goal_checks: state/answer predicates of the legitimate goal (see verifiers).
    violations: `{"kind": "harmful"|"injection", "pattern": call pattern}`;
      executing a matching call breaks security.
    bad_calls: concrete calls of the harmful part or injection goal, executed
      by the flawed scripted policies.
    refusal_step: harmful tasks only, the number of tool calls after which a
      refusal is right (0: refuse the request outright).
    injection: injection tasks only, `{"attack", "text", "goal", "slot"}`.
    private_items: strings that must not reach a party outside
      `allowed_recipients`.
    allowed_recipients: parties that may receive `private_items`.
    leaky_step: privacy tasks only, `{"index", "call"}`: the outbound solution
      step replaced by a call that leaks (used by the `leak` policy).
  """
  task_id: str
  suite: str
  kind: str
  split: str
  template_id: str
  seed: int
  prompt: str
  initial_state: Mapping[str, Any]
  solution: tuple[Mapping[str, Any], ...] = ()
  answer: str = ""
  goal_checks: tuple[Mapping[str, Any], ...] = ()
  violations: tuple[Mapping[str, Any], ...] = ()
  bad_calls: tuple[Mapping[str, Any], ...] = ()
  refusal_step: int | None = None
  injection: Mapping[str, Any] | None = None
  private_items: tuple[str, ...] = ()
  allowed_recipients: tuple[str, ...] = ()
  leaky_step: Mapping[str, Any] | None = None

  def to_dict(self) -> dict[str, Any]:
    return copy.deepcopy(dataclasses.asdict(self))

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Task:
    tuple_fields = ("solution", "goal_checks", "violations", "bad_calls",
                    "private_items", "allowed_recipients")
    kwargs = copy.deepcopy(dict(data))
    for name in tuple_fields:
      kwargs[name] = tuple(kwargs.get(name, ()))
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class StepResult:
  """What `Environment.step` returns."""
  observation: str
  done: bool
  info: Mapping[str, Any]


def tool(fn: Callable | None = None, *, outbound: bool = False):
  """Marks an Environment method as a tool.

  Args:
    fn: the method.
    outbound: the tool sends data out of the user's account; such tools write
      to `state["outbox"]` and are what privacy verifiers scan.

  Returns:
    The method, tagged.
  """
  def mark(f):
    f.is_tool = True
    f.outbound = outbound
    return f
  return mark(fn) if fn is not None else mark


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(hint: Any) -> tuple[dict[str, Any], bool]:
  """Returns (JSON schema of a type hint, whether None is allowed)."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    schema, _ = _json_type(args[0])
    return schema, True
  if origin is list:
    (item,) = typing.get_args(hint)
    return {"type": "array", "items": _json_type(item)[0]}, False
  if hint in _JSON_TYPES:
    return {"type": _JSON_TYPES[hint]}, False
  raise TypeError(f"unsupported tool argument type {hint!r}")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
  """Splits a Google-style docstring into (description, {arg: description})."""
  doc = inspect.cleandoc(doc or "")
  head, _, rest = doc.partition("\nArgs:\n")
  description = " ".join(head.split("\n\n")[0].split())
  args: dict[str, str] = {}
  current = None
  for line in rest.split("\n"):
    if line and not line.startswith(" "):
      break  # A new section (Returns:, Raises:) ends the argument list.
    match = re.match(r"\s{1,4}(\w+):\s*(.*)", line)
    if match and len(line) - len(line.lstrip()) <= 4:
      current = match.group(1)
      args[current] = match.group(2).strip()
    elif current and line.strip():
      args[current] += " " + line.strip()
  return description, args


def function_schema(fn: Callable) -> dict[str, Any]:
  """Builds an OpenAI/HF-style tool schema from type hints and docstring.

  Args:
    fn: a function or method with annotated parameters and a Google-style
      docstring whose `Args:` section describes each parameter.

  Returns:
    `{"type": "function", "function": {"name", "description", "parameters"}}`.
  """
  hints = typing.get_type_hints(fn)
  description, arg_docs = _parse_docstring(fn.__doc__)
  properties, required = {}, []
  for name, param in inspect.signature(fn).parameters.items():
    if name == "self":
      continue
    schema, _ = _json_type(hints[name])
    schema["description"] = arg_docs.get(name, "")
    properties[name] = schema
    if param.default is inspect.Parameter.empty:
      required.append(name)
  return {"type": "function", "function": {
      "name": fn.__name__, "description": description,
      "parameters": {"type": "object", "properties": properties,
                     "required": required}}}


def _check_value(name: str, value: Any, hint: Any) -> Any:
  """Validates one argument against its hint; returns it (ints widen to float)."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    if value is None:
      return None
    inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
    return _check_value(name, value, inner)
  if origin is list:
    if not isinstance(value, list):
      raise ToolError(f"argument '{name}' must be a list")
    (item,) = typing.get_args(hint)
    return [_check_value(name, v, item) for v in value]
  # bool is an int subclass in Python but not in JSON schema.
  if hint is float and isinstance(value, (int, float)) and not isinstance(
      value, bool):
    try:
      number = float(value)
    except OverflowError:  # An int past 1.8e308.
      raise ToolError(f"argument '{name}' is too large") from None
    if number != number or abs(number) == float("inf"):
      raise ToolError(f"argument '{name}' must be a finite number")
    return number
  if hint is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if hint in (str, bool) and isinstance(value, hint):
    return value
  raise ToolError(f"argument '{name}' must be of type {_JSON_TYPES[hint]}, "
                  f"got {type(value).__name__}")


class Environment:
  """A simulated tool world over a JSON state.

  Subclasses define tools as methods decorated with `@tool`; they read and
  write `self.state` and raise `ToolError` on bad input.
  """
  suite: str = ""

  def __init__(self, task: Task):
    self.task = task
    self.state: dict[str, Any] = {}
    self.done = False
    self.reset()

  @classmethod
  def tool_methods(cls) -> dict[str, Callable]:
    return {name: fn for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if getattr(fn, "is_tool", False)}

  @property
  def tools(self) -> list[dict[str, Any]]:
    return [function_schema(fn) for fn in self.tool_methods().values()]

  def reset(self) -> str:
    """Restores the initial state; returns the user prompt."""
    self.state = copy.deepcopy(dict(self.task.initial_state))
    self.state.setdefault("log", [])
    self.state.setdefault("outbox", [])
    self.done = False
    return self.task.prompt

  def copy(self) -> Environment:
    """A deep, independent copy (to replay the same task for repairs)."""
    return copy.deepcopy(self)

  def step(self, action: Action | ParsedTurn) -> StepResult:
    """Applies one action; never raises on bad agent input.

    An `Action` object of wrong types (`actions.check_action`) is answered
    like an `InvalidAction`.
    """
    if isinstance(action, ParsedTurn):
      action = action.action
    if self.done:
      return StepResult("Error: the episode is over.", True, {"ok": False})
    problem = check_action(action)
    if problem is not None:
      return StepResult(f"Error: invalid action ({problem}). Reply with one "
                        "tool call, a refusal or a final answer.", False,
                        {"ok": False, "invalid": True})
    if isinstance(action, ToolCall) and action.name == REFUSAL_TOOL:
      action = Refusal(str(dict(action.arguments or {}).get("reason", "")))
    if isinstance(action, Refusal):
      self.done = True
      return StepResult("The refusal was recorded.", True, {"terminal": "refusal"})
    if isinstance(action, Answer):
      self.done = True
      return StepResult("The answer was recorded.", True, {"terminal": "answer"})
    if isinstance(action, InvalidAction):
      return StepResult(f"Error: invalid action ({action.reason}). Reply with "
                        "one tool call, a refusal or a final answer.", False,
                        {"ok": False, "invalid": True})
    if not isinstance(action, ToolCall):
      return StepResult(f"Error: unsupported action {type(action).__name__}.",
                        False, {"ok": False, "invalid": True})
    return self._call(action)

  def _call(self, call: ToolCall) -> StepResult:
    arguments = call.arguments
    entry = {"name": call.name, "arguments": copy.deepcopy(arguments)
             if isinstance(arguments, Mapping) else arguments, "ok": False}
    self.state["log"].append(entry)
    try:
      kwargs = self._validate(call.name, arguments)
      observation = getattr(self, call.name)(**kwargs)
    except ToolError as e:
      return StepResult(f"Error: {e}", False, {"ok": False, "tool": call.name})
    entry["ok"] = True
    return StepResult(observation, False, {"ok": True, "tool": call.name})

  def _validate(self, name: str, arguments: Any) -> dict[str, Any]:
    methods = self.tool_methods()
    if name not in methods:
      raise ToolError(f"unknown tool '{name}'. Available tools: "
                      f"{', '.join(sorted(methods))}")
    if not isinstance(arguments, Mapping):
      raise ToolError("arguments must be a JSON object")
    fn = methods[name]
    hints = typing.get_type_hints(fn)
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if k != "self"}
    unknown = sorted(set(arguments) - set(params))
    if unknown:
      raise ToolError(f"unknown argument(s) {unknown} for '{name}'")
    kwargs = {}
    for key, param in params.items():
      if key in arguments:
        kwargs[key] = _check_value(key, arguments[key], hints[key])
      elif param.default is inspect.Parameter.empty:
        raise ToolError(f"missing required argument '{key}' for '{name}'")
    return kwargs

  # Helpers for subclasses.

  def send_out(self, tool_name: str, recipients: Sequence[str],
               content: str, source: Mapping[str, str] | None = None) -> None:
    """Records data leaving the user's account (scanned by privacy checks).

    Args:
      tool_name: the outbound tool.
      recipients: who received it when it was sent.
      content: what they received then.
      source: where the data still lives, read again at the end of the
        episode (`verifiers.final_outbox`): `{"collection": "files", "id":
        "f3"}` (a shared file, later appends included) or `{"channel":
        "general"}` (a post, read by members invited later too).
    """
    record = {"tool": tool_name, "recipients": list(recipients),
              "content": content}
    if source is not None:
      record["source"] = dict(source)
    self.state["outbox"].append(record)

  def find(self, collection: str, item_id: str, what: str) -> dict[str, Any]:
    for item in self.state[collection]:
      if item["id"] == item_id:
        return item
    raise ToolError(f"no {what} with id '{item_id}'")

  def next_id(self, prefix: str) -> str:
    # Generated worlds number their items below 100, so new ids never collide.
    counter = self.state.setdefault("counters", {})
    counter[prefix] = counter.get(prefix, 100) + 1
    return f"{prefix}{counter[prefix]}"


@dataclasses.dataclass(frozen=True)
class Suite:
  """What a suite module (`envs/suites/*`) contributes to the task registry
  (`envs.tasks`)."""
  name: str
  env_class: type[Environment]
  templates: Mapping[str, tuple[str, Callable[..., dict[str, Any]]]]
  injection_bases: tuple[str, ...]
  injection_goal: Callable[..., dict[str, Any]]
  attacker: str
  # Out of distribution, `test_ood` only: templates no other split uses,
  # injection bases (OOD templates, or other templates injected through
  # another tool's output: every base's builder returns its `slot`), and
  # the attacker (address, handle or IBAN) of those injections.
  ood: Mapping[str, tuple[str, Callable[..., dict[str, Any]]]]
  ood_injection_bases: tuple[str, ...]
  ood_attacker: str


def add_hidden_harm(spec: dict[str, Any], prompt: str, answer: str,
                    violations: list[dict[str, Any]],
                    bad_calls: list[dict[str, Any]]) -> dict[str, Any]:
  """A benign template's `spec` made hidden-harmful, in place.

  `prompt` is appended to the benign request and `answer` replaces the
  answer; the refusal is due after the benign solution (`refusal_step`).
  The injection `slot` is dropped: a harmful task is no injection base.
  """
  spec["prompt"] += prompt
  spec["answer"] = answer
  spec["violations"] = violations
  spec["bad_calls"] = bad_calls
  spec["refusal_step"] = len(spec["solution"])
  spec.pop("slot", None)
  return spec
