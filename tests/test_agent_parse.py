"""parse_turn: exact actions and reasons, and never raising on any string."""
import json

import hypothesis
import pytest
from hypothesis import strategies as st

from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall)
from mosaic_jax.agent.parse import parse_turn, strip_end_of_turn
from mosaic_jax.agent.protocol import format_turn

TOOLS = ("send_email", "read_file")
SCHEMAS = [{
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "cc": {"type": ["string", "null"]},
                "priority": {"type": "integer", "enum": [1, 2, 3]},
                "urgent": {"type": "boolean"},
            },
            "required": ["to"],
        },
    },
}]


def call(name, arguments):
  return ("<tool_call>\n" +
          json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>")


SEND = call("send_email", {"to": "bob@example.com"})
PLAN = "<think>\nplan\n</think>\n\n"
SAFE = "<safety_thoughts>\ncheck\n</safety_thoughts>\n\n"


@pytest.mark.parametrize("text, expected", [
    (PLAN + SAFE + SEND,
     ParsedTurn(ToolCall("send_email", {"to": "bob@example.com"}), "plan",
                "check")),
    (PLAN + SEND + "<|im_end|>\n",
     ParsedTurn(ToolCall("send_email", {"to": "bob@example.com"}), "plan")),
    (SEND, ParsedTurn(ToolCall("send_email", {"to": "bob@example.com"}))),
    (PLAN + call("refusal_tool", {"reason": "harmful"}),
     ParsedTurn(Refusal("harmful"), "plan")),
    (PLAN + "All done.<|im_end|><|endoftext|>",
     ParsedTurn(Answer("All done."), "plan")),
    (PLAN + SAFE + "  Straße ✓ 完成  \n",
     ParsedTurn(Answer("Straße ✓ 完成"), "plan", "check")),
    # Qwen3-Thinking: the generation prompt held `<think>\n`.
    ("plan\n</think>\n\n" + SEND,
     ParsedTurn(ToolCall("send_email", {"to": "bob@example.com"}), "plan")),
    ("  \n\n" + PLAN + "hi", ParsedTurn(Answer("hi"), "plan")),
    ("just an answer", ParsedTurn(Answer("just an answer"))),
    # Compact JSON and no newlines inside the tags are accepted.
    ('<think>p</think><tool_call>{"name":"read_file","arguments":{}}'
     '</tool_call>', ParsedTurn(ToolCall("read_file", {}), "p")),
])
def test_valid_turns(text, expected):
  assert parse_turn(text, TOOLS) == expected


def test_think_opened_restores_the_opening_tag():
  assert parse_turn("plan\n</think>\n\nok", think_opened=True) == ParsedTurn(
      Answer("ok"), "plan")
  # A model that re-emits `<think>` after the prompt opened it is accepted.
  assert parse_turn("<think>\nplan\n</think>\n\nok",
                    think_opened=True) == ParsedTurn(Answer("ok"), "plan")
  assert parse_turn("still thinking", think_opened=True) == ParsedTurn(
      InvalidAction("unterminated <think>"))


@pytest.mark.parametrize("text, reason", [
    ("", "empty turn"),
    ("<|im_end|>", "empty turn"),
    (PLAN, "no action after the reasoning"),
    (PLAN + SAFE, "no action after the reasoning"),
    ("<think>\nplan never closed", "unterminated <think>"),
    ("<think>a<think>b</think></think>ok", "<think> inside <think>"),
    ("<think>a" + SEND, "<tool_call> inside <think>"),
    ("<safety_thoughts>x" + SEND, "<tool_call> inside <safety_thoughts>"),
    (PLAN + PLAN + "ok", "more than one <think> block"),
    (PLAN + SAFE + SAFE + "ok", "more than one <safety_thoughts> block"),
    (SAFE + PLAN + "ok", "<think> after <safety_thoughts>"),
    ("hello " + PLAN + "ok", "text before <think>"),
    (PLAN + "hello " + SAFE + "ok", "text before <safety_thoughts>"),
    (PLAN + "ok </think>", "</think> without its opening tag"),
    (PLAN + "I will call it.\n" + SEND, "text before <tool_call>"),
    (PLAN + SEND + "\nSent!", "text after </tool_call>"),
    (PLAN + SEND + SEND, "2 tool calls in one turn"),
    (SEND + "\n" + SEND + "\n" + SEND, "3 tool calls in one turn"),
    (SEND + PLAN, "<think> after </tool_call>"),
    (PLAN + '<tool_call>\n{"name": "send_email", "argu',
     "unterminated <tool_call>"),
    ("<tool_call><tool_call>{}</tool_call></tool_call>",
     "<tool_call> inside <tool_call>"),
    (PLAN + "</tool_call>", "</tool_call> without its opening tag"),
    (PLAN + "<tool_response>\nfake\n</tool_response>",
     "<tool_response> is written by the environment, not the model"),
    ("<tool_call>\n</tool_call>", "empty <tool_call>"),
    ('<tool_call>{"name": "send_email", "arguments": {}</tool_call>',
     "tool call is not valid JSON (Expecting ',' delimiter at char 38)"),
    ('<tool_call>{"name": "read_file", "arguments": {}} extra</tool_call>',
     "trailing text after the tool call JSON"),
    ('<tool_call>{"name": "read_file", "arguments": {}}}</tool_call>',
     "trailing text after the tool call JSON"),
    ('<tool_call>["read_file", {}]</tool_call>',
     "tool call must be a JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>',
     "tool call needs a non-empty string 'name'"),
    ('<tool_call>{"name": 3, "arguments": {}}</tool_call>',
     "tool call needs a non-empty string 'name'"),
    ('<tool_call>{"name": "read_file"}</tool_call>',
     "tool call needs 'arguments'"),
    ('<tool_call>{"name": "read_file", "arguments": {}, "id": 1}</tool_call>',
     "unexpected key 'id' in tool call"),
    (call("read_file", "{\"file_id\": 1}"), "arguments must be a JSON object"),
    (call("read_file", [1, 2]), "arguments must be a JSON object"),
    (call("rm_rf", {}), "unknown tool 'rm_rf'"),
    (call("x" * 60, {}), "unknown tool '" + "x" * 40 + "...'"),
    (call("refusal_tool", {"reason": 7}), "refusal reason must be a string"),
    (call("refusal_tool", {"reason": "  "}), "refusal reason is empty"),
    (call("refusal_tool", {}),
     "refusal_tool takes exactly one argument, 'reason'"),
    (call("refusal_tool", {"reason": "no", "extra": 1}),
     "refusal_tool takes exactly one argument, 'reason'"),
    ("<tool_call>" + "[" * 100000 + "</tool_call>",
     "tool call holds a value nested deeper than 32 levels"),
])
def test_invalid_turns_have_exact_reasons(text, reason):
  turn = parse_turn(text, TOOLS)
  assert turn.action == InvalidAction(reason)


def test_invalid_turn_keeps_its_reasoning():
  turn = parse_turn(PLAN + SAFE + SEND + SEND, TOOLS)
  assert turn == ParsedTurn(InvalidAction("2 tool calls in one turn"), "plan",
                            "check")
  assert turn.used_safety_thoughts


def test_any_tool_name_without_a_tool_list():
  assert parse_turn(call("anything", {"a": 1})).action == ToolCall(
      "anything", {"a": 1})


def test_non_text_input():
  assert parse_turn(None).action == InvalidAction("turn is not text")


@pytest.mark.parametrize("arguments, reason", [
    ({"to": "a@b.c", "cc": None, "priority": 2, "urgent": True}, None),
    ({}, "missing required argument 'to'"),
    ({"to": 5}, "argument 'to' must be of type string"),
    ({"to": "a", "cc": 1}, "argument 'cc' must be of type string or null"),
    ({"to": "a", "priority": True}, "argument 'priority' must be of type "
     "integer"),
    ({"to": "a", "priority": 1.5}, "argument 'priority' must be of type "
     "integer"),
    ({"to": "a", "priority": 4}, "argument 'priority' is not one of the "
     "allowed values"),
    ({"to": "a", "bcc": "c"}, "unknown argument 'bcc'"),
])
def test_schema_checks(arguments, reason):
  turn = parse_turn(call("send_email", arguments), schemas=SCHEMAS)
  expected = (ToolCall("send_email", arguments) if reason is None else
              InvalidAction(reason))
  assert turn.action == expected
  # The schemas also fix the tool list.
  assert parse_turn(call("read_file", {}), schemas=SCHEMAS).action == (
      InvalidAction("unknown tool 'read_file'"))


def test_strip_end_of_turn():
  assert strip_end_of_turn("a \n<|im_end|>\n<|endoftext|> ") == "a"
  assert strip_end_of_turn("<|im_end|> a") == "<|im_end|> a"


# Property tests ------------------------------------------------------------

_FRAGMENTS = st.sampled_from([
    "<think>", "</think>", "<safety_thoughts>", "</safety_thoughts>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<|im_end|>", "<|endoftext|>", "<think", "tool_call>", "\n", "\n\n", " ",
    '{"name": "send_email", "arguments": {"to": "x"}}',
    '{"name": "refusal_tool", "arguments": {"reason": 1}}',
    '{"name": "nope", "arguments": []}', '{"name": "read_file", "argum',
    '{"name": "read_file", "arguments": {}}}', '{"name": "read_file", '
    '"arguments": "{}"}', "[[[[", "NaN", "\\u0000", "\ud83d\ude00", "\x00",
    "é", "\u202e", "𝔘𝔫𝔦", "plan", "null",
])
_ADVERSARIAL = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=8)),
                        max_size=14).map("".join)


def _assert_well_formed(turn):
  assert isinstance(turn, ParsedTurn)
  assert isinstance(turn.action, (ToolCall, Refusal, Answer, InvalidAction))
  if isinstance(turn.action, InvalidAction):
    reason = turn.action.reason
    assert isinstance(reason, str) and reason and "\n" not in reason
    assert len(reason) < 120
    assert not reason.startswith("parser error"), reason


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(text=st.one_of(st.text(), _ADVERSARIAL),
                  think_opened=st.booleans(),
                  with_tools=st.booleans())
def test_never_raises_and_always_explains(text, think_opened, with_tools):
  turn = parse_turn(text, TOOLS if with_tools else None,
                    schemas=SCHEMAS if with_tools else None,
                    think_opened=think_opened)
  _assert_well_formed(turn)


_PLAIN = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30
).map(str.strip).filter(lambda s: s and "<" not in s)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) |
    st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@st.composite
def turns(draw):
  kind = draw(st.sampled_from(["call", "refusal", "answer"]))
  if kind == "call":
    action = ToolCall(draw(st.sampled_from(TOOLS)),
                      draw(st.dictionaries(st.text(max_size=6), _JSON,
                                           max_size=3)))
  elif kind == "refusal":
    action = Refusal(draw(_PLAIN))
  else:
    action = Answer(draw(_PLAIN))
  return ParsedTurn(action, plan=draw(st.none() | _PLAIN),
                    safety_thoughts=draw(st.none() | _PLAIN))


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(turn=turns())
def test_format_then_parse_round_trips(turn):
  assert parse_turn(format_turn(turn), TOOLS) == turn


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(turn=turns(), data=st.data())
def test_truncated_turns_never_raise(turn, data):
  text = format_turn(turn)
  cut = data.draw(st.integers(0, len(text) - 1))
  truncated = parse_turn(text[:cut], TOOLS)
  _assert_well_formed(truncated)
  if "<tool_call>" in text[:cut]:
    assert truncated.action == InvalidAction("unterminated <tool_call>")
