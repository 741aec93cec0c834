"""Per-episode records on disk: what makes an evaluation resumable.

Each benchmark run owns a directory with

  run.json        what was asked (benchmark, policy, task selection, decoding);
                  a second run into the same directory must ask the same thing
  episodes.jsonl  one JSON object per finished episode, `{"id": key, ...}`,
                  appended chunk by chunk and flushed to disk after each chunk

A killed evaluation loses at most the chunk it was running; the next run skips
every id already recorded. Reports are always computed from the records read
back from this file, in the order of the benchmark's task list, so a resumed
run reports exactly what an uninterrupted one does.

Parsed assistant turns are stored whole (`turn_to_dict`), not re-parsed from
text: a turn the rollout engine cut at `max_tokens_per_turn` is an
`InvalidAction` that its text alone would not reproduce.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

# The JSON form of a parsed turn lives with the actions (the rollout engine
# sends turns between processes in it); re-exported here for the records.
from mosaic_jax.agent.actions import (  # noqa: F401 pylint: disable=unused-import
    ParsedTurn, turn_from_dict, turn_to_dict, turns_from_json, turns_to_json)

RUN_FILE = "run.json"
EPISODES_FILE = "episodes.jsonl"

class RunMismatchError(ValueError):
  """The output directory holds records of a different run."""


class EpisodeStore:
  """The records of one benchmark run in `directory` (module docstring)."""

  def __init__(self, directory: str | os.PathLike,
               signature: Mapping[str, Any]):
    """Opens (creating) the directory and checks it belongs to this run.

    Args:
      directory: the run's benchmark directory.
      signature: JSON-able description of what the run evaluates; records
        are only reused by a run with the same signature.

    Raises:
      RunMismatchError: the directory was written by a run with another
        signature (reusing its records would mix two evaluations).
    """
    self.directory = os.fspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self.path = os.path.join(self.directory, EPISODES_FILE)
    signature = json.loads(json.dumps(signature))  # Tuples -> lists, as read.
    run_file = os.path.join(self.directory, RUN_FILE)
    if os.path.exists(run_file):
      with open(run_file, encoding="utf-8") as f:
        previous = json.load(f)
      if previous != signature:
        changed = sorted(k for k in set(previous) | set(signature)
                         if previous.get(k) != signature.get(k))
        raise RunMismatchError(
            f"{self.directory} holds episodes of a different run (fields "
            f"that differ: {', '.join(changed)}); use another output_dir or "
            "delete it")
    else:
      with open(run_file, "w", encoding="utf-8") as f:
        json.dump(signature, f, indent=2, sort_keys=True)
        f.write("\n")

  def load(self) -> dict[str, dict[str, Any]]:
    """id -> record of every complete line.

    A last line without its newline was cut by a kill mid-write: it is
    dropped (and truncated away, so the next append starts a clean line).
    """
    if not os.path.exists(self.path):
      return {}
    with open(self.path, "rb") as f:
      content = f.read()
    complete = content[:content.rfind(b"\n") + 1]
    if len(complete) != len(content):
      with open(self.path, "r+b") as f:
        f.truncate(len(complete))
    records = {}
    for line in complete.decode("utf-8").splitlines():
      record = json.loads(line)
      records[record["id"]] = record
    return records

  def append(self, records: Sequence[Mapping[str, Any]]) -> None:
    """Appends records (each with an `id`) and forces them to disk."""
    with open(self.path, "a", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())
