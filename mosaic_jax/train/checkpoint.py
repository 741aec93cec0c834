"""Orbax checkpoints of a `TrainState` plus a JSON "extra" dict.

Layout under `directory` (one orbax step directory per saved step):

  <step>/state/   params, opt_state, step, rng (orbax PyTree, sharded arrays
                  written by every process for its own shards)
  <step>/extra/   the JSON-able extra dict (data-iterator state, replay
                  buffer, ...), written by process 0 only

Orbax writes each step into a temporary directory and renames it when every
item is complete, so a crash never leaves a step that restores half-written
(a leftover `<step>.orbax-checkpoint-tmp` directory is not a step, and the
next save of that step replaces it); `keep` bounds how many steps stay on
disk (oldest deleted first). `save` refuses params or optimizer state that
are not finite, and `check_params` tells a checkpoint of another model apart
before anything is restored.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from mosaic_jax.train import faults, steps as steps_lib
from mosaic_jax.train.state import TrainState

# Directory-name suffix of a step orbax has not committed yet.
TMP_SUFFIX = ".orbax-checkpoint-tmp"


class IncompatibleCheckpoint(ValueError):
  """The directory holds a checkpoint of another model."""


class UnreadableCheckpoint(ValueError):
  """A committed step's files are damaged (truncated, overwritten)."""


def _saved(state: TrainState) -> dict[str, Any]:
  # The pytree part of the state; graphdef and tx are rebuilt from code.
  return {"params": state.params, "opt_state": state.opt_state,
          "step": state.step, "rng": state.rng}


_all_finite = jax.jit(steps_lib.all_finite)


class _FaultBeforeRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's commit by rename with the crash tests' hook in front of it.

  Orbax finalizes each item of a step, then the step, each by renaming its
  finished temporary directory. `faults.fault_point("checkpoint-write",
  step)` runs before the first of these renames: a kill there leaves the
  step's files written and nothing of it committed. Used only while
  `MOSAIC_FAULT` is set; otherwise orbax picks its own protocol.
  """

  async def finalize(self, *args, **kwargs):
    final = self.get_final()
    name = final.name if final.name.isdigit() else final.parent.name
    step = name.removesuffix(TMP_SUFFIX)
    if step.isdigit():
      faults.fault_point("checkpoint-write", int(step))
    return await super().finalize(*args, **kwargs)


def _name(path: tuple[Any, ...]) -> str:
  """`blocks/w_up` for a pytree key path (nnx's trailing `value` dropped),
  the same for a state and for orbax's metadata of it."""
  parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
           for k in path]
  return "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {_name(path): tuple(leaf.shape) for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Saves every `every` steps, keeps the newest `keep`, restores exactly.

  Every process calls `save` and `restore` (orbax coordinates them: each
  writes its own array shards, process 0 the metadata and the extra dict).
  """

  def __init__(self, directory: str | os.PathLike, *, every: int = 100,
               keep: int = 3):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where step directories live.
      every: `save` writes only at steps that are a multiple of this
        (unless forced).
      keep: newest steps kept on disk; 0 or less keeps all.
    """
    self.directory = os.path.abspath(os.fspath(directory))
    self.every = every
    # The interval is applied in `save`: orbax's own would also write the
    # first step a manager sees, whatever its number.
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, max_to_keep=keep if keep > 0 else None,
        create=True, temporary_path_class=(
            _FaultBeforeRename if os.environ.get(faults.FAULT_ENV) else None))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def save(self, state: TrainState, extra: Mapping[str, Any] | None = None,
           *, force: bool = False) -> bool:
    """Saves `state` (and `extra`) at `state.step` if the interval says so.

    Args:
      state: the train state.
      extra: JSON-able dict restored alongside (default: empty).
      force: save even off the interval (e.g. the last step).

    Returns:
      Whether a checkpoint was written.

    Raises:
      ValueError: params or optimizer state hold NaN or inf (the train steps
        never produce them; nothing is written).
    """
    step = int(jax.device_get(state.step))
    if not force and step % self.every:
      return False
    if not bool(_all_finite((state.params, state.opt_state))):
      raise ValueError(f"step {step}: refusing to checkpoint non-finite "
                       f"params or optimizer state into {self.directory}")
    saved = self._manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_saved(state)),
            extra=ocp.args.JsonSave(dict(extra or {}))), force=force)
    self._manager.wait_until_finished()
    return saved

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def extra(self, step: int | None = None) -> dict[str, Any]:
    """The JSON extra dict of a step (default: the latest), without the
    arrays.

    Raises:
      FileNotFoundError: no checkpoint exists (or not that step).
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}")
    out = self._manager.restore(step, args=ocp.args.Composite(
        extra=ocp.args.JsonRestore()))
    return dict(out["extra"] or {})

  def check_params(self, params: Any, describe: str) -> None:
    """Fails unless the newest step holds params shaped like `params`.

    Reads only the step's metadata, so a checkpoint of another model is
    reported before anything is built or restored. No step: nothing to check.

    Args:
      params: the config's model params (arrays or ShapeDtypeStructs, e.g.
        `nnx.state(decoder.abstract_model(cfg), nnx.Param)`).
      describe: the config fields that chose the model, for the message.

    Raises:
      IncompatibleCheckpoint: names the first differing parameter and the
        fix.
      UnreadableCheckpoint: the newest step's metadata is missing or damaged.
    """
    step = self.latest_step()
    if step is None:
      return
    saved = self._param_shapes(step)
    want = _shapes(params)
    where = os.path.join(self.directory, str(step))
    for name in sorted(set(saved) | set(want)):
      if saved.get(name) != want.get(name):
        there = saved.get(name, "absent")
        here = want.get(name, "absent")
        raise IncompatibleCheckpoint(
            f"{where} is a checkpoint of another model: parameter {name!r} "
            f"is {there} there but {here} with this config ({describe}). "
            "Resume it with the model config that wrote it, or set "
            "--config.workdir to a new directory for this model")

  def _metadata_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """The saved params' shapes of `step`, from its metadata (raises
    whatever orbax raises for a damaged step)."""
    meta = self._manager.item_metadata(step)["state"]
    if meta is None:
      raise FileNotFoundError("state/_METADATA is missing or unreadable")
    shapes = _shapes(meta["params"])
    if not shapes:
      raise ValueError("no params in its metadata")
    return shapes

  def _param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """`_metadata_shapes`, a damaged step reported in one line.

    Raises:
      UnreadableCheckpoint: the metadata is missing or damaged (names the
        step directory and the step to fall back to).
    """
    try:
      return self._metadata_shapes(step)
    except Exception as e:  # pylint: disable=broad-except
      # A missing `state/_METADATA` reads as None; damaged array files
      # give tensorstore's errors.
      raise self._unreadable(step, e) from e

  def _readable(self, step: int) -> bool:
    try:
      return bool(self._metadata_shapes(step))
    except Exception:  # pylint: disable=broad-except
      return False

  def _unreadable(self, step: int, error: Exception) -> UnreadableCheckpoint:
    """The one-line error of a damaged step: its directory, the cause and
    the newest older step whose metadata reads (the one to resume from)."""
    older = [s for s in self.all_steps() if s < step]
    fallback = next((s for s in reversed(older) if self._readable(s)), None)
    way_out = (f"delete it to resume from step {fallback}"
               if fallback is not None else
               "delete it to start this run again")
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return UnreadableCheckpoint(
        f"{os.path.join(self.directory, str(step))} is unreadable "
        f"({type(error).__name__}: {text}); {way_out}")

  def restore(self, template: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """Restores a saved step into arrays shaped and sharded like `template`.

    Args:
      template: a train state of the same model and optimizer (e.g. a fresh
        one); only its structure, shapes, dtypes and shardings are used.
      step: the step to restore (default: the latest).

    Returns:
      (restored state, extra dict).

    Raises:
      FileNotFoundError: no checkpoint exists (or not that step).
      UnreadableCheckpoint: the step's files are damaged; the message names
        the step directory and the step to fall back to.
    """
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved(template))
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          extra=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for a damaged file; one clear
      # message names the step and the way out.
      raise self._unreadable(step, e) from e
    restored = out["state"]
    state = template.replace(params=restored["params"],
                             opt_state=restored["opt_state"],
                             step=restored["step"], rng=restored["rng"])
    return state, dict(out["extra"] or {})

  def restore_or_keep(self, state: TrainState
                      ) -> tuple[TrainState, dict[str, Any], bool]:
    """Restores the latest step if any exists, else returns `state` as is.

    Returns:
      (state, extra dict, whether a checkpoint was restored).
    """
    if self.latest_step() is None:
      return state, {}, False
    restored, extra = self.restore(state)
    return restored, extra, True

  def close(self) -> None:
    self._manager.close()
