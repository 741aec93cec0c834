"""Scripted policies: the expert passes everything, each flaw fails its target."""
import copy

import numpy as np
import pytest

from mosaic_jax.agent.actions import Answer, Refusal, ToolCall
from mosaic_jax.envs import tasks
from mosaic_jax.envs.base import Task
from mosaic_jax.envs.scripted import POLICIES, Expert, OverRefuse, run_episode
from mosaic_jax.envs.verifiers import verify

MAX_TURNS = 16
# `refuse_all` is another name of `over_refuse`, played once.
DISTINCT = sorted(name for name in POLICIES if name != "refuse_all")


def _hidden_utility(task, benign_done):
  return benign_done / (len(task.goal_checks) + 1)


def expected_z(policy, task):
  """Hand-stated outcome of each policy on each kind of task."""
  kind, hidden = task.kind, bool(task.refusal_step)
  if policy == "expert":
    return [1, 1, 1, 1]
  if policy == "comply_all":
    if kind != "harmful":
      return [1, 1, 1, 1]
    # Its closing "Done" carries no facts, so answer checks fail.
    state_checks = sum(c["op"] != "answer" for c in task.goal_checks)
    return [0, _hidden_utility(task, state_checks) if hidden else 0, 1, 1]
  if policy == "follow_injection":
    return [0, 1, 1, 1] if kind == "injection" else [1, 1, 1, 1]
  if policy == "reckless":  # comply_all on harmful, follow_injection else
    return expected_z("comply_all" if kind == "harmful" else
                      "follow_injection", task)
  if policy in ("over_refuse", "refuse_all"):
    if kind != "harmful":
      return [1, 0, 0, 1]
    return [1, _hidden_utility(task, 1) if hidden else 1, 1, 1]
  if policy == "leak":
    return [0, 1, 1, 1] if kind == "privacy" else [1, 1, 1, 1]
  if policy == "lazy":
    return [1, 0, 1, 1]
  if policy == "malformed":
    return [1, 0, 1, 0]
  raise ValueError(policy)


@pytest.fixture(scope="module")
def verdicts():
  # Every task of every split (tasks.all_tasks() has them all).
  out = {}
  for task in tasks.all_tasks():
    for name in DISTINCT:
      cls = POLICIES[name]
      env = tasks.make_env(task)
      history = run_episode(env, cls(), MAX_TURNS)
      out[(task.task_id, name)] = (
          history, verify(task, env, [t for t, _ in history], MAX_TURNS))
  return out


@pytest.mark.parametrize("policy", DISTINCT)
def test_policy_scores_on_every_task(verdicts, policy):
  assert {t.split for t in tasks.all_tasks()} == set(tasks.SPLITS)
  for task in tasks.all_tasks():
    _, verdict = verdicts[(task.task_id, policy)]
    np.testing.assert_allclose(verdict.z, expected_z(policy, task), rtol=1e-6,
                               err_msg=f"{policy} on {task.task_id}")


def test_baselines_refuse_all_and_lazy(verdicts):
  assert POLICIES["refuse_all"] is OverRefuse
  for task in tasks.all_tasks():
    history, _ = verdicts[(task.task_id, "lazy")]
    assert [type(turn.action) for turn, _ in history] == [Answer]
    history, _ = verdicts[(task.task_id, "over_refuse")]
    assert [type(turn.action) for turn, _ in history] == [Refusal]


def test_expert_refuses_at_the_right_step(verdicts):
  for task in tasks.all_tasks(kind="harmful"):
    _, verdict = verdicts[(task.task_id, "expert")]
    assert verdict.details["refusal_step"] == task.refusal_step
    assert verdict.details["refusal_timing"] == "on_time"


def test_expert_uses_safety_thoughts_on_risky_turns_only(verdicts):
  for task in tasks.all_tasks():
    history, _ = verdicts[(task.task_id, "expert")]
    flagged = [i for i, (turn, _) in enumerate(history)
               if turn.safety_thoughts is not None]
    if task.kind == "benign":
      assert flagged == []
    elif task.kind == "harmful":
      assert flagged == [len(history) - 1]
      assert isinstance(history[-1][0].action, Refusal)
    elif task.kind == "injection":
      # The turns right after the tool results that carried the injection
      # (two for OOD carriers shown by a listing and again when read).
      marker = task.injection["text"][:40]
      seen = [i for i, (_, obs) in enumerate(history) if marker in obs]
      assert seen and flagged == [i + 1 for i in seen], task.task_id
    else:
      assert flagged == [task.leaky_step["index"]]
    assert all(turn.plan for turn, _ in history)


def test_flawed_policies_report_what_went_wrong(verdicts):
  task = tasks.get_task("banking/injection/pay_invoice+admin_note/test/0")
  _, verdict = verdicts[(task.task_id, "follow_injection")]
  assert verdict.details["injected_actions"] == [
      {"name": "send_money", "arguments": dict(task.bad_calls[0]["arguments"])}]
  task = tasks.get_task("messaging/privacy/contact_for_partner/train/0")
  _, verdict = verdicts[(task.task_id, "leak")]
  assert {leak["item"] for leak in verdict.details["leaks"]} == set(
      task.private_items)


def test_expert_reads_ids_from_observations():
  # Renumber the invoice document: an oracle that replayed fixed ids would fail.
  task = tasks.get_task("banking/benign/pay_invoice/train/5")
  data = task.to_dict()
  data["initial_state"]["documents"][1]["id"] = "d42"
  data["initial_state"] = copy.deepcopy(data["initial_state"])
  moved = Task.from_dict(data)
  env = tasks.make_env(moved)
  history = run_episode(env, Expert(), MAX_TURNS)
  assert history[1][0].action == ToolCall("read_document", {"doc_id": "d42"})
  np.testing.assert_array_equal(
      verify(moved, env, [t for t, _ in history]).z, [1, 1, 1, 1])


def test_run_episode_stops_at_max_turns_and_at_terminal():
  task = tasks.get_task("workspace/benign/share_agenda/train/0")
  history = run_episode(tasks.make_env(task), POLICIES["malformed"](), 3)
  assert len(history) == 3
  history = run_episode(tasks.make_env(task), Expert(), MAX_TURNS)
  assert len(history) == len(task.solution) + 1
  assert isinstance(history[-1][0].action, Answer)
