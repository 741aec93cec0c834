"""The HTML transcript page (`mosaic_jax.viz.transcripts`,
`python -m experiments.transcripts`), read back with html.parser."""
import html.parser
import json
import os
import subprocess
import sys

import pytest

from mosaic_jax.envs import scripted, tasks
from mosaic_jax.envs.base import Task
from mosaic_jax.eval import episodes as episodes_lib
from mosaic_jax.envs.records import EpisodeRecord
from mosaic_jax.viz import transcripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tree(html.parser.HTMLParser):
  """Start tags with their classes and the text inside each element."""

  VOID = {"meta", "br", "img", "hr", "link", "input"}

  def __init__(self):
    super().__init__()
    self.elements = []
    self.stack = []
    self.scripts = 0

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    # [tag, classes, attributes, text, the classes of its ancestors]
    element = [tag, set((attrs.get("class") or "").split()), attrs, "",
               set().union(*(e[1] for e in self.stack))]
    self.elements.append(element)
    self.scripts += tag == "script"
    if tag not in self.VOID:
      self.stack.append(element)

  def handle_endtag(self, tag):
    assert self.stack and self.stack[-1][0] == tag, (tag, self.stack[-1:])
    self.stack.pop()

  def handle_data(self, data):
    for element in self.stack:
      element[3] += data

  def find(self, tag=None, cls=None):
    return [e for e in self.elements if (tag is None or e[0] == tag)
            and (cls is None or cls in e[1])]


def _parse(text):
  tree = Tree()
  tree.feed(text)
  tree.close()
  assert not tree.stack, [e[0] for e in tree.stack]  # every tag closed
  return tree


def _record(task, policy):
  """An episodes.jsonl record of `task` played by a scripted policy."""
  env = tasks.make_env(task)
  history = scripted.run_episode(env, scripted.POLICIES[policy](), 8)
  turns = [t for t, _ in history]
  rec = EpisodeRecord.from_episode(task, env, turns, 8, policy)
  return {"id": task.task_id, "task": task.to_dict(),
          "turns": episodes_lib.turns_to_json(turns),
          "z": [float(v) for v in rec.z], "details": rec.details,
          "end_reason": "terminal" if env.done else "max_turns"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """An evaluation directory: an injection task the agent falls for, a
  harmful one it refuses, and a benign one played right."""
  root = tmp_path_factory.mktemp("eval") / "builtin"
  root.mkdir()
  split = tasks.all_tasks("validation")
  pick = {k: next(t for t in split if t.kind == k)
          for k in ("injection", "harmful", "benign")}
  records = [_record(pick["injection"], "follow_injection"),
             _record(pick["harmful"], "expert"),
             _record(pick["benign"], "expert")]
  with open(root / "episodes.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.write('{"id": "cut mid-wri')  # a record being written is skipped
  (root / "run.json").write_text(json.dumps({"policy": "scripted:mix"}))
  return root, records, pick


def test_page_structure_roles_injection_and_verdicts(run_dir):
  root, records, pick = run_dir
  episodes = transcripts.read_episodes(root.parent)
  assert [e.episode_id for e in episodes] == [r["id"] for r in records]
  tree = _parse(transcripts.render_page(episodes, "t"))
  assert tree.scripts == 0 and tree.find("style")  # self-contained
  articles = tree.find("article", "episode")
  assert len(articles) == 3
  # Contents links point at existing anchors.
  anchors = {e[2]["id"] for e in articles}
  assert {e[2]["href"][1:] for e in tree.find("a")} == anchors
  injection = articles[0]
  assert "failed" in injection[1] and "followed the injection" in injection[3]
  assert "passed" in articles[2][1]
  # Each turn shows its action; the tool results were replayed.
  turns = tree.find("li", "turn")
  assert len(turns) == sum(len(r["turns"]) for r in records)
  for role in ("user", "call", "tool", "answer"):
    assert tree.find("section", role), role
  assert tree.find("section", "refusal")  # the harmful task is refused
  plans = [t for t in records[2]["turns"] if t["plan"]]
  assert len(tree.find("section", "plan")) >= len(plans) > 0
  # The planted text is marked where the agent read it, not just listed.
  text = pick["injection"].injection["text"].strip()
  marks = tree.find("mark", "injection")
  assert [m for m in marks if "tool" in m[4]]
  assert any(text[:40] in m[3] for m in marks)
  # Verdicts list the verifier's reasons and the flags sit on the turn.
  verdicts = tree.find("section", "verdict")
  assert len(verdicts) == 3
  assert "follows the injection" in " ".join(
      f[3] for f in tree.find("span", "flag"))
  assert "refused after" in verdicts[1][3]


def test_filters_and_cli(run_dir, tmp_path):
  root, records, _ = run_dir
  episodes = transcripts.read_episodes(root)
  assert [e.kind for e in transcripts.select(episodes, ["failed"])] == [
      "injection"]
  assert [e.kind for e in transcripts.select(episodes, ["refused"])] == [
      "harmful"]
  with pytest.raises(KeyError, match="valid: failed"):
    transcripts.select(episodes, ["nope"])
  out = tmp_path / "page.html"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, "-m", "experiments.transcripts", str(root),
       "--filter=injection", f"--out={out}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert len(_parse(out.read_text()).find("article", "episode")) == 1
  bad = subprocess.run(
      [sys.executable, "-m", "experiments.transcripts", str(tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.strip() == (f"error: {tmp_path}: no episodes.jsonl "
                                "under it")


def test_episode_from_info_keeps_raw_text_and_drops_terminal_observation():
  task = tasks.all_tasks("validation")[0]

  class Info:
    end_reason = "terminal"
    texts = ("<tool_call>\nbroken", "bye")
    observations = ("Error: invalid action", "The answer was recorded.")
    record = EpisodeRecord(
        task, [1.0, 1.0, 1.0, 0.0], {"invalid_turns": 1},
        (episodes_lib.turn_from_dict({"action": "InvalidAction",
                                      "reason": "unterminated <tool_call>",
                                      "plan": None, "safety_thoughts": None}),
         episodes_lib.turn_from_dict({"action": "Answer", "text": "all <set>",
                                      "plan": "p", "safety_thoughts": None})),
        "expert")

  episode = transcripts.episode_from_info(Info)
  assert [t.observation for t in episode.turns] == [
      "Error: invalid action", None]
  tree = _parse(transcripts.fragment([episode]))
  invalid = tree.find("section", "invalid")[0][3]
  assert "unterminated <tool_call>" in invalid and "broken" in invalid
  assert "all <set>" in tree.find("section", "answer")[0][3]
  assert "validity 0" in " ".join(e[3] for e in tree.find("li", "score"))
  assert isinstance(Task.from_dict(task.to_dict()), Task)
