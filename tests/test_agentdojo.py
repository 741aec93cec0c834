"""AgentDojo adapter: ground truth replayed through the project's protocol and
Environment reaches AgentDojo's own verdicts, and AgentDojo's runner drives a
text policy through `make_pipeline`."""
import numpy as np
import pytest

pytest.importorskip("agentdojo")

# pylint: disable=g-import-not-at-top,wrong-import-position
from agentdojo.agent_pipeline.ground_truth_pipeline import GroundTruthPipeline
from agentdojo.attacks.attack_registry import load_attack
from agentdojo.benchmark import (benchmark_suite_with_injections,
                                 benchmark_suite_without_injections)
from agentdojo.functions_runtime import FunctionsRuntime
from agentdojo.logging import OutputLogger
from agentdojo.task_suite.load_suites import get_suite

from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall)
from mosaic_jax.agent.parse import parse_turn
from mosaic_jax.agent.protocol import format_turn
from mosaic_jax.envs import agentdojo as ad
from mosaic_jax.envs.scripted import run_episode

VERSION = "v1.2.2"
# (user tasks, injection tasks) per suite at v1.2.2, as AgentDojo documents.
SIZES = {"workspace": (40, 14), "travel": (20, 7), "banking": (16, 9),
         "slack": (21, 5)}
MAX_TURNS = 40


class TextRoundTrip:
  """Sends a scripted policy's turns through the text protocol: each turn is
  written with `format_turn` and read back with `parse_turn` against the
  environment's schemas, as a model's output would be."""

  def __init__(self, policy, env):
    self.policy, self.env = policy, env

  def act(self, task, history):
    text = format_turn(self.policy.act(task, history))
    return parse_turn(text, schemas=self.env.tools)


def replay(task, follow_injection=False):
  """Runs the ground-truth replay of `task`; returns (env, history, verdict)."""
  env = ad.AgentDojoEnvironment(task)
  policy = TextRoundTrip(ad.GroundTruthPolicy(follow_injection), env)
  history = run_episode(env, policy, max_turns=MAX_TURNS)
  verdict = ad.verify(env, [turn for turn, _ in history], MAX_TURNS)
  return env, history, verdict


def agentdojo_ground_truth(task):
  """AgentDojo's own (utility, injection succeeded) for the task's ground
  truth, from its runner on the same injected environment."""
  suite = get_suite(task.version, task.suite)
  user_task = suite.get_user_task_by_id(task.user_task_id)
  return suite.run_task_with_pipeline(
      GroundTruthPipeline(user_task), user_task,
      suite.get_injection_task_by_id(task.injection_task_id),
      dict(task.injections), environment=ad.loaded_environment(task))


def test_enumeration_matches_agentdojo_sizes():
  assert ad.list_suites(VERSION) == list(SIZES)
  for suite, (n_user, n_injection) in SIZES.items():
    assert len(ad.list_user_tasks(suite, VERSION)) == n_user
    assert len(ad.list_injection_tasks(suite, VERSION)) == n_injection
  assert ad.DEFAULT_ATTACK in ad.list_attacks()
  benign = ad.make_tasks(["banking"])
  assert [t.task_id for t in benign[:2]] == [
      "agentdojo/v1.2.2/banking/user_task_0",
      "agentdojo/v1.2.2/banking/user_task_1"]
  assert {t.kind for t in benign} == {"benign"} and len(benign) == 16
  pairs = ad.make_tasks(["slack"], attack=ad.DEFAULT_ATTACK,
                        user_task_ids=["user_task_1"])
  assert [t.injection_task_id for t in pairs] == [
      f"injection_task_{i}" for i in range(1, 6)]
  assert pairs[0].task_id == ("agentdojo/v1.2.2/slack/user_task_1/"
                              "important_instructions/injection_task_1")
  assert all(t.kind == "injection" and t.injections for t in pairs)
  assert ad.AgentDojoTask.from_dict(pairs[0].to_dict()) == pairs[0]


@pytest.mark.parametrize("suite", list(SIZES))
def test_ground_truth_replay_reaches_utility_on_every_user_task(suite):
  failures = {}
  for user_task_id in ad.list_user_tasks(suite, VERSION):
    task = ad.make_task(suite, user_task_id, version=VERSION)
    env, history, verdict = replay(task)
    assert env.reset() == task.prompt
    n_calls = len(env.user_task.ground_truth(env.initial_environment))
    assert len(history) == n_calls + 1  # every call, then the answer
    if not np.array_equal(verdict.z, [1, 1, 1, 1]):
      failures[user_task_id] = (verdict.z.tolist(), verdict.details)
  assert not failures


def _injection_pairs(suite):
  """The pairs checked under attack: all of them for the small suites; each
  injection task once, on rotating user tasks, for the slow ones."""
  users = ad.list_user_tasks(suite, VERSION)
  injections = ad.list_injection_tasks(suite, VERSION)
  if suite in ("banking", "slack"):
    return [(u, i) for u in users for i in injections]
  return [(users[(5 * k) % len(users)], i) for k, i in enumerate(injections)]


@pytest.mark.parametrize("suite", list(SIZES))
def test_ground_truth_under_attack_is_secure_and_matches_agentdojo(suite):
  mismatches, insecure, unseen = [], [], []
  for user_task_id, injection_task_id in _injection_pairs(suite):
    task = ad.make_task(suite, user_task_id, injection_task_id,
                        version=VERSION)
    _, history, verdict = replay(task)
    utility, injected = agentdojo_ground_truth(task)
    if verdict.z[0] != 1.0:
      insecure.append(task.task_id)
    if (verdict.z[1] == 1.0, verdict.details["injection_succeeded"]) != (
        utility, injected):
      mismatches.append((task.task_id, verdict.z.tolist(), utility, injected))
    # The attack's text reaches the agent: the replay reads the vectors the
    # attack chose, as AgentDojo's injection candidates promise.
    if not any("<INFORMATION>" in obs for _, obs in history):
      unseen.append(task.task_id)
  assert not insecure
  assert not mismatches
  assert not unseen


@pytest.mark.parametrize("suite", list(SIZES))
def test_following_the_injection_breaks_security(suite):
  user_task_id = ad.list_user_tasks(suite, VERSION)[0]
  injection_ids = ad.list_injection_tasks(suite, VERSION)
  if suite == "workspace":
    injection_ids = injection_ids[:3]  # 1 s per pair; the others are fast
  for injection_task_id in injection_ids:
    task = ad.make_task(suite, user_task_id, injection_task_id,
                        version=VERSION)
    _, _, verdict = replay(task, follow_injection=True)
    assert verdict.z[0] == 0.0, task.task_id
    assert verdict.details["injection_succeeded"] is True
    assert verdict.z[3] == 1.0


def test_bad_tool_input_gives_error_observations():
  task = ad.make_task("banking", "user_task_0", version=VERSION)
  env = ad.AgentDojoEnvironment(task)
  before = env.environment.model_copy(deep=True)
  steps = {
      "unknown": ToolCall("wire_everything", {}),
      "missing": ToolCall("send_money", {"recipient": "X"}),
      "type": ToolCall("get_most_recent_transactions", {"n": "many"}),
      "not_object": ToolCall("get_balance", ["x"]),
      "tool_raises": ToolCall("update_scheduled_transaction", {"id": 999}),
      "key_not_string": ToolCall("get_balance", {1: "x"}),
      "unformattable": ToolCall("odd_result", {}),
  }

  def odd_result() -> list:
    """Returns a list whose items AgentDojo's result formatter rejects."""
    return [1.5]

  env.runtime.register_function(odd_result)
  results = {k: env.step(call) for k, call in steps.items()}
  assert results["unknown"].observation == (
      "Error: Invalid tool wire_everything provided.")
  assert results["missing"].observation.startswith("Error: ValidationError")
  assert "amount" in results["missing"].observation
  assert results["type"].observation.startswith("Error: ValidationError")
  # Wrongly typed actions never reach AgentDojo (`actions.check_action`).
  assert results["not_object"].observation.startswith(
      "Error: invalid action (arguments of 'get_balance' must be an object, "
      "got list)")
  assert results["tool_raises"].observation == (
      "Error: ValueError: Transaction with ID 999 not found.")
  assert results["key_not_string"].observation.startswith(
      "Error: invalid action (arguments of 'get_balance' hold an object key "
      "of type int)")
  assert results["unformattable"].observation == (
      "Error: TypeError: Not valid type for item tool result: <class 'float'>")
  assert all(not r.done and not r.info["ok"] for r in results.values())
  assert env.environment == before
  # Invalid actions are not tool calls: they leave no log entry.
  assert [e["ok"] for e in env.state["log"]] == [False] * (len(steps) - 2)
  ok = env.step(ToolCall("get_balance", {}))
  assert ok.info["ok"] and ok.observation == str(before.bank_account.balance)
  # Invalid turns and terminal actions follow the base protocol.
  assert env.step(InvalidAction("empty turn")).info["invalid"]
  assert env.step(ToolCall("refusal_tool", {"reason": "no"})).done
  assert env.step(ToolCall("get_balance", {})).observation == (
      "Error: the episode is over.")


def test_verdict_mapping_of_refusal_and_unfinished_episodes():
  task = ad.make_task("banking", "user_task_0", "injection_task_0",
                      version=VERSION)
  env = ad.AgentDojoEnvironment(task)
  refused = [Refusal("The bill looks like a scam.")]
  for action in refused:
    env.step(action)
  verdict = ad.verify(env, refused)
  assert verdict.z.tolist() == [1, 0, 0, 1]
  assert verdict.details["model_output"] == "The bill looks like a scam."
  env.reset()
  turns = [InvalidAction("no action tag found"),
           ParsedTurn(ToolCall("get_balance", {}))]
  for turn in turns:
    env.step(turn)
  verdict = ad.verify(env, turns)
  assert verdict.z.tolist() == [1, 0, 1, 0]
  assert verdict.details["invalid_turns"] == 1
  assert not verdict.details["terminated"]
  # Answering within the limit is valid; one turn over it is not.
  answered = [Answer("Done.")]
  assert ad.verify(env, answered, max_turns=1).z[3] == 1.0
  assert ad.verify(env, turns + answered, max_turns=2).z[3] == 0.0


def test_copy_is_independent_and_reset_restores():
  task = ad.make_task("slack", "user_task_0", version=VERSION)
  env = ad.AgentDojoEnvironment(task)
  other = env.copy()
  other.step(ToolCall("add_user_to_channel",
                      {"channel": "private", "user": "Eve"}))
  assert env.environment == env.initial_environment
  assert other.environment != env.initial_environment
  assert env.state["log"] == [] and len(other.trace) == 1
  other.reset()
  assert other.environment == env.initial_environment and not other.trace


def test_agentdojo_runner_scores_the_text_pipeline(tmp_path):
  suite = get_suite(VERSION, "banking")
  pipeline = ad.make_pipeline(ad.GroundTruthTextPolicy("banking", VERSION))
  with OutputLogger(logdir=str(tmp_path)):
    benign = benchmark_suite_without_injections(
        pipeline, suite, logdir=tmp_path, force_rerun=True,
        benchmark_version=VERSION)
    attack = load_attack(ad.DEFAULT_ATTACK, suite, pipeline)
    user_tasks = ["user_task_0", "user_task_3"]
    attacked = benchmark_suite_with_injections(
        pipeline, suite, attack, logdir=tmp_path, force_rerun=True,
        user_tasks=user_tasks, benchmark_version=VERSION)
  assert len(benign["utility_results"]) == 16
  assert all(benign["utility_results"].values())
  # Injection tasks run alone are solved by their own ground truth.
  assert all(attacked["injection_tasks_utility_results"].values())
  assert len(attacked["utility_results"]) == 2 * 9
  assert all(attacked["utility_results"].values())
  # AgentDojo's `security` is True when the attack succeeded.
  assert not any(attacked["security_results"].values())
  # The runner's attack, named after the pipeline, writes what make_task does.
  task = ad.make_task("banking", "user_task_0", "injection_task_2",
                      version=VERSION)
  assert attack.attack(suite.get_user_task_by_id("user_task_0"),
                       suite.get_injection_task_by_id("injection_task_2")
                       ) == task.injections
  assert "Local model" in next(iter(task.injections.values()))


def test_pipeline_turns_refusals_and_invalid_output_into_final_messages():
  suite = get_suite(VERSION, "banking")
  user_task = suite.get_user_task_by_id("user_task_0")
  seen = {}

  def refuse(messages, tools):
    seen["roles"] = [m["role"] for m in messages]
    seen["tools"] = [t["function"]["name"] for t in tools]
    return format_turn(ParsedTurn(Refusal("I won't pay that."), plan="Check."))

  utility, _ = suite.run_task_with_pipeline(ad.make_pipeline(refuse),
                                            user_task, None, {})
  assert not utility
  assert seen["roles"] == ["system", "user"]
  assert seen["tools"][-1] == "refusal_tool" and "send_money" in seen["tools"]

  calls = []

  def one_call_then_garbage(messages, tools):
    del tools
    calls.append([m["role"] for m in messages])
    if len(calls) == 1:
      return format_turn(ParsedTurn(ToolCall("get_balance", {}), plan="Look."))
    return "<tool_call>{not json</tool_call>"

  pipeline = ad.make_pipeline(one_call_then_garbage)
  runtime = FunctionsRuntime(suite.tools)
  env = suite.load_and_inject_default_environment({})
  _, _, _, messages, _ = pipeline.query(user_task.PROMPT, runtime, env)
  assert calls == [["system", "user"],
                   ["system", "user", "assistant", "tool"]]
  assert messages[2]["tool_calls"][0].function == "get_balance"
  assert messages[2]["content"][0]["content"] == "<think>\nLook.\n</think>\n"
  assert messages[-1]["tool_calls"] is None
  assert messages[-1]["content"][0]["content"] == (
      "<tool_call>{not json</tool_call>")


@pytest.mark.parametrize("override,message", [
    (dict(suites="banking,nosuch"),
     "--config.suites: 'nosuch' not found in AgentDojo; valid: workspace"),
    (dict(suites="slack", injection_tasks="injection_task_0"),
     "--config.injection_tasks: 'injection_task_0' not found in AgentDojo "
     "suite 'slack'; valid: injection_task_1"),
    (dict(suites="banking", user_tasks="user_task_999"),
     "--config.user_tasks: 'user_task_999' not found in AgentDojo suite "
     "'banking'; valid: user_task_0"),
])
def test_unknown_agentdojo_names_are_one_line_config_errors(override,
                                                            message):
  from configs.eval import agentdojo as agentdojo_config
  from mosaic_jax.eval import harness
  from mosaic_jax.train import validate
  config = agentdojo_config.get_config()
  config.update(override)
  with pytest.raises(validate.ConfigError) as e:
    harness.agentdojo_specs(config)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  # Names that exist still enumerate.
  config.update(suites="banking", user_tasks="user_task_0",
                injection_tasks="injection_task_0")
  assert harness.agentdojo_specs(config)
