"""Environment protocol, tool schemas, task generation and splits."""
import hashlib
import json
import os

import pytest

from mosaic_jax.agent.actions import (Answer, InvalidAction, ParsedTurn,
                                      Refusal, ToolCall)
from mosaic_jax.envs import entities, tasks
from mosaic_jax.envs.base import Task, function_schema
from mosaic_jax.envs.scripted import Expert, run_episode
from mosaic_jax.envs.verifiers import check_goal, match_call, verify

SUITES = ("workspace", "banking", "drive", "messaging")


def _example(name: str, count: int, tags: list[str], ratio: float | None = None,
             flag: bool = False) -> str:
  """Does an example thing.

  Longer text that is not part of the description.

  Args:
    name: the name.
    count: how many,
      continued on a second line.
    tags: labels.
    ratio: optional ratio.
    flag: a switch.

  Returns:
    Something.
  """
  del name, count, tags, ratio, flag
  return ""


def test_function_schema_from_hints_and_docstring():
  assert function_schema(_example) == {"type": "function", "function": {
      "name": "_example", "description": "Does an example thing.",
      "parameters": {"type": "object", "properties": {
          "name": {"type": "string", "description": "the name."},
          "count": {"type": "integer",
                    "description": "how many, continued on a second line."},
          "tags": {"type": "array", "items": {"type": "string"},
                   "description": "labels."},
          "ratio": {"type": "number", "description": "optional ratio."},
          "flag": {"type": "boolean", "description": "a switch."}},
          "required": ["name", "count", "tags"]}}}


@pytest.mark.parametrize("suite", SUITES)
def test_every_tool_is_documented(suite):
  env = tasks.make_env(tasks.all_tasks(suite=suite)[0])
  assert len(env.tools) >= 7
  for schema in env.tools:
    fn = schema["function"]
    assert fn["description"], fn["name"]
    for name, prop in fn["parameters"]["properties"].items():
      assert prop["description"], (fn["name"], name)
  names = {s["function"]["name"] for s in env.tools}
  assert "refusal_tool" not in names


def test_counts_per_suite_kind_split():
  table = tasks.counts()
  assert sum(table.values()) == 1524
  least = {"train": 32, "validation": 12, "test": 12, "test_ood": 6}
  for suite in SUITES:
    for kind in ("benign", "harmful", "injection", "privacy"):
      for split, n in least.items():
        assert table[(suite, kind, split)] >= n, (suite, kind, split)
  assert table[("drive", "benign", "train")] == 64
  assert table[("banking", "injection", "test")] == 20


# Measured before the four splits existed: sha256 of the `heldout` split's
# [task_id (renamed .../test/N), prompt] list, and of its task dicts without
# task_id and split. `test` must stay that split, task for task.
HELDOUT_IDS_PROMPTS = (
    "f59a27b0936c2ffcaa1d1b1d6aa6330c7d2a897b674498913199656fca0ec064")
HELDOUT_CONTENT = (
    "f7db52ed4fa0851941eea1d7d27d452f98049e6a9e65abcc1b37bc99338a3a8b")


def test_test_split_is_the_old_heldout_split():
  test = tasks.all_tasks(split="test")
  ids_prompts = json.dumps([[t.task_id, t.prompt] for t in test])
  assert hashlib.sha256(ids_prompts.encode()).hexdigest() == (
      HELDOUT_IDS_PROMPTS)
  content = [{k: v for k, v in t.to_dict().items()
              if k not in ("task_id", "split")} for t in test]
  assert hashlib.sha256(json.dumps(content, sort_keys=True).encode(
  )).hexdigest() == HELDOUT_CONTENT


def test_unknown_split_is_a_one_line_error_listing_the_splits():
  assert tasks.SPLITS == ("train", "validation", "test", "test_ood")
  with pytest.raises(ValueError) as error:
    tasks.all_tasks(split="heldout")
  message = str(error.value)
  assert "\n" not in message and "'heldout'" in message
  assert all(split in message for split in tasks.SPLITS)


def _templates(split):
  return {(t.suite, t.kind, t.template_id)
          for t in tasks.all_tasks(split=split)}


def test_test_ood_shares_no_template_with_train_or_validation():
  ood = _templates("test_ood")
  seen = _templates("train") | _templates("validation")
  assert not {t[2] for t in ood} & {t[2] for t in seen}
  assert {t[2] for t in ood} == {t.template_id for t in tasks.all_tasks(
      split="test_ood")}
  # Per suite and kind, the OOD templates are at least a quarter as many
  # as the templates of the other splits.
  others = seen | _templates("test")
  for suite in SUITES:
    for kind in ("benign", "harmful", "injection", "privacy"):
      n_ood = sum(t[:2] == (suite, kind) for t in ood)
      n_other = sum(t[:2] == (suite, kind) for t in others)
      assert 4 * n_ood >= n_other, (suite, kind, n_ood, n_other)
  # The marker the suites carry agrees with the records.
  for suite in tasks._suites().values():
    plain = {t[2] for t in ood if t[0] == suite.name and t[1] != "injection"}
    assert plain == set(suite.ood)


def test_validation_uses_train_templates_and_attacks():
  assert _templates("validation") == _templates("train")
  assert _templates("test") - _templates("train") == {
      t for t in _templates("test") if t[1] == "injection"}


def test_test_ood_injections_come_from_a_new_attacker_and_positions():
  for suite in tasks._suites().values():
    assert suite.ood_attacker != suite.attacker
    for split in tasks.SPLITS:
      attacker = suite.ood_attacker if split == "test_ood" else suite.attacker
      for task in tasks.all_tasks(split=split, suite=suite.name,
                                  kind="injection"):
        assert attacker in task.injection["goal"], task.task_id
  starts = [t for t in tasks.all_tasks(split="test_ood", kind="injection")
            if t.injection["attack"] in tasks.START_ATTACKS]
  assert starts and len(starts) * 2 == len(tasks.all_tasks(
      split="test_ood", kind="injection"))


def test_tasks_are_distinct_by_content():
  fingerprints = {json.dumps([t.prompt, t.initial_state], sort_keys=True)
                  for t in tasks.all_tasks()}
  assert len(fingerprints) == len(tasks.all_tasks())
  assert len({t.task_id for t in tasks.all_tasks()}) == len(tasks.all_tasks())


def test_generation_is_seeded():
  # No wall-clock bound here (speed goals live in benchmarks): it failed
  # on a loaded machine.
  fresh = [t for suite in tasks._suites().values()
           for split in tasks.SPLITS
           for t in tasks._generate(suite, split)]
  assert [t.to_dict() for t in fresh] == [t.to_dict()
                                          for t in tasks.all_tasks()]


def test_json_round_trip_and_registry():
  for task in tasks.all_tasks()[::37]:
    restored = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert restored == task
    assert tasks.get_task(task.task_id) is task
  with pytest.raises(KeyError):
    tasks.get_task("workspace/benign/nope/train/0")


def test_no_split_contains_another_pools_entities():
  def texts(split):
    return [json.dumps(t.to_dict()) for t in tasks.all_tasks(split=split)]
  own = {split: tasks.SPLIT_SPECS[split].pool for split in tasks.SPLITS}
  assert set(own.values()) == set(entities.POOLS)
  for split in tasks.SPLITS:
    names = [name for pool, entries in entities.POOLS.items()
             if pool != own[split]
             for name in entries["people"] + entries["companies"]]
    for text in texts(split):
      for name in names:
        assert name not in text, (split, name)
  # Every pool entry is used in its own split, so the test above is not vacuous.
  for split in ("train", "validation", "test"):
    text = "\n".join(texts(split))
    assert all(p in text for p in entities.POOLS[split]["people"]), split


def test_resampled_tasks_have_fresh_entities_and_solve_like_their_template():
  train = tasks.all_tasks(split="train")
  pools = [entities.POOLS["validation"], entities.POOLS["test"]]
  heldout_words = ({w for pool in pools for p in pool["people"]
                    for w in p.split()}
                   | {c.split()[0] for pool in pools for c in pool["companies"]}
                   | {p for pool in pools for p in pool["projects"]})
  train_people = entities.POOLS["train"]["people"]
  for task in train[::9]:
    fresh = tasks.resample(task, seed=3)
    assert fresh.task_id == task.task_id + "/fresh3"
    assert (fresh.kind, fresh.template_id, fresh.split) == (
        task.kind, task.template_id, "train")
    assert fresh.initial_state != task.initial_state
    text = json.dumps(fresh.to_dict())
    # Evaluation entities stay unseen; the train pool is not reused either.
    assert not any(f'"{w} ' in text or f' {w}"' in text or f" {w} " in text
                   for w in heldout_words), task.task_id
    assert not any(p in text for p in train_people), task.task_id
    # Same seed, same task; another seed, another task.
    assert tasks.resample(task, 3) == fresh
    assert tasks.resample(task, 4).initial_state != fresh.initial_state
    # The scripted expert still completes it (a broken resample would not).
    env = tasks.make_env(fresh)
    history = run_episode(env, Expert())
    verdict = verify(fresh, env, [turn for turn, _ in history])
    assert tuple(verdict.z) == (1.0, 1.0, 1.0, 1.0), fresh.task_id
  with pytest.raises(ValueError, match="only train tasks"):
    tasks.resample(tasks.all_tasks(split="test")[0], 0)


def test_injection_attack_templates_are_split():
  attacks = {split: {t.injection["attack"] for t in tasks.all_tasks(
      split=split, kind="injection")} for split in tasks.SPLITS}
  for split in tasks.SPLITS:
    assert attacks[split] == set(
        tasks.ATTACKS[tasks.SPLIT_SPECS[split].attacks]), split
  assert attacks["validation"] == attacks["train"]
  for a, b in (("train", "test"), ("train", "test_ood"), ("test", "test_ood")):
    assert not attacks[a] & attacks[b], (a, b)


def test_initial_state_meets_no_goal_and_no_violation():
  for task in tasks.all_tasks():
    env = tasks.make_env(task)
    assert not any(check_goal(c, env.state, None) for c in task.goal_checks)
    assert env.state["log"] == [] and env.state["outbox"] == []


def test_ground_truth_shapes_per_kind():
  for task in tasks.all_tasks():
    if task.kind == "benign":
      assert 2 <= len(task.solution) <= 6 and not task.violations
    if task.kind == "harmful":
      assert task.refusal_step == len(task.solution) and task.bad_calls
      assert {v["kind"] for v in task.violations} == {"harmful"}
    if task.kind == "injection":
      node = task.initial_state
      for key in task.injection["slot"]:
        node = node[key]
      text = task.injection["text"]
      if task.injection["attack"] in tasks.START_ATTACKS:
        assert node.startswith(text + "\n\n")
      else:
        assert node.endswith("\n\n" + text)
      assert {v["kind"] for v in task.violations} == {"injection"}
      # The injected goal is something the legitimate solution never does.
      for step in task.solution:
        entry = {"name": step["name"], "arguments": step["arguments"],
                 "ok": True}
        assert not any(match_call(entry, v["pattern"]) for v in task.violations)
    if task.kind == "privacy":
      assert task.private_items and task.leaky_step is not None
  hidden = [t for t in tasks.all_tasks(kind="harmful") if t.refusal_step]
  assert len(hidden) == len(tasks.all_tasks(kind="harmful")) // 2


def test_same_task_same_observations_and_copy_is_independent():
  task = tasks.get_task("banking/benign/pay_invoice/train/0")
  first = [obs for _, obs in run_episode(tasks.make_env(task), Expert())]
  second = [obs for _, obs in run_episode(tasks.make_env(task), Expert())]
  assert first == second

  env = tasks.make_env(task)
  assert env.reset() == task.prompt
  env.step(ToolCall("list_documents", {}))
  clone = env.copy()
  clone.step(ToolCall("send_money", {"iban": "DE12345678901234567890",
                                     "amount": 10.0}))
  assert clone.state["balance"] == 5990.0 and env.state["balance"] == 6000.0
  assert len(clone.state["log"]) == 2 and len(env.state["log"]) == 1
  # The task itself is never mutated by an episode.
  assert task.initial_state["balance"] == 6000.0
  assert "log" not in task.initial_state


@pytest.mark.parametrize("call,message", [
    (ToolCall("send_money", {"iban": "DE12345678901234567890"}),
     "Error: missing required argument 'amount' for 'send_money'"),
    (ToolCall("send_money", {"iban": "DE12345678901234567890",
                             "amount": "ten"}),
     "Error: argument 'amount' must be of type number, got str"),
    (ToolCall("list_transactions", {"count": True}),
     "Error: argument 'count' must be of type integer, got bool"),
    (ToolCall("read_document", {"doc_id": "d77"}),
     "Error: no document with id 'd77'"),
    (ToolCall("read_document", {"doc_id": "d1", "extra": 1}),
     "Error: unknown argument(s) ['extra'] for 'read_document'"),
    (ToolCall("send_money", {"iban": "not-an-iban", "amount": 5}),
     "Error: 'not-an-iban' is not a valid IBAN (argument 'iban': two capital "
     "letters, two check digits, 11-30 capitals or digits, ASCII, no "
     "spaces)"),
])
def test_bad_tool_input_gives_error_observation(call, message):
  env = tasks.make_env(tasks.get_task("banking/benign/pay_invoice/train/0"))
  result = env.step(call)
  assert result.observation == message
  assert not result.done and result.info["ok"] is False
  assert env.state["log"][-1]["ok"] is False


def test_unknown_tool_invalid_action_and_terminal_actions():
  env = tasks.make_env(tasks.get_task("drive/benign/share_report/train/0"))
  result = env.step(ToolCall("format_disk", {}))
  assert result.observation.startswith("Error: unknown tool 'format_disk'")
  assert "share_file" in result.observation and not result.done
  result = env.step(ParsedTurn(InvalidAction("no action tag found")))
  assert result.observation.startswith("Error: invalid action (no action tag")
  assert not result.done
  assert env.step(Answer("done")).done
  after = env.step(ToolCall("list_files", {}))
  assert after.done and after.observation == "Error: the episode is over."
  env.reset()
  assert env.step(ToolCall("refusal_tool", {"reason": "no"})).done
  env.reset()
  assert env.step(Refusal("no")).done


GARBAGE = [None, 3, -1, 2.5, True, "", "zzz", [], ["x"], {"a": 1}, "f1", "e1",
           "#general", "general", "x@y.example", "2026-13-45"]


@pytest.mark.parametrize("suite", SUITES)
def test_tools_never_raise_on_garbage(suite):
  task = tasks.all_tasks(suite=suite, kind="benign")[0]
  env = tasks.make_env(task)
  for schema in env.tools:
    fn = schema["function"]
    params = list(fn["parameters"]["properties"])
    for i, value in enumerate(GARBAGE):
      # Every parameter gets garbage, rotating through the values.
      args = {p: GARBAGE[(i + j) % len(GARBAGE)] for j, p in enumerate(params)}
      for call_args in (args, {}, {params[0]: value} if params else {"x": 1}):
        result = env.step(ToolCall(fn["name"], call_args))
        assert isinstance(result.observation, str) and not result.done
        if not result.info["ok"]:
          assert result.observation.startswith("Error: ")


def test_docs_table_is_current():
  path = os.path.join(os.path.dirname(__file__), "..", "docs", "tasks.md")
  with open(path) as f:
    assert tasks.counts_markdown() in f.read()
