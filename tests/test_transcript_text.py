"""Every text transcript renderer, pinned byte for byte.

`fixtures/transcript_text.json` holds what the renderers wrote on a few
fixed scripted episodes when they still lived in four modules (rewards,
methods/fate, rollout, envs/transcripts); they now share
`mosaic_jax.envs.transcripts` and must write the same bytes.

Regenerate only on a deliberate format change:
  python -m tests.test_transcript_text --write
"""
import json
import pathlib
import sys

import numpy as np
import pytest

from mosaic_jax import rollout
from mosaic_jax.agent.actions import Answer, ParsedTurn, ToolCall
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import scripted, tasks, transcripts

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "transcript_text.json"
CONFIG = rollout.RolloutConfig(max_turns=8, max_tokens_per_turn=144,
                               max_total_length=2048)
# (policy, train task index): expert and lazy on benign tasks, obeying an
# injection, complying with a harmful task, malformed turns, a refusal.
EPISODES = (("expert", 0), ("lazy", 0), ("follow_injection", 1),
            ("comply_all", 2), ("malformed", 3), ("refuse_all", 4))
BUDGETS = (10_000, 200, 60, 7)


def _tasks():
  train = tasks.all_tasks("train")
  kinds = {}
  for t in train:
    kinds.setdefault(t.kind, []).append(t)
  # A fixed mix of kinds, in the order of the task list.
  picked = [kinds[k][0] for k in sorted(kinds)] + train[:2]
  return picked


def render() -> dict[str, str]:
  """Every renderer's output on the fixed episodes, by a stable key."""
  tok = load_tiny_tokenizer()
  task_list = _tasks()
  out = {}
  for policy, k in EPISODES:
    task = task_list[k % len(task_list)]
    key = f"{policy}/{task.task_id}"
    result = rollout.rollout(
        rollout.ScriptedPolicy(scripted.POLICIES[policy](), tok), [task],
        tok, CONFIG)
    info = result.episodes[0]
    out[f"judge/{key}"] = transcripts.episode_transcript(info)
    out[f"tokens/{key}"] = transcripts.token_transcript(
        result.trajectories, 0, tok)
    count = lambda s: len(tok.encode(s, add_special_tokens=False))
    for budget in BUDGETS:
      for chars in (400, 12):
        out[f"compact/{key}/{budget}/{chars}"] = (
            transcripts.compact_transcript(
                info.record.turns, info.observations, count, budget,
                observation_chars=chars))
    if policy != "malformed":  # its invalid turns have no message form
      out[f"messages/{key}"] = json.dumps(
          transcripts.transcript(task, policy), ensure_ascii=False,
          sort_keys=True)
  # Token transcript of a row with non-zero log-probs and several runs.
  traj = result.trajectories
  n = int(traj.lengths[0])
  logp = np.where(np.asarray(traj.loss_mask) == 1,
                  -np.linspace(0.1, 3.0, traj.tokens.shape[1]), 0.0)
  out["tokens/logprobs"] = transcripts.token_transcript(
      traj.replace(logprobs=logp.astype(np.float32)), 0, tok)
  assert n > 0
  return out


@pytest.fixture(scope="module")
def rendered():
  return render()


def test_fixture_covers_every_renderer_and_several_episodes():
  want = json.loads(FIXTURE.read_text())
  kinds = {k.split("/")[0] for k in want}
  assert kinds == {"judge", "tokens", "compact", "messages"}
  assert len({k.split("/")[1] for k in want if k.startswith("judge/")}) == len(
      EPISODES)
  # The budgets really cut: some compact texts carry the OMITTED line.
  assert any("earlier step(s) omitted" in v for v in want.values())


def test_renderers_write_the_pinned_bytes(rendered):
  want = json.loads(FIXTURE.read_text())
  assert sorted(rendered) == sorted(want)
  for key in want:
    assert rendered[key] == want[key], key


def test_compact_transcript_drops_early_steps_to_fit_the_budget():
  turns = [ParsedTurn(ToolCall("list_files", {})),
           ParsedTurn(ToolCall("read_file", {"file_id": "f1"})),
           ParsedTurn(Answer("done"))]
  observations = ["a" * 50, "b" * 10, "The answer was recorded."]
  full = transcripts.compact_transcript(
      turns, observations, len, 10_000, observation_chars=20)
  assert full == ("1. called list_files({})\n   result: " + "a" * 20 + "...\n"
                  '2. called read_file({"file_id": "f1"})\n   result: '
                  + "b" * 10 + "\n3. answered: done")
  # Characters as tokens: only the last two steps fit in 120.
  cut = transcripts.compact_transcript(
      turns, observations, len, 120, observation_chars=20)
  assert cut == ("[... 1 earlier step(s) omitted ...]\n"
                 '2. called read_file({"file_id": "f1"})\n   result: '
                 + "b" * 10 + "\n3. answered: done")
  assert len(transcripts.compact_transcript(turns, observations, len,
                                           30)) == 30



if __name__ == "__main__":
  if sys.argv[1:] != ["--write"]:
    sys.exit("usage: python -m tests.test_transcript_text --write")
  FIXTURE.write_text(json.dumps(render(), indent=1, ensure_ascii=False,
                                sort_keys=True) + "\n")
  print(f"wrote {FIXTURE}")
