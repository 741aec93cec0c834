"""What a run does at a step's end besides the update: checkpointing with
SIGTERM handling (`Checkpoints`) and the periodic held-out evaluation
(`PeriodicEval`). `train.run.Run` owns one of each; the methods call them
after every step.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import ml_collections

from mosaic_jax.eval import heldout as heldout_lib
from mosaic_jax.models import decoder
from mosaic_jax.train import checkpoint, faults, state as state_lib

# Metric names under this prefix are wall times: they differ between runs.
TIME_PREFIX = "time/"


class Checkpoints:
  """A run's checkpointer and its SIGTERM flag (`faults.Preemption`).

  Attributes:
    ckpt: the `checkpoint.Checkpointer` of `workdir/checkpoints`.
    preemption: set by SIGTERM until `close`.
  """

  def __init__(self, ckpt: checkpoint.Checkpointer,
               preemption: faults.Preemption):
    self.ckpt = ckpt
    self.preemption = preemption

  def save(self, state: state_lib.TrainState, extra: Mapping[str, Any],
           force: bool = False) -> None:
    """The end of a step: a checkpoint (train state, `extra` as JSON) on
    the interval or `force`d; after SIGTERM a checkpoint in any case, then
    `faults.Preempted`."""
    preempted = self.preemption.requested()
    self.ckpt.save(state, dict(extra), force=force or preempted)
    if preempted:
      self.stop_if_preempted(int(state.step), requested=True)

  def stop_if_preempted(self, step: int, requested: bool | None = None
                        ) -> None:
    """Raises `faults.Preempted` after SIGTERM (the caller has checkpointed
    `step`)."""
    if requested or (requested is None and self.preemption.requested()):
      raise faults.Preempted(
          f"preempted (SIGTERM): stopped after step {step}, checkpoint "
          f"{self.ckpt.directory}/{self.ckpt.latest_step()}; run the same "
          "command again to resume")

  def close(self) -> None:
    """Waits for the checkpointer; SIGTERM kills again."""
    self.ckpt.close()
    self.preemption.close()


class PeriodicEval:
  """The held-out evaluation during and around training, logged.

  `log(step, values, prefix)` is the run's metrics writer.
  """

  def __init__(self, heldout: heldout_lib.HeldOut,
               config: ml_collections.ConfigDict,
               log: Callable[[int, Mapping[str, Any], str], None]):
    self.heldout = heldout
    self.config = config
    self._log = log

  def due(self, step: int) -> bool:
    """Whether the RL step `step` (global) ends with an evaluation: every
    `eval.every` steps after SFT (0: never)."""
    every = self.config.eval.every
    return bool(every) and (step - self.config.sft.steps) % every == 0

  def log(self, step: int, reports: Mapping[str, Any]) -> None:
    """Group `all` of the `eval.split` report under `eval/` (the final
    splits are in report.json only), and the evaluation's wall time."""
    values = {k: v for k, v in heldout_lib.headline(
        reports[self.config.eval.split]).items() if v is not None}
    self._log(step, values, "eval/")
    self._log(step, {"wall_s": self.heldout.last_eval_s},
              TIME_PREFIX + "eval/")

  def after_step(self, model: decoder.Decoder, step: int
                 ) -> dict[str, Any] | None:
    """The `eval.split` report of `model` (named `step_<step>`, logged)
    when `due`, else None."""
    if not self.due(step):
      return None
    reports = self.heldout.evaluate(model, f"step_{step}", step)
    self.log(step, reports)
    return reports
