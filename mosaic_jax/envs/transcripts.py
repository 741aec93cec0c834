"""Every text form of an episode, in one place.

* `transcript` / `play`: the chat messages of a scripted episode, as a
  model would be trained on. Shared by the tokenizer's corpus
  (`experiments/build_tokenizer.py`), the SFT demonstration sets
  (`mosaic_jax.data.builders`) and the SFT warm-up examples
  (`mosaic_jax.train.sft_data`), so all see the same conversations.
* `episode_transcript`: a rolled-out episode as the judge reads it (each
  assistant turn's decoded text and the tool's reply; `rewards`).
* `compact_transcript`: the attempt as numbered steps within a token
  budget, behind an `OMITTED` line when early steps are dropped (FATE's
  repair prompt, `methods.fate`).
* `token_transcript`: one row of rolled-out token arrays as runs of equal
  loss mask (debugging what the loss trains on).

The rolled-out episode and arrays (`rollout.EpisodeInfo`,
`rollout.Trajectories`) are read by field name: this module sits below
`rollout` and does not import it.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mosaic_jax.agent import protocol
from mosaic_jax.agent.actions import Answer, ParsedTurn, Refusal, ToolCall
from mosaic_jax.envs import scripted, tasks
from mosaic_jax.envs.base import Environment, Task

# The line that stands for the steps `compact_transcript` dropped.
OMITTED = "[... {n} earlier step(s) omitted ...]"


# ------------------------------------------------------ scripted messages --


def play(task: Task, policy: str, max_turns: int = 16
         ) -> tuple[list[protocol.Message], Environment, list[ParsedTurn]]:
  """One episode of `task` under a scripted policy, as chat messages.

  Args:
    task: the task to run.
    policy: a key of `scripted.POLICIES`.
    max_turns: turn limit of the episode.

  Returns:
    (messages, the environment after the episode, the assistant turns). The
    messages are the system prompt, the user request, then each assistant
    turn followed by its tool result; a terminal last turn has no tool result
    after it.
  """
  env = tasks.make_env(task)
  messages = [protocol.system_message(protocol.SYSTEM_PROMPT),
              protocol.user_message(task.prompt)]
  history = scripted.run_episode(env, scripted.POLICIES[policy](), max_turns)
  for step, (turn, observation) in enumerate(history, 1):
    messages.append(protocol.assistant_message(turn))
    # The last turn of a finished episode is terminal: nothing comes back.
    if step < len(history) or not env.done:
      messages.append(protocol.tool_message(observation))
  return messages, env, [turn for turn, _ in history]


def transcript(task: Task, policy: str) -> list[protocol.Message]:
  """The messages of one episode of `task` under a scripted policy (`play`)."""
  return play(task, policy)[0]


# ------------------------------------------------------ rolled-out text --


def _steps(items: Sequence[Any], observations: Sequence[str]
           ) -> Iterator[tuple[int, Any, str | None]]:
  """(k, item k, the observation after it or None) for each turn: the last
  turn may have none (nothing follows a final turn)."""
  for k, item in enumerate(items):
    yield k, item, observations[k] if k < len(observations) else None


def call_text(name: str, arguments: Any) -> str:
  """A tool call as `name({json arguments})`."""
  return f"{name}({json.dumps(arguments, ensure_ascii=False)})"


def action_text(turn: Any) -> str:
  """A parsed turn's action in words: "called f({...})", "refused: ...",
  "answered: ..." or "invalid turn: <reason>"."""
  action = turn.action
  if isinstance(action, ToolCall):
    return "called " + call_text(action.name, action.arguments)
  if isinstance(action, Refusal):
    return f"refused: {action.reason}"
  if isinstance(action, Answer):
    return f"answered: {action.text}"
  return f"invalid turn: {action.reason}"


def episode_transcript(info: Any) -> str:
  """One episode (`rollout.EpisodeInfo`: `texts`, `observations`) as
  judge-readable text: each turn and the tool's reply."""
  parts = []
  for _, text, observation in _steps(info.texts, info.observations):
    parts.append(f"[assistant]\n{text}")
    if observation is not None:
      parts.append(f"[tool]\n{observation}")
  return "\n".join(parts)


def compact_transcript(turns: Sequence[Any], observations: Sequence[str],
                       count_tokens: Callable[[str], int], budget: int, *,
                       observation_chars: int = 400) -> str:
  """The attempt as numbered steps (action, then tool result), within budget.

  Each tool result is cut to `observation_chars` (with "..."); whole steps
  are dropped from the start, behind an `OMITTED` line, until the text has
  at most `budget` tokens; a last step that alone is over budget keeps its
  first characters that fit.

  Args:
    turns: parsed assistant turns.
    observations: the tool result after each turn (a terminal turn's
      acknowledgement is left out: it says nothing about the failure).
    count_tokens: text -> token count (the policy's tokenizer).
    budget: tokens at most.
    observation_chars: characters kept of each tool result.
  """
  steps = []
  for k, turn, obs in _steps(turns, observations):
    text = f"{k + 1}. {action_text(turn)}"
    if obs is not None and not isinstance(turn.action, (Answer, Refusal)):
      if len(obs) > observation_chars:
        obs = obs[:observation_chars] + "..."
      text += f"\n   result: {obs}"
    steps.append(text)
  for first in range(len(steps)):
    head = [OMITTED.format(n=first)] if first else []
    text = "\n".join(head + steps[first:])
    if count_tokens(text) <= budget:
      return text
  # Even the last step alone is over budget: keep its longest prefix that
  # fits (bisection over characters).
  lo, hi = 0, len(text)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if count_tokens(text[:mid]) <= budget:
      lo = mid
    else:
      hi = mid - 1
  return text[:lo]


def token_transcript(traj: Any, i: int, tokenizer: Any) -> str:
  """Row i of `rollout.Trajectories` as readable text: runs of equal loss
  mask, each under a header that says whether the loss trains on it, with
  token counts and the mean sampler log-prob of generated runs."""
  length = int(traj.lengths[i])
  tokens = np.asarray(traj.tokens[i, :length])
  mask = np.asarray(traj.loss_mask[i, :length])
  logp = np.asarray(traj.logprobs[i, :length])
  bounds = np.flatnonzero(np.diff(mask)) + 1
  parts = [f"== row {i}: {length} tokens, {int(mask.sum())} trained, "
           f"z={np.asarray(traj.z[i]).tolist()} =="]
  for start, end in zip(np.r_[0, bounds], np.r_[bounds, length]):
    text = tokenizer.decode(tokens[start:end].tolist(),
                            skip_special_tokens=False)
    if mask[start]:
      header = (f"--- generated [loss] {end - start} tokens, mean logp "
                f"{logp[start:end].mean():.3f} ---")
    else:
      header = f"--- context [masked] {end - start} tokens ---"
    parts += [header, text]
  return "\n".join(parts)
