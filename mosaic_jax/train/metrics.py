"""Training metrics to JSONL, TensorBoard and Weights & Biases.

Every backend gets the same names and values: `{"step", **metrics}` lines in
`<logdir>/metrics.jsonl` ("jsonl"), scalars of those names in TensorBoard
event files under `<logdir>/tensorboard` ("tensorboard"; `tensorboard
--logdir <logdir>` shows them), and `wandb.log` of those names
("wandb", only when the package is installed; offline by default, so it
works without a network and syncs later with `wandb sync`). The config
field `logging.backends` picks them (`MetricsWriter.from_config`).

Only process 0 writes; other processes get a writer whose methods do
nothing, so loops call it unconditionally. The console's bars are
`train.progress`.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
BACKENDS = ("jsonl", "tensorboard", "wandb")
DEFAULT_BACKENDS = ("jsonl", "tensorboard")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats of scalar metrics (one device fetch for all of them)."""
  host = jax.device_get(dict(metrics))
  return {k: float(np.asarray(v)) for k, v in host.items()}


def _open_wandb(logdir: str, project: str, mode: str):
  """A wandb run in `logdir/wandb`, or None (with one line on stderr) when
  the package is not installed."""
  try:
    import wandb  # Optional: pip install -e .[wandb].
  except ImportError:
    print("warning: logging.backends has 'wandb' but wandb is not "
          "installed (pip install -e .[wandb]); logging without it",
          file=sys.stderr, flush=True)
    return None
  name = os.path.basename(os.path.abspath(logdir))
  return wandb.init(project=project, dir=logdir, name=name, mode=mode,
                    resume="allow", reinit=True)


class MetricsWriter:
  """Writes each step's scalars to every backend (module docstring)."""

  def __init__(self, logdir: str | os.PathLike, *,
               enabled: bool | None = None,
               backends: Sequence[str] = DEFAULT_BACKENDS,
               wandb_project: str = "mosaic-jax",
               wandb_mode: str = "offline"):
    """Opens the writers.

    Args:
      logdir: output directory (created).
      enabled: write at all (default: on process 0 only).
      backends: names from `BACKENDS`.
      wandb_project: the Weights & Biases project.
      wandb_mode: "offline" (no network), "online" or "disabled".

    Raises:
      ValueError: an unknown backend name.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
      raise ValueError(f"logging.backends: unknown backend {unknown[0]!r} "
                       f"(valid: {', '.join(BACKENDS)})")
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = self._wandb = None
    if not self.enabled:
      return
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, METRICS_FILE)
    if "jsonl" in backends:
      # Line-buffered append: a resumed run continues the same file and a
      # crash loses at most the line being written.
      self._jsonl = open(self.path, "a", buffering=1, encoding="utf-8")
    if "tensorboard" in backends:
      import tensorboardX  # Only when the backend is on.
      self._tb = tensorboardX.SummaryWriter(
          os.path.join(logdir, TENSORBOARD_DIR))
    if "wandb" in backends:
      self._wandb = _open_wandb(logdir, wandb_project, wandb_mode)

  @classmethod
  def from_config(cls, logdir: str | os.PathLike, config: Any,
                  **kwargs: Any) -> MetricsWriter:
    """A writer with the backends of `config.logging` (the defaults when
    the config has no `logging` section)."""
    section = config.get("logging") if hasattr(config, "get") else None
    if section is not None:
      kwargs.setdefault("backends", tuple(section.backends))
      kwargs.setdefault("wandb_project", section.get("wandb_project",
                                                     "mosaic-jax"))
      kwargs.setdefault("wandb_mode", section.get("wandb_mode", "offline"))
    return cls(logdir, **kwargs)

  def write(self, step: int, metrics: Mapping[str, Any],
            prefix: str = "") -> dict[str, float]:
    """Records scalar metrics at `step`; returns them as host floats.

    Args:
      step: the training step they belong to.
      metrics: name -> scalar (jax or numpy array, or number).
      prefix: prepended to every name (e.g. "eval/").
    """
    values = {prefix + k: v for k, v in _scalars(metrics).items()}
    if not self.enabled:
      return values
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, int(step))
    if self._wandb is not None:
      self._wandb.log(values, step=int(step))
    return values

  def close(self) -> None:
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
