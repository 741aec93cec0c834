"""Faults the training loops survive: preemption, crashes, non-finite updates.

* Preemption. `Preemption` turns SIGTERM (a scheduler's notice) into a flag.
  The loops look at it after every step: the step in progress finishes, its
  checkpoint is written (off the `checkpoint.every` interval too) and
  `Preempted` is raised, which `experiments/train.py` turns into a one-line
  message and exit status `PREEMPTED_EXIT` (143 = 128 + SIGTERM; non-zero so
  that a job system does not mark the run finished). With several processes
  the flag is OR-ed over them, so all stop at the same step.
* Crashes. A SIGKILL loses the steps since the newest checkpoint and
  nothing else: orbax commits a step by renaming its finished temporary
  directory, the loops write their other files by rename too, and every
  random draw is a function of (seed, step). `fault_point` is the hook the
  crash tests use to die at an exact place: with
  `MOSAIC_FAULT=SIGNAL@POINT:STEP` (SIGNAL `kill` or `term`) the process sends
  itself that signal when it reaches POINT of global step STEP. Points:
  `rollout` (the step's batch exists, nothing is updated), `update` (the
  state is updated in memory, not saved), `checkpoint-write` (orbax has
  written the step's files and is about to commit them by renaming: see
  `checkpoint._FaultBeforeRename`) and `reference-write` (the SFT policy is
  written, not yet moved into place). Unset, a hook costs one dictionary
  lookup.
* Non-finite updates. The jitted steps skip an update whose loss, gradient
  norm or result is not finite (`steps._apply_update`, metric `skipped`).
  `NonFiniteGuard` reports each skip with the step and the batch's task ids
  (stderr and `workdir/nonfinite.jsonl`) and stops the run with
  `NonFiniteError` after `max_nonfinite_steps` skips in a row.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

FAULT_ENV = "MOSAIC_FAULT"
FAULT_POINTS = ("rollout", "update", "checkpoint-write", "reference-write")
FAULT_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
PREEMPTED_EXIT = 128 + signal.SIGTERM
NONFINITE_FILE = "nonfinite.jsonl"


class Preempted(Exception):
  """The run stopped after SIGTERM; its last step is checkpointed."""


class NonFiniteError(RuntimeError):
  """Too many non-finite updates in a row; the run stops."""


def parse_fault(spec: str) -> tuple[signal.Signals, str, int]:
  """`SIGNAL@POINT:STEP` -> (signal, point, step).

  Raises:
    ValueError: a malformed spec, naming the accepted values.
  """
  try:
    name, rest = spec.split("@", 1)
    point, step = rest.rsplit(":", 1)
    sig, step = FAULT_SIGNALS[name], int(step)
  except (ValueError, KeyError):
    raise ValueError(
        f"{FAULT_ENV}={spec!r}: expected SIGNAL@POINT:STEP with SIGNAL in "
        f"{sorted(FAULT_SIGNALS)}, e.g. kill@update:3") from None
  if point not in FAULT_POINTS:
    raise ValueError(f"{FAULT_ENV}={spec!r}: point {point!r} is not one of "
                     f"{FAULT_POINTS}")
  return sig, point, step


def fault_point(point: str, step: int) -> None:
  """Sends this process the signal `MOSAIC_FAULT` names if it names here.

  Args:
    point: one of `FAULT_POINTS`.
    step: the global step being worked on.
  """
  spec = os.environ.get(FAULT_ENV)
  if not spec:
    return
  sig, want_point, want_step = parse_fault(spec)
  if (want_point, want_step) != (point, step):
    return
  print(f"{FAULT_ENV}: sending {sig.name} at {point} of step {step}",
        file=sys.stderr, flush=True)
  os.kill(os.getpid(), sig)


class Preemption:
  """Records SIGTERM instead of dying of it; `requested()` polls the flag.

  Installs its handler on construction (main thread only: elsewhere Python
  cannot install one, and the default behaviour stays) and restores the
  previous handler on `close`.
  """

  def __init__(self):
    self._flag = False
    self._previous: Any = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del signum, frame
    self._flag = True
    print("SIGTERM: stopping after the current step and checkpointing it",
          file=sys.stderr, flush=True)

  def requested(self) -> bool:
    """Whether any process received SIGTERM (every process must call this at
    the same points: with several it is a collective)."""
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.int32(self._flag))
    return bool(np.asarray(flags).max())

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class NonFiniteGuard:
  """Counts skipped (non-finite) updates in a row and stops the run.

  Each skip is reported on stderr and appended to `path` (JSONL: step,
  phase, loss, grad_norm, the run of skips so far and the batch's task ids);
  a finite update resets the count.
  """

  def __init__(self, limit: int, path: str | None = None):
    """Args:
      limit: skips in a row that stop the run (0: never stop).
      path: the JSONL report file (None: stderr only).
    """
    self.limit = limit
    self.path = path
    self.in_a_row = 0

  def update(self, phase: str, step: int, metrics: Mapping[str, Any],
             task_ids: Sequence[str]) -> None:
    """Takes one step's metrics (`skipped`, `loss`, `grad_norm`).

    Raises:
      NonFiniteError: the `limit`-th skip in a row.
    """
    if not float(metrics["skipped"]):
      self.in_a_row = 0
      return
    self.in_a_row += 1
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    record = {"step": int(step), "phase": phase, "loss": repr(loss),
              "grad_norm": repr(grad_norm), "in_a_row": self.in_a_row,
              "task_ids": list(task_ids)}
    print(f"{phase} step {step}: non-finite update skipped, params kept "
          f"(loss {loss}, grad_norm {grad_norm}; {self.in_a_row} in a row, "
          f"limit {self.limit or 'none'}); tasks: {', '.join(task_ids)}",
          file=sys.stderr, flush=True)
    if self.path is not None:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if self.limit and self.in_a_row >= self.limit:
      raise NonFiniteError(
          f"stopping at {phase} step {step}: {self.in_a_row} non-finite "
          f"updates in a row (config.max_nonfinite_steps={self.limit}); "
          "params were never updated with them, so the newest checkpoint is "
          f"finite. Details per step: {self.path or 'stderr'}. Fix: lower the "
          "learning rate (sft.lr / optimizer.lr), check the batches' tasks "
          "listed there, or raise config.max_nonfinite_steps")
