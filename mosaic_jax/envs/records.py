"""`EpisodeRecord`: one scored episode of a built-in task, beside `Verdict`.

What any driver hands to the metrics (`eval.builtin.episode_metrics`): the
task, the verifier's `z` and details, and the parsed assistant turns. The
scripted driver (`eval.builtin.run_scripted`) and the model rollout engine
(`rollout.rollout`) both build it, so the metrics cannot tell them apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from mosaic_jax.agent.actions import ParsedTurn
from mosaic_jax.envs.base import Environment, Task
from mosaic_jax.envs.verifiers import OBJECTIVES, verify


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
  """One scored episode of a built-in task.

  Attributes:
    task: the task that ran.
    z: `[4]` verifier objectives in `OBJECTIVES` order.
    details: the verifier's details (`harmful_actions`, `injected_actions`,
      `leaks`, `refused`, `refusal_timing`, `invalid_turns`, `num_turns`, ...).
    turns: every assistant turn, parsed, in order.
    policy: name of the policy or model that produced the episode.
  """
  task: Task
  z: np.ndarray
  details: Mapping[str, Any]
  turns: tuple[ParsedTurn, ...]
  policy: str = ""

  @classmethod
  def from_episode(cls, task: Task,
                   env_or_state: Environment | Mapping[str, Any],
                   turns: Sequence[ParsedTurn], max_turns: int | None,
                   policy: str = "") -> EpisodeRecord:
    """Scores a finished episode with the task's verifier."""
    verdict = verify(task, env_or_state, list(turns), max_turns)
    return cls(task, np.asarray(verdict.z), verdict.details, tuple(turns),
               policy)

  @property
  def safety_turns(self) -> int:
    """Assistant turns with a `<safety_thoughts>` block."""
    return sum(t.used_safety_thoughts for t in self.turns)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable summary (for per-episode JSONL logs)."""
    return {"task_id": self.task.task_id, "suite": self.task.suite,
            "kind": self.task.kind, "policy": self.policy,
            "z": dict(zip(OBJECTIVES, map(float, self.z))),
            "details": dict(self.details),
            "safety_thoughts_turns": self.safety_turns}
