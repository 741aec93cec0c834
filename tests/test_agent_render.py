"""Rendering through each family's chat template: exact strings, round trips.

Qwen2.5 and Qwen3-Thinking templates come with their checkpoints upstream;
tests/fixtures/chat_templates/ holds Jinja that reproduces their output, and
they are installed on the tiny tokenizer, since rendering only needs a
template.
"""
import json
import pathlib

import hypothesis
import pytest
from hypothesis import strategies as st

from mosaic_jax.agent import protocol, render
from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall)
from mosaic_jax.agent.parse import parse_turn
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"
FAMILIES = ("qwen25", "qwen3_thinking", "phi4", "smollm2", "smollm2_compact",
            "tiny")

SEND_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"},
                           "body": {"type": "string"}},
            "required": ["to", "body"],
        },
    },
}
TOOLS = [SEND_EMAIL]
TOOL_LINES = (json.dumps(SEND_EMAIL, ensure_ascii=False) + "\n" +
              json.dumps(protocol.REFUSAL_TOOL_SCHEMA, ensure_ascii=False))

QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user "
    "query.\n\nYou are provided with function signatures within <tools></tools>"
    " XML tags:\n<tools>\n" + TOOL_LINES + "\n</tools>\n\nFor each function "
    "call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
PROJECT_TOOLS = (
    "# Tools\n\nYou may call one function per turn. The function signatures "
    "are inside <tools></tools> XML tags:\n<tools>\n" + TOOL_LINES +
    "\n</tools>\n\nTo call a function, write a JSON object with its name and "
    "arguments inside <tool_call></tool_call> XML tags:\n<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call>")

# The tiny template lists tools as one-line signatures (shorter CPU sequences).
TINY_TOOLS = (
    "# Tools\n\nYou may call one function per turn:\n<tools>\n"
    "send_email(to: string, body: string): Send an email.\n"
    "refusal_tool(reason: string): " + protocol.REFUSAL_TOOL_SCHEMA["function"]["description"] +
    "\n</tools>\n\nTo call a function, write a JSON object with its name and "
    "arguments inside <tool_call></tool_call> XML tags:\n<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call>")

CALL_TURN = ParsedTurn(
    ToolCall("send_email", {"to": "bob@example.com", "body": "Rapport ✓"}),
    plan="Send the report.", safety_thoughts="Bob is the user's colleague.")
ANSWER_TURN = ParsedTurn(Answer("Sent."), plan="Done.")
CALL_TEXT = (
    "<think>\nSend the report.\n</think>\n\n<safety_thoughts>\nBob is the "
    "user's colleague.\n</safety_thoughts>\n\n<tool_call>\n{\"name\": "
    "\"send_email\", \"arguments\": {\"to\": \"bob@example.com\", \"body\": "
    "\"Rapport ✓\"}}\n</tool_call>")
ANSWER_TEXT = "<think>\nDone.\n</think>\n\nSent."
RESULT = '{"status": "sent"}'

EPISODE = [
    protocol.system_message("Be careful."),
    protocol.user_message("Email Bob the report."),
    protocol.assistant_message(CALL_TURN),
    protocol.tool_message(RESULT, name="send_email"),
    protocol.assistant_message(ANSWER_TURN),
]

CHATML_EPISODE = (
    "<|im_start|>user\nEmail Bob the report.<|im_end|>\n"
    "<|im_start|>assistant\n" + CALL_TEXT + "<|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n" + RESULT +
    "\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n" + ANSWER_TEXT + "<|im_end|>\n")
EXPECTED_EPISODE = {
    "qwen25": ("<|im_start|>system\nBe careful.\n\n" + QWEN_TOOLS +
               "<|im_end|>\n" + CHATML_EPISODE),
    "qwen3_thinking": ("<|im_start|>system\nBe careful.\n\n" + QWEN_TOOLS +
                       "<|im_end|>\n" + CHATML_EPISODE),
    "tiny": ("<|im_start|>system\nBe careful.\n\n" + TINY_TOOLS +
             "<|im_end|>\n" + CHATML_EPISODE),
    "smollm2": ("<|im_start|>system\nBe careful.\n\n" + PROJECT_TOOLS +
                "<|im_end|>\n" + CHATML_EPISODE),
    # SmolLM2's turns with the tiny template's one-line tool list.
    "smollm2_compact": ("<|im_start|>system\nBe careful.\n\n" + TINY_TOOLS +
                        "<|im_end|>\n" + CHATML_EPISODE),
    "phi4": ("<|im_start|>system<|im_sep|>Be careful.\n\n" + PROJECT_TOOLS +
             "<|im_end|>"
             "<|im_start|>user<|im_sep|>Email Bob the report.<|im_end|>"
             "<|im_start|>assistant<|im_sep|>" + CALL_TEXT + "<|im_end|>"
             "<|im_start|>user<|im_sep|><tool_response>\n" + RESULT +
             "\n</tool_response><|im_end|>"
             "<|im_start|>assistant<|im_sep|>" + ANSWER_TEXT + "<|im_end|>"),
}
GENERATION_PROMPT = {
    "qwen25": "<|im_start|>assistant\n",
    "qwen3_thinking": "<|im_start|>assistant\n<think>\n",
    "tiny": "<|im_start|>assistant\n",
    "smollm2": "<|im_start|>assistant\n",
    "smollm2_compact": "<|im_start|>assistant\n",
    "phi4": "<|im_start|>assistant<|im_sep|>",
}
END_OF_TURN = {"qwen25": "<|im_end|>\n", "qwen3_thinking": "<|im_end|>\n",
               "tiny": "<|im_end|>\n", "smollm2": "<|im_end|>\n",
               "smollm2_compact": "<|im_end|>\n",
               "phi4": "<|im_end|>"}
SMOLLM2_DEFAULT_SYSTEM = ("You are a helpful AI assistant named SmolLM, "
                          "trained by Hugging Face")


def _tokenizer(family):
  tok = load_tiny_tokenizer()
  if family == "qwen25":
    tok.chat_template = (FIXTURES / "qwen25_instruct.jinja").read_text()
  elif family == "qwen3_thinking":
    tok.chat_template = (FIXTURES / "qwen3_thinking_2507.jinja").read_text()
  elif family == "phi4":
    render.install_chat_template(tok, "phi4_tools")
  elif family == "smollm2":
    render.install_chat_template(tok, "smollm2_tools")
  elif family == "smollm2_compact":
    render.install_chat_template(tok, "smollm2_compact")
  return tok


@pytest.fixture(scope="module")
def tokenizers():
  return {family: _tokenizer(family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_episode_renders_exactly(tokenizers, family):
  tok = tokenizers[family]
  assert render.render(tok, EPISODE, TOOLS,
                       add_generation_prompt=False) == EXPECTED_EPISODE[family]
  # Up to the tool result, with the generation prompt: what the model sees.
  prompt = render.render(tok, EPISODE[:4], TOOLS)
  head = EXPECTED_EPISODE[family].rsplit(
      GENERATION_PROMPT[family].split("<think>")[0], 1)[0]
  assert prompt == head + GENERATION_PROMPT[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_refusal_tool_is_always_listed_once(tokenizers, family):
  tok = tokenizers[family]
  with_refusal = render.render(tok, EPISODE[:2],
                               [SEND_EMAIL, protocol.REFUSAL_TOOL_SCHEMA])
  assert with_refusal == render.render(tok, EPISODE[:2], TOOLS)
  listed = ("\nrefusal_tool(" if family in ("tiny", "smollm2_compact")
            else '"name": "refusal_tool"')
  assert with_refusal.count(listed) == 1
  assert protocol.REFUSAL_TOOL_SCHEMA in protocol.with_refusal_tool(None)


@pytest.mark.parametrize("family, tools", [("smollm2", PROJECT_TOOLS),
                                            ("smollm2_compact", TINY_TOOLS)])
def test_smollm2_default_system_prompt(tokenizers, family, tools):
  tok = tokenizers[family]
  messages = [protocol.user_message("Hi")]
  assert render.render(tok, messages, TOOLS) == (
      "<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "\n\n" +
      tools + "<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  # Without tools it is SmolLM2's upstream template's rendering.
  assert tok.apply_chat_template(messages, tokenize=False,
                                 add_generation_prompt=True) == (
      "<|im_start|>system\n" + SMOLLM2_DEFAULT_SYSTEM + "<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family", ["smollm2", "smollm2_compact"])
@pytest.mark.parametrize("system", [None, "Be careful."])
def test_smollm2_matches_upstream_without_tools(tokenizers, family, system):
  """Plain chat (no tools, no tool calls) renders as SmolLM2's own template
  (its GGUF's `tokenizer.chat_template`) does."""
  upstream = load_tiny_tokenizer()
  upstream.chat_template = (FIXTURES / "smollm2_instruct.jinja").read_text()
  messages = ([] if system is None else [protocol.system_message(system)]) + [
      protocol.user_message("Hi"), {"role": "assistant", "content": "Hello!"},
      protocol.user_message("Bye")]
  for prompt in (True, False):
    assert tokenizers[family].apply_chat_template(
        messages, tokenize=False, add_generation_prompt=prompt) == (
            upstream.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=prompt))


def test_qwen25_default_system_prompt(tokenizers):
  tok = tokenizers["qwen25"]
  messages = [protocol.user_message("Hi")]
  assert render.render(tok, messages, TOOLS) == (
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
      "helpful assistant.\n\n" + QWEN_TOOLS + "<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family, expected", [
    ("qwen3_thinking", "<|im_start|>system\n" + QWEN_TOOLS + "<|im_end|>\n"
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"),
    ("tiny", "<|im_start|>system\n" + TINY_TOOLS + "<|im_end|>\n"
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ("phi4", "<|im_start|>system<|im_sep|>" + PROJECT_TOOLS + "<|im_end|>"
     "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"),
])
def test_no_default_system_prompt(tokenizers, family, expected):
  messages = [protocol.user_message("Hi")]
  assert render.render(tokenizers[family], messages, TOOLS) == expected


def test_qwen3_drops_reasoning_before_the_last_query(tokenizers):
  messages = [
      protocol.user_message("First?"),
      protocol.assistant_message(ANSWER_TURN),
      protocol.user_message("Second?"),
      protocol.assistant_message(
          ParsedTurn(Answer("Two."), plan="Think again.")),
  ]
  tail = render.render(tokenizers["qwen3_thinking"], messages, TOOLS,
                       add_generation_prompt=False).split("<|im_end|>\n", 1)[1]
  assert tail == (
      "<|im_start|>user\nFirst?<|im_end|>\n"
      "<|im_start|>assistant\nSent.<|im_end|>\n"
      "<|im_start|>user\nSecond?<|im_end|>\n"
      "<|im_start|>assistant\n<think>\nThink again.\n</think>\n\nTwo."
      "<|im_end|>\n")
  # The project's templates keep history verbatim.
  tiny = render.render(tokenizers["tiny"], messages, TOOLS,
                       add_generation_prompt=False)
  assert tiny.count("<think>") == 2


@pytest.mark.parametrize("family, expected", [
    ("qwen25", "<|im_start|>user\n<tool_response>\na\n</tool_response>\n"
     "<tool_response>\nb\n</tool_response><|im_end|>\n"),
    ("phi4", "<|im_start|>user<|im_sep|><tool_response>\na\n</tool_response>\n"
     "<tool_response>\nb\n</tool_response><|im_end|>"),
    ("tiny", "<|im_start|>user\n<tool_response>\na\n</tool_response>\n"
     "<tool_response>\nb\n</tool_response><|im_end|>\n"),
    ("smollm2", "<|im_start|>user\n<tool_response>\na\n</tool_response>\n"
     "<tool_response>\nb\n</tool_response><|im_end|>\n"),
])
def test_consecutive_tool_results_share_one_turn(tokenizers, family,
                                                 expected):
  messages = EPISODE[:3] + [protocol.tool_message("a"),
                            protocol.tool_message("b")]
  text = render.render(tokenizers[family], messages, TOOLS,
                       add_generation_prompt=False)
  assert text.endswith(expected)


def test_generation_opens_think(tokenizers):
  assert {f: render.generation_opens_think(tokenizers[f]) for f in FAMILIES
         } == {"qwen25": False, "qwen3_thinking": True, "phi4": False,
               "smollm2": False, "smollm2_compact": False, "tiny": False}


def test_assistant_message_convention():
  assert protocol.assistant_message(CALL_TURN) == {
      "role": "assistant",
      "content": ("<think>\nSend the report.\n</think>\n\n<safety_thoughts>\n"
                  "Bob is the user's colleague.\n</safety_thoughts>\n"),
      "tool_calls": [{"type": "function", "function": {
          "name": "send_email",
          "arguments": {"to": "bob@example.com", "body": "Rapport ✓"}}}],
  }
  assert protocol.assistant_message(ParsedTurn(Refusal("no"))) == {
      "role": "assistant", "content": "",
      "tool_calls": [{"type": "function", "function": {
          "name": "refusal_tool", "arguments": {"reason": "no"}}}],
  }
  assert protocol.assistant_message(ANSWER_TURN) == {
      "role": "assistant", "content": ANSWER_TEXT}
  with pytest.raises(ValueError, match="InvalidAction"):
    protocol.format_turn(ParsedTurn(InvalidAction("bad")))


def test_install_and_write_chat_template(tmp_path):
  tok = load_tiny_tokenizer()
  tok.save_pretrained(tmp_path)
  # An upstream-style config entry must lose to the installed file.
  config_path = tmp_path / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config["chat_template"] = "{{ 'upstream' }}"
  config_path.write_text(json.dumps(config))
  render.write_chat_template(tmp_path, "phi4_tools")
  reloaded = load_tiny_tokenizer(tmp_path)
  assert reloaded.chat_template == render.load_template("phi4_tools")
  with pytest.raises(ValueError, match="unknown chat template 'qwen'"):
    render.load_template("qwen")


@pytest.mark.parametrize("family", ["tiny", "phi4", "smollm2",
                                    "smollm2_compact"])
def test_generation_blocks_mark_assistant_tokens(tokenizers, family):
  tok = tokenizers[family]
  out = tok.apply_chat_template(
      EPISODE, tools=protocol.with_refusal_tool(TOOLS), tokenize=True,
      return_dict=True, return_assistant_tokens_mask=True)
  ids, mask = out["input_ids"], out["assistant_masks"]
  trained = tok.decode([i for i, m in zip(ids, mask) if m])
  assert trained == (CALL_TEXT + "<|im_end|>" + ANSWER_TEXT + "<|im_end|>")


# Round trips: what a model writes after the generation prompt parses back.

_PLAIN = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20
).map(str.strip).filter(lambda s: s and "<" not in s)


@st.composite
def turns(draw, plan_required):
  kind = draw(st.sampled_from(["call", "refusal", "answer"]))
  if kind == "call":
    action = ToolCall("send_email", draw(st.fixed_dictionaries(
        {"to": _PLAIN, "body": _PLAIN})))
  elif kind == "refusal":
    action = Refusal(draw(_PLAIN))
  else:
    action = Answer(draw(_PLAIN))
  plan = draw(_PLAIN if plan_required else st.none() | _PLAIN)
  return ParsedTurn(action, plan=plan,
                    safety_thoughts=draw(st.none() | _PLAIN))


def _model_output(tok, turn):
  """The assistant text after the generation prompt, and the prompt."""
  prompt = render.render(tok, EPISODE[:2], TOOLS)
  full = render.render(tok, EPISODE[:2] + [protocol.assistant_message(turn)],
                       TOOLS, add_generation_prompt=False)
  assert full.startswith(prompt)
  return full[len(prompt):]


@pytest.mark.parametrize("family", FAMILIES)
@hypothesis.settings(max_examples=40, deadline=None,
                     suppress_health_check=[
                         hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_render_then_parse_round_trips(tokenizers, family, data):
  tok = tokenizers[family]
  # Qwen3 writes an empty <think> block for a plan-less last turn, which
  # parses back as plan "" rather than None; its real turns always plan.
  turn = data.draw(turns(plan_required=family == "qwen3_thinking"))
  output = _model_output(tok, turn)
  think_opened = render.generation_opens_think(tok)
  expected = protocol.format_turn(turn)
  if think_opened:
    expected = expected.removeprefix("<think>\n")
  assert output == expected + END_OF_TURN[family]
  assert parse_turn(output, ["send_email"], schemas=TOOLS,
                    think_opened=think_opened) == turn
