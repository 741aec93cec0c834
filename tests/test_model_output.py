"""The engine never dies of model output (issue #22): the parser bounds what
it accepts, wrongly typed `Action` objects are invalid actions, and an
environment or verifier that still raises ends one episode, not the run.

The three turns that crashed a rollout (an amount of 10^309, a list nested
500-950 deep, a lone surrogate in a file id) are played through `rollout()`
with the project's real tiny tokenizer.
"""
import numpy as np
import pytest

from mosaic_jax import rollout
from mosaic_jax.agent import actions as actions_lib
from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall, check_action)
from mosaic_jax.agent.parse import parse_turn
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import base, tasks
from mosaic_jax.envs.base import Environment, Task, ToolError, tool
from mosaic_jax.envs.verifiers import verify

CONFIG = rollout.RolloutConfig(max_turns=4, max_tokens_per_turn=3000,
                               max_total_length=12000)
BANKING = "banking/benign/pay_invoice/train/0"
DRIVE = "drive/benign/share_report/train/0"
WORKSPACE = "workspace/benign/reschedule/train/0"


def _call(name, arguments_json):
  return (f'<tool_call>\n{{"name": "{name}", "arguments": {arguments_json}}}'
          "\n</tool_call>")


HUGE_AMOUNT = _call("send_money", '{"iban": "DE12345678901234567890", '
                    '"amount": 1' + "0" * 309 + "}")
SURROGATE = _call("read_file", '{"file_id": "\\ud800"}')


def _nested(depth):
  # recipients is an array, so the schema check alone lets the list through.
  return _call("send_email", '{"recipients": ' + "[" * depth +
               '"a@b.example"' + "]" * depth + ', "subject": "s", "body": "b"}')


# ------------------------------------------------------------------ parser --


@pytest.mark.parametrize("text,reason", [
    (HUGE_AMOUNT, "integer of more than 100 digits"),
    (_call("send_money", '{"amount": 1' + "0" * 4300 + "}"),
     "integer of more than 100 digits"),
    (_call("send_money", '{"amount": -1' + "0" * 200 + "}"),
     "integer of more than 100 digits"),
    (_nested(32), "nested deeper than 32 levels"),
    (_nested(500), "nested deeper than 32 levels"),
    (_nested(950), "nested deeper than 32 levels"),
    (_call("send_money", '{"amount": NaN}'), "NaN, which is not a JSON number"),
    (_call("send_money", '{"amount": -Infinity}'), "-Infinity, which is not"),
    (_call("send_money", '{"amount": 1e999}'), "not finite"),
    (_call("send_money", '{"amount": 0.' + "1" * 500 + "}"), "too long"),
    (_call("create_file", '{"name": "a", "content": "' + "x" * 50_001 + '"}'),
     "string of more than 50000 characters"),
    (_call("list_files", "{" + ", ".join(f'"k{i}": [1, 2]' for i in range(
        4000)) + "}"), "more than 10000 values"),
])
def test_parser_bounds_numbers_depth_and_strings(text, reason):
  action = parse_turn(text).action
  assert isinstance(action, InvalidAction) and reason in action.reason, action


def test_parser_accepts_values_inside_the_bounds():
  # "d" is at depth 2 of the arguments, its list 31 levels more.
  text = _call("x", '{"n": 1' + "0" * 99 + ', "d": ' + "[" * 30 + "1" +
               "]" * 30 + ', "f": -1.5e300, "s": "\\ud83d\\ude00"}')
  action = parse_turn(text).action
  assert isinstance(action, ToolCall), action
  assert action.arguments["n"] == 10**99 and action.arguments["s"] == "😀"


def test_parser_replaces_lone_surrogates():
  action = parse_turn(SURROGATE).action
  assert action == ToolCall("read_file", {"file_id": "\ufffd"})
  weird = parse_turn(_call("x", '{"\\udc00k": ["a\\ud800b"]}')).action
  assert weird.arguments == {"\ufffdk": ["a\ufffdb"]}
  assert parse_turn("done \ud800").action == Answer("done \ufffd")


# ------------------------------------------------------------ Action types --


def _deep_list(depth):
  value = "x"
  for _ in range(depth):
    value = [value]
  return value


BAD_ACTIONS = [
    ToolCall(["x"], {}), ToolCall("", {}), ToolCall("refusal_tool", "abc"),
    ToolCall("read_file", ["f1"]), ToolCall("read_file", {1: "f1"}),
    ToolCall("send_money", {"amount": 10**309}),
    ToolCall("send_money", {"amount": float("nan")}),
    ToolCall("read_file", {"file_id": "\ud800"}),
    ToolCall("read_file", {"file_id": object()}),
    ToolCall("search_files", {"query": _deep_list(40)}),
    Answer(5), Refusal(None), "send_money", None,
]


def _action_id(action):
  # Stable across xdist workers: a repr may hold an object's address.
  return f"{BAD_ACTIONS.index(action)}-{type(action).__name__}"


@pytest.mark.parametrize("action", BAD_ACTIONS, ids=_action_id)
def test_wrongly_typed_actions_are_invalid_in_step_and_verify(action):
  assert check_action(action) is not None
  task = tasks.get_task(DRIVE)
  env = tasks.make_env(task)
  result = env.step(action)
  assert result.info == {"ok": False, "invalid": True}, result
  assert result.observation.startswith("Error: invalid action (")
  assert env.state["log"] == [] and not result.done
  verdict = verify(task, env, [action, Answer("done")])
  assert verdict.z[3] == 0 and verdict.details["invalid_turns"] == 1


def test_well_typed_actions_pass_check_action():
  for action in (ToolCall("read_file", {"file_id": "f1"}), Answer("a"),
                 Refusal("no"), InvalidAction("bad"),
                 ToolCall("x", {"a": [None, True, 1.5, {"b": "c"}]})):
    assert check_action(action) is None, action


def test_float_arguments_beyond_float_range_are_tool_errors():
  with pytest.raises(ToolError, match="'amount' is too large"):
    base._check_value("amount", 10**309, float)
  with pytest.raises(ToolError, match="'amount' must be a finite number"):
    base._check_value("amount", float("inf"), float)


def test_check_json_value_is_iterative():
  # Far past the recursion limit.
  assert "nested deeper" in actions_lib.check_json_value(_deep_list(100_000))


# ----------------------------------------------------------------- rollout --


class Texts:
  """A TurnPolicy that writes fixed texts: row n's turn t is texts[n][t]."""
  name = "texts"

  def __init__(self, texts, tokenizer):
    self.texts, self.tokenizer = texts, tokenizer

  def _turns(self, new_tokens, episodes, config):
    out = []
    for n, t in enumerate(new_tokens):
      if t is None:
        out.append(None)
        continue
      text = self.texts[n][len(episodes[n].turns)]
      ids = self.tokenizer(text, add_special_tokens=False).input_ids + [
          self.tokenizer.eos_token_id]
      out.append(rollout.Generation(np.asarray(ids, np.int32),
                                    np.zeros(len(ids), np.float32), True))
    return out

  def begin(self, new_tokens, episodes, key, config):
    return self._turns(new_tokens, episodes, config)

  step = begin


@pytest.fixture(scope="module")
def tok():
  return load_tiny_tokenizer()


def test_the_three_crashing_turns_play_through_rollout(tok):
  # Before issue #22 they raised OverflowError, RecursionError (deepcopy in
  # Environment._call) and TypeError (the tokenizer) out of rollout().
  task_list = [tasks.get_task(BANKING), tasks.get_task(WORKSPACE),
               tasks.get_task(WORKSPACE), tasks.get_task(DRIVE)]
  texts = [[t, "Done."] for t in (HUGE_AMOUNT, _nested(500), _nested(950),
                                  SURROGATE)]
  out = rollout.rollout(Texts(texts, tok), task_list, tok, CONFIG)
  assert [e.end_reason for e in out.episodes] == ["terminal"] * 4
  first = [e.record.turns[0].action for e in out.episodes]
  assert all(isinstance(a, InvalidAction) for a in first[:3]), first
  assert first[3] == ToolCall("read_file", {"file_id": "\ufffd"})
  assert "no file with id '\ufffd'" in out.episodes[3].observations[0]
  # The invalid turns cost validity; nothing else went wrong.
  np.testing.assert_array_equal(np.asarray(out.trajectories.z)[:, 3],
                                [0, 0, 0, 1])
  assert out.stats["env_errors"] == out.stats["verifier_errors"] == 0


class Fragile(Environment):
  """A world whose only tool raises (an environment bug)."""
  suite = "fragile"

  @tool
  def explode(self) -> str:
    """Raises."""
    raise KeyError("boom")


FRAGILE = Task("fragile/benign/f/train/0", "fragile", "benign", "train", "f",
               0, "Press the button.", {})


def _make_env(task):
  return Fragile(task) if task.suite == "fragile" else tasks.make_env(task)


def test_an_environment_that_raises_ends_one_episode(tok):
  texts = [[_call("explode", "{}"), "Done."], ["Done."]]
  out = rollout.rollout(Texts(texts, tok), [FRAGILE, tasks.get_task(DRIVE)],
                        tok, CONFIG, make_env=_make_env)
  broken, fine = out.episodes
  assert broken.end_reason == "env_error" and fine.end_reason == "terminal"
  assert broken.record.details["env_error"] == (
      "environment error (KeyError: 'boom')")
  assert isinstance(broken.record.turns[0].action, InvalidAction)
  assert broken.record.z[3] == 0
  assert out.stats["env_errors"] == 1


def test_a_verifier_that_raises_scores_zero_and_is_counted(tok):
  def verify_or_raise(task, env, turns, max_turns):
    if task.suite == "drive":
      raise ValueError("broken predicate")
    return verify(task, env, turns, max_turns)
  texts = [["Done."], ["Done."]]
  out = rollout.rollout(Texts(texts, tok), [tasks.get_task(DRIVE),
                                            tasks.get_task(BANKING)],
                        tok, CONFIG, verify=verify_or_raise)
  z = np.asarray(out.trajectories.z)
  np.testing.assert_array_equal(z[0], [0, 0, 0, 0])
  assert out.episodes[0].record.details["verifier_error"] == (
      "verifier error (ValueError: broken predicate)")
  assert out.stats["verifier_errors"] == 1
  assert z[1, 3] == 1  # The other episode is scored as usual.
  from mosaic_jax.train import pg  # pylint: disable=import-outside-toplevel
  stats = pg.rollout_stats(out)
  assert stats["batch/verifier_errors"] == 1 and stats["batch/env_errors"] == 0
