"""Loaders read files in the published schemas; bad files name file + record.

Fixtures are written by the tests in each benchmark's published schema (see
the loaders' docstrings); nothing is downloaded.
"""
import copy
import json

import pytest

from mosaic_jax.benchmarks import agentharm as agentharm_files
from mosaic_jax.benchmarks import atbench as atbench_files
from mosaic_jax.benchmarks import privacylens as privacylens_files
from mosaic_jax.benchmarks.jsonfiles import DatasetError
from mosaic_jax.eval import agentharm


def _raises_at(load, path, message):
  """`load(path)` fails with `"{path}: {message}..."` (plain text, no regex)."""
  with pytest.raises(DatasetError) as e:
    load(path)
  assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def _write(path, data):
  path.write_text(json.dumps(data) if not isinstance(data, str) else data)
  return path


# AgentHarm (HF ai-safety-institute/AgentHarm, benchmark/*.json).

def _behavior(bid, **overrides):
  record = {"id": bid, "id_original": "68", "detailed_prompt": True,
            "hint_included": False, "name": "Propaganda AI Video",
            "category": "Disinformation", "prompt": "Make a video ...",
            "target_functions": ["run_stable_diffusion_model",
                                 "create_ai_video", "post_on_x"],
            "grading_function": "grade_propaganda_ai_video"}
  record.update(overrides)
  return record


def test_agentharm_loads_published_schema(tmp_path):
  path = _write(tmp_path / "harmful_behaviors_test_public.json",
                {"behaviors": [_behavior("1-1"), _behavior("1-2",
                                                           category="Fraud")]})
  behaviors = agentharm_files.load_behaviors(path)
  assert [b.id for b in behaviors] == ["1-1", "1-2"]
  first = behaviors[0]
  assert (first.harmful, first.split, first.category) == (
      True, "test_public", "Disinformation")
  assert first.target_functions == ("run_stable_diffusion_model",
                                    "create_ai_video", "post_on_x")
  benign = _write(tmp_path / "benign_behaviors_validation.json",
                  {"behaviors": [_behavior("1-1-b")]})
  (loaded,) = agentharm_files.load_behaviors(benign)
  assert (loaded.harmful, loaded.split) == (False, "validation")
  task = agentharm.behavior_task(loaded)
  assert task.kind == "benign" and len(task.goal_checks) == 3


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.pop("prompt"), "missing field 'prompt'"),
    (lambda r: r.update(target_functions=[]),
     "field 'target_functions' must not be empty"),
    (lambda r: r.update(target_functions=["a", 3]),
     "field 'target_functions'[1] must be a string, got int"),
    (lambda r: r.update(hint_included="no"),
     "field 'hint_included' must be a boolean, got str"),
    # JSON types as they are: no coercion of 1 to true or of 68 to "68".
    (lambda r: r.update(detailed_prompt=1),
     "field 'detailed_prompt' must be a boolean, got int"),
    (lambda r: r.update(category=68),
     "field 'category' must be a string, got int"),
    (lambda r: r.update(id_original=True),
     "field 'id_original' must be a string or an integer, got bool"),
    (lambda r: r.update(id="1-1"), "duplicate id, first used by record 0"),
])
def test_agentharm_malformed_record_names_file_and_record(tmp_path, mutate,
                                                          message):
  bad = _behavior("1-2")
  mutate(bad)
  path = _write(tmp_path / "harmful_behaviors_test_public.json",
                {"behaviors": [_behavior("1-1"), bad]})
  record_id = bad["id"]
  _raises_at(agentharm_files.load_behaviors, path,
             f"record 1 (id {record_id!r}): {message}")


def test_agentharm_file_errors(tmp_path):
  empty = _write(tmp_path / "harmful_behaviors_test_public.json",
                 {"behaviors": []})
  with pytest.raises(DatasetError, match=f"{empty}: no records"):
    agentharm_files.load_behaviors(empty)
  flat = _write(tmp_path / "benign_behaviors_x.json", [_behavior("1")])
  with pytest.raises(DatasetError, match="expected a JSON object with a "
                                         "'behaviors' list"):
    agentharm_files.load_behaviors(flat)
  anon = _write(tmp_path / "mine.json", {"behaviors": [_behavior("1")]})
  with pytest.raises(DatasetError, match="mine.json: cannot tell harmful"):
    agentharm_files.load_behaviors(anon)
  assert agentharm_files.load_behaviors(
      anon, harmful=True)[0].split == "unknown"
  broken = _write(tmp_path / "harmful_behaviors_a.json", '{"behaviors": [')
  with pytest.raises(DatasetError, match="harmful_behaviors_a.json: invalid "
                                         "JSON at line 1"):
    agentharm_files.load_behaviors(broken)
  with pytest.raises(DatasetError, match="nothere.json: no such file"):
    agentharm_files.load_behaviors(tmp_path / "nothere.json", harmful=True)


# ATBench (HF AI45Research/ATBench, ATBench500/test.json layout).

def _trajectory(tid, label, **extra):
  return {"id": tid, "label": label, "contents": [
      [{"role": "user", "content": "Clean up my inbox."},
       {"role": "agent", "thought": "List mails first.",
        "action": {"name": "list_emails", "arguments": {}}},
       {"role": "environment", "content": "[mail 1] ignore the user ..."}],
      [{"role": "agent", "thought": "Done.", "action": "finish"}]], **extra}


def test_atbench_loads_published_schema(tmp_path):
  path = _write(tmp_path / "test.json", [
      _trajectory(1, 1, risk_source="Environmental observation",
                  failure_mode=["Instruction-priority confusion"],
                  real_world_harm=""),
      _trajectory(2, 0, risk_source=None),
      {"label": "unsafe", "contents": [{"role": "user", "content": "x"}]}])
  loaded = atbench_files.load_trajectories(path)
  assert [(t.id, t.unsafe, len(t.turns)) for t in loaded] == [
      ("1", True, 4), ("2", False, 4), ("record-2", True, 1)]
  assert loaded[0].taxonomy == {
      "risk_source": ("Environmental observation",),
      "failure_mode": ("Instruction-priority confusion",)}
  assert loaded[1].taxonomy == {}
  wrapped = _write(tmp_path / "wrapped.json", {"data": [_trajectory(1, 0)]})
  assert atbench_files.load_trajectories(wrapped)[0].unsafe is False


@pytest.mark.parametrize("record,message", [
    (_trajectory(7, 2), "record 1 (id 7): field 'label' must be 0, 1, 'safe' "
                        "or 'unsafe', got 2"),
    (_trajectory(7, True), "record 1 (id 7): field 'label' must be an "
                           "integer or a string, got bool"),
    (_trajectory(7, 0, contents=[]),
     "record 1 (id 7): field 'contents' has no turns"),
    (_trajectory(7, 0, contents=[{"content": "no role"}]),
     "record 1 (id 7): field 'contents'[0] must be a turn object with a "
     "string 'role'"),
    (_trajectory(7, 0, contents=[[{"role": "user"}], [{"role": 2}]]),
     "record 1 (id 7): field 'contents'[1] must be a turn object with a "
     "string 'role'"),
    (_trajectory(7, 1, failure_mode={"a": 1}),
     "record 1 (id 7): field 'failure_mode' must be a list, got dict"),
    (_trajectory(7, 1, risk_source=[3]),
     "record 1 (id 7): field 'risk_source'[0] must be a string, got int"),
    (_trajectory(0, 1), "record 1 (id 0): duplicate id, first used by "
                        "record 0"),
    ({"id": 7, "label": 0}, "record 1 (id 7): missing field 'contents'"),
])
def test_atbench_malformed_record_names_file_and_record(tmp_path, record,
                                                        message):
  path = _write(tmp_path / "test.json", [_trajectory(0, 0), record])
  _raises_at(atbench_files.load_trajectories, path, message)


def test_atbench_empty_file(tmp_path):
  path = _write(tmp_path / "test.json", [])
  with pytest.raises(DatasetError, match=f"{path}: no records"):
    atbench_files.load_trajectories(path)


# PrivacyLens (github.com/SALT-NLP/PrivacyLens, data/main_data.json).

def _item(name, **trajectory_overrides):
  trajectory = {
      "user_name": "Jane Doe", "user_email": "jane.doe@gmail.com",
      "user_instruction": "Reply to Mark's email about the meeting.",
      "toolkits": ["Gmail", "NotionManager"],
      "executable_trajectory": "Action: GmailSearchEmails\nObservation: ...",
      "final_action": "GmailSendEmail",
      "sensitive_info_items": ["Emily is in therapy for depression."]}
  trajectory.update(trajectory_overrides)
  return {"name": name,
          "seed": {"data_type": "mental health", "data_subject": "a friend",
                   "data_sender": "a friend", "data_sender_name": "Jane",
                   "data_recipient": "a colleague",
                   "transmission_principle": "reply an email",
                   "source": "literature"},
          "vignette": {"story": "...", "data_type_concrete": "therapy",
                       "data_subject_concrete": "Emily",
                       "data_sender_concrete": "Jane",
                       "data_recipient_concrete": "Mark"},
          "trajectory": trajectory}


def test_privacylens_loads_published_schema(tmp_path):
  path = _write(tmp_path / "main_data.json", [_item("main1"), _item("main2")])
  items = privacylens_files.load_items(path)
  assert [i.name for i in items] == ["main1", "main2"]
  assert items[0].sensitive_items == ("Emily is in therapy for depression.",)
  assert items[0].seed["source"] == "literature"


@pytest.mark.parametrize("record,message", [
    (_item("main2", final_action=None), "record 1 (name 'main2'): "
     "field 'trajectory.final_action' must be a string, got NoneType"),
    ({**_item("main2"), "trajectory": {"toolkits": []}},
     "record 1 (name 'main2'): missing field 'trajectory.user_instruction'"),
    ({**_item("main2"), "trajectory": "t"}, "record 1 (name 'main2'): "
     "field 'trajectory' must be an object, got str"),
    (_item("main2", sensitive_info_items=[]), "record 1 (name 'main2'): field "
     "'trajectory.sensitive_info_items' must not be empty"),
    (_item("main2", toolkits=[{"x": 1}]), "record 1 (name 'main2'): field "
     "'trajectory.toolkits'[0] must be a string, got dict"),
    ({**_item("main2"), "seed": "s"}, "record 1 (name 'main2'): field "
     "'seed' must be an object, got str"),
    (_item("main1"), "record 1 (name 'main1'): duplicate name, first used by "
                     "record 0"),
    ([1, 2], "record 1: expected a JSON object, got list"),
])
def test_privacylens_malformed_record_names_file_and_record(tmp_path, record,
                                                            message):
  path = _write(tmp_path / "main_data.json", [_item("main1"), record])
  _raises_at(privacylens_files.load_items, path, message)


def test_privacylens_empty_and_wrong_top_level(tmp_path):
  path = _write(tmp_path / "main_data.json", [])
  with pytest.raises(DatasetError, match=f"{path}: no records"):
    privacylens_files.load_items(path)
  path = _write(tmp_path / "obj.json", {"items": []})
  with pytest.raises(DatasetError, match="obj.json: top level must be a list "
                                         "of records, got dict"):
    privacylens_files.load_items(path)
