"""The console of a training run: one labelled progress bar per phase.

Each phase gets its own tqdm bar (`Progress.phase`), so the console reads as
the run's outline:

  SFT                 the warm-up steps (`train.run.Run.sft`);
  RL                  MOSAIC's RL steps (`methods.mosaic.rl_phase`);
  FATE round r/R      one bar per FATE round, its PFPO SFT and PG steps
                      (`methods.fate.rounds`);
  eval (<name>)       a held-out evaluation, counted in tasks
                      (`eval.heldout.HeldOut.evaluate`: `warm_start`,
                      `step_<n>`, `final`); opened inside the phase it
                      interrupts and removed when done.

The postfix holds the latest `loss`, `reward` (the batch mean) and `kl` of
the phase's steps and, once an evaluation ran, the `harmful_compliance` and
`utility` of its first split (`eval.split`, validation); on an evaluation
bar the split being played and its rates; on every bar `eta`, the time
left at the bar's rate so far. Only process 0 shows bars
(`Progress(enabled=None)`); elsewhere every method does nothing, so callers
need no check.

`quiet_logging` switches third-party INFO logging (absl, orbax, TFDS, grain,
JAX) off; the entry points (`experiments.cli`) and the notebooks call it.
This module imports JAX only to find process 0, so plain tools can use it.
"""
from __future__ import annotations

import contextlib
import logging as py_logging
import os
from typing import IO, Any, Iterator, Mapping

import tqdm
from absl import logging

# Postfix keys of an evaluation bar: the split's headline metric.
EVAL_KEYS = ("harmful_compliance", "utility")
# Postfix keys of a step bar: the phase's metric of that name, then the
# latest evaluation's (`Progress.show`).
STEP_KEYS = ("loss", "reward", "kl", *EVAL_KEYS)
ETA_KEY = "eta"

# Python loggers of libraries that log INFO through the standard `logging`
# module rather than absl's (absl's verbosity sets the root logger only).
THIRD_PARTY_LOGGERS = ("absl", "jax", "jax._src", "orbax", "grain",
                       "tensorflow_datasets", "tensorflow", "etils",
                       "tensorboardX")
# absl verbosity: -1 WARNING, 0 INFO, 1 DEBUG.
QUIET_VERBOSITY = -1


def quiet_logging(verbosity: int | None = None) -> None:
  """Third-party logging at WARNING, or at `verbosity` (absl's scale: 0
  INFO, 1 DEBUG) when given."""
  level = QUIET_VERBOSITY if verbosity is None else verbosity
  logging.set_verbosity(level)
  py_level = (py_logging.WARNING if level < 0 else
              py_logging.INFO if level == 0 else py_logging.DEBUG)
  for name in THIRD_PARTY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_level)
  # TensorFlow's C++ logging (when TFDS pulls tensorflow in).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if level >= 0 else "2")


def _format(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


class Bar:
  """One labelled tqdm bar and its postfix (`STEP_KEYS` or `EVAL_KEYS`,
  then `eta`).

  Attributes:
    label: the bar's description ("SFT", "RL", "FATE round 1/4", ...).
    postfix: key -> shown text, in display order.
  """

  def __init__(self, label: str, total: int, *, initial: int = 0,
               unit: str = "step", keys: tuple[str, ...] = STEP_KEYS,
               enabled: bool = True, leave: bool = True,
               file: IO[str] | None = None):
    self.label = label
    self.keys = keys
    self.postfix: dict[str, str] = {}
    self._tqdm = tqdm.tqdm(total=total, initial=initial, desc=label,
                           unit=unit, leave=leave, file=file,
                           disable=not enabled, dynamic_ncols=True)

  @property
  def n(self) -> int:
    return int(self._tqdm.n)

  @property
  def total(self) -> int:
    return int(self._tqdm.total or 0)

  def eta(self) -> str:
    """The time left at the rate since the bar opened ("?" before the first
    update), as tqdm writes intervals (`01:05`)."""
    fd = self._tqdm.format_dict
    done = fd["n"] - fd.get("initial", 0)
    if done <= 0 or not fd["elapsed"]:
      return "?"
    left = max(self.total - fd["n"], 0) * fd["elapsed"] / done
    return tqdm.tqdm.format_interval(left)

  def show(self, values: Mapping[str, Any], reset: tuple[str, ...] = ()
           ) -> None:
    """Takes the postfix keys found in `values` (other names are ignored),
    after dropping the `reset` keys (so a rate `values` lacks, e.g. a
    split without harmful tasks, is not shown from an earlier one)."""
    for key in reset:
      self.postfix.pop(key, None)
    for key in self.keys:
      if values.get(key) is not None:
        self.postfix[key] = _format(values[key])
    self._refresh()

  def update(self, n: int = 1, values: Mapping[str, Any] | None = None
             ) -> None:
    """Advances `n` units, then `show(values)`."""
    self._tqdm.update(n)
    self.show(values or {})

  def _refresh(self) -> None:
    shown = {k: self.postfix[k] for k in self.keys if k in self.postfix}
    shown[ETA_KEY] = self.eta()
    self.postfix = shown
    self._tqdm.set_postfix(shown, refresh=True)

  def close(self) -> None:
    self._tqdm.close()


class Progress:
  """The run's bars: one phase bar at a time, an evaluation bar inside it.

  Args:
    enabled: show bars (default: on process 0 only).
    file: where bars are written (default: stderr, resolved per bar).
  """

  def __init__(self, enabled: bool | None = None,
               file: IO[str] | None = None):
    if enabled is None:
      import jax  # pylint: disable=import-outside-toplevel
      enabled = jax.process_index() == 0
    self.enabled = enabled
    self.file = file
    self.current: Bar | None = None

  def phase(self, label: str, total: int, initial: int = 0) -> Bar:
    """Closes the open phase bar and opens `label`'s, at `initial` of
    `total` steps (a resumed phase starts where it was)."""
    self.close()
    self.current = Bar(label, total, initial=initial, enabled=self.enabled,
                       file=self.file)
    return self.current

  def step(self, values: Mapping[str, Any] | None = None) -> None:
    """One step of the open phase, with its metrics (`STEP_KEYS` shown)."""
    if self.current is not None:
      self.current.update(1, values)

  def show(self, values: Mapping[str, Any], reset: tuple[str, ...] = ()
           ) -> None:
    """`values` on the open phase's bar (an evaluation's headline rates),
    after dropping the `reset` keys (`Bar.show`)."""
    if self.current is not None:
      self.current.show(values, reset)

  @contextlib.contextmanager
  def evaluation(self, name: str, total: int) -> Iterator[Bar]:
    """A bar of `total` tasks labelled `eval (<name>)`; inside a phase it
    is removed when done, so the phase's bar stays the one on screen."""
    bar = Bar(f"eval ({name})", total, unit="task", keys=("split",
                                                          *EVAL_KEYS),
              enabled=self.enabled, leave=self.current is None,
              file=self.file)
    try:
      yield bar
    finally:
      bar.close()

  def close(self) -> None:
    if self.current is not None:
      self.current.close()
      self.current = None
