"""Training metrics to JSONL, TensorBoard, Weights & Biases and a progress bar.

Every backend gets the same names and values: `{"step", **metrics}` lines in
`<logdir>/metrics.jsonl` ("jsonl"), scalars of those names in TensorBoard
event files under `<logdir>/tensorboard` ("tensorboard"; `tensorboard
--logdir <logdir>` shows them), and `wandb.log` of those names
("wandb", only when the package is installed; offline by default, so it
works without a network and syncs later with `wandb sync`). The config
field `logging.backends` picks them (`MetricsWriter.from_config`).

Only process 0 writes (and shows a bar); other processes get a writer whose
methods do nothing, so loops call it unconditionally.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
BACKENDS = ("jsonl", "tensorboard", "wandb")
DEFAULT_BACKENDS = ("jsonl", "tensorboard")
# The progress bar's postfix: the latest value of each metric whose name
# ends like this (whichever write it came in), shown without its phase.
POSTFIX_SUFFIXES = ("/loss", "/reward", "/kl", "eval/harmful_compliance",
                    "eval/utility")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats of scalar metrics (one device fetch for all of them)."""
  host = jax.device_get(dict(metrics))
  return {k: float(np.asarray(v)) for k, v in host.items()}


def _phase(name: str) -> str | None:
  """The phase a step metric belongs to (`sft/loss` -> `sft`), or None."""
  head, _, tail = name.partition("/")
  return head if tail == "loss" else None


def _postfix_key(name: str) -> str:
  return name.split("/", 1)[1] if name.endswith(("/loss", "/reward",
                                                  "/kl")) else name


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
  """Writes each step's scalars to every backend (module docstring).

  The progress bar's description is the current phase (from the `.../loss`
  name last written) and its postfix the latest loss, reward, KL and
  validation rates.
  """

  def __init__(self, logdir: str | os.PathLike, *, total_steps: int | None = None,
               initial_step: int = 0, enabled: bool | None = None,
               progress: bool = True,
               backends: Sequence[str] = DEFAULT_BACKENDS,
               wandb_project: str = "mosaic-jax",
               wandb_mode: str = "offline"):
    """Opens the writers.

    Args:
      logdir: output directory (created).
      total_steps: length of the progress bar.
      initial_step: where the bar starts (a restored run resumes here).
      enabled: write at all (default: on process 0 only).
      progress: show a tqdm bar.
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
    self._jsonl = self._tb = self._bar = self._wandb = None
    self._postfix: dict[str, str] = {}
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
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step,
                            dynamic_ncols=True)

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
    if self._bar is not None:
      self._update_bar(int(step), values)
    return values

  def _update_bar(self, step: int, values: Mapping[str, float]) -> None:
    self._bar.update(max(0, step - self._bar.n))
    for name, value in values.items():
      phase = _phase(name)
      if phase is not None:
        self._bar.set_description(phase, refresh=False)
      if name.endswith(POSTFIX_SUFFIXES):
        self._postfix[_postfix_key(name)] = f"{value:.4g}"
    if self._postfix:
      # In POSTFIX_SUFFIXES order, whatever order the metrics came in.
      order = [s.lstrip("/") for s in POSTFIX_SUFFIXES]
      self._bar.set_postfix({k: self._postfix[k] for k in order
                             if k in self._postfix}, refresh=False)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
    if self._bar is not None:
      self._bar.close()
