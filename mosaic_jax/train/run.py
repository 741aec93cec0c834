"""The method-neutral run: set-up, SFT warm-up, reference, `before`, resume.

Both methods (`methods.mosaic`, `methods.fate`) start the same way
(`warm_start`), with every output under `config.workdir`:

1. model (`model.path`: HF safetensors or orbax; else the preset randomly
   initialised; `build_model`) and tokenizer; the task datasets are built
   into `data.data_dir` if missing (`data.prepare`). Everything that can be
   checked without compute is checked first (`Run`).
2. SFT warm-up, `sft.steps` steps (`Run.sft`): each step takes `sft.batch`
   train tasks from the grain task pipeline, plays each with a scripted
   policy drawn from `sft.mix` (expert and flawed policies, so the warm
   start is unsafe on a measurable share of tasks) and trains on the
   rendered assistant turns.
3. the reference policy (the frozen SFT policy, `workdir/reference`) and
   `before`: the warm start on `eval.split` (validation) and on
   `eval.final_splits` (test, test_ood) (`eval.heldout.HeldOut`), with the
   scripted baselines and, on the final splits, the sampled evaluation.
4. the method's phase from the state `second_phase_state` gives it, with
   the periodic evaluation and checkpoints of `train.hooks`, then `after`
   on every split and `report.json` (`eval.heldout.training_report`):
   `{"kind": "training", "before": {split: report}, "after": {split:
   report}, ...}`. The final splits are never evaluated between the two, so
   nothing during training can be chosen on them.

Processes (the ownership rule, the same in every phase and both methods):
every process draws the step's *global* batch from the same grain stream
(`task_iterator`), so data positions and checkpoints do not depend on the
process count. Of N tasks, process p owns the contiguous block
[p*N/P, (p+1)*N/P) (`rollout.process_rows`): it steps those episodes'
environments and places those rows on its own devices (a process-major
mesh, `distributed.host_local_batch_to_global`). The episodes' host
metadata are then gathered (`rollout.gather_episodes`), so every process
computes the rewards, advantages, metrics and reports of the whole step
alike; only process 0 writes them. Host arrays every process holds whole
(SFT batches, advantages) are placed by their rows (`batches.place_global`);
sampling keys are per global row (`sampling.row_keys`). So N processes
compute what one process with the same mesh computes
(`tests/test_multihost_train.py`).

Checkpoints (`workdir/checkpoints`, every `checkpoint.every` steps, newest
`checkpoint.keep` kept) hold the train state (params, AdamW state, step, RNG)
and, as JSON, the phase, the phase's step and the grain iterator state. Steps
are numbered globally: SFT steps 1..S, then the method's. Restarting with the
same command restores the newest checkpoint and continues; every random draw
is a function of (seed, step), so the resumed run's metrics equal an
uninterrupted run's. The SFT end also writes the reference policy and the
`before` evaluation (`workdir/eval_before.json`), which a resumed run reads
back.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import psutil
from flax import nnx
from jax.experimental import multihost_utils

from mosaic_jax import batches as batches_lib, data as data_lib
from mosaic_jax import distributed, sharding
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.envs.base import Task
from mosaic_jax.eval import heldout as heldout_lib
from mosaic_jax.models import ModelConfig, convert, decoder, presets
from mosaic_jax.models import lora as lora_lib
from mosaic_jax.rollout import prompt_ids
from mosaic_jax.train import checkpoint, faults, hooks, metrics as metrics_lib
from mosaic_jax.train import progress as progress_lib
from mosaic_jax.train import sft_data, state as state_lib, steps as steps_lib
from mosaic_jax.train import validate

PHASES = ("sft", "rl")
REPORT_FILE = "report.json"
BEFORE_FILE = "eval_before.json"
# The flattened config of the run (a resumed run warns about what changed).
RUN_CONFIG_FILE = "run_config.json"
REFERENCE_DIR = "reference"
# Metric names under this prefix are wall times: they differ between runs.
TIME_PREFIX = hooks.TIME_PREFIX
# Metric names under this prefix describe the host (resident memory): they
# differ between runs too.
HOST_PREFIX = "host/"


# ----------------------------------------------------------------- set-up --


def build_model(config: ml_collections.ConfigDict,
                mesh: jax.sharding.Mesh | None = None) -> decoder.Decoder:
  """`model.path` (orbax or HF safetensors), else the preset at random init;
  with fresh LoRA adapters when `model.lora.rank` > 0."""
  return lora_lib.apply(_build_base_model(config, mesh),
                        lora_config(config), seed=config.seed)


def lora_config(config: ml_collections.ConfigDict) -> lora_lib.LoRAConfig:
  """`model.lora` (rank 0, i.e. full fine-tuning, when the section is absent)."""
  return lora_lib.LoRAConfig.from_config(config.model.get("lora"))


def _build_base_model(config: ml_collections.ConfigDict,
                      mesh: jax.sharding.Mesh | None) -> decoder.Decoder:
  m = config.model
  if m.path:
    return convert.load_model(m.path, dtype=m.dtype,
                              compute_dtype=m.compute_dtype, mesh=mesh,
                              remat=m.remat)
  cfg = presets.PRESETS[m.preset].replace(
      param_dtype=m.dtype, dtype=m.compute_dtype, remat=m.remat)
  return decoder.init_model(cfg, seed=config.seed)


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The architecture `build_model` builds, read without loading weights
  (the `config.json` beside `model.path`, else the preset)."""
  if config.model.path:
    return ModelConfig.from_hf(config.model.path)
  return presets.PRESETS[config.model.preset]


def build_tokenizer(config: ml_collections.ConfigDict) -> Any:
  """`config.tokenizer`, else the one beside `model.path`, else the tiny one."""
  path = config.tokenizer or config.model.path
  return convert.load_tokenizer(path) if path else load_tiny_tokenizer()

def copy_model(model: decoder.Decoder) -> decoder.Decoder:
  """A model with its own buffers (train steps donate the state's)."""
  graphdef, params = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, params))


def task_iterator(config: ml_collections.ConfigDict, batch_size: int,
                  seed_offset: int, saved: Any = None) -> Iterator[Any]:
  """A seeded train-task iterator (grain, `seed + seed_offset`) of global
  batches, at its saved position when `saved` (an iterator state) is given.

  Every process reads the same stream (the ownership rule, module
  docstring): a step's tasks, its data position and so its checkpoint are
  the same whatever the process count."""
  it = iter(data_lib.task_pipeline(config.data, "train",
                                   batch_size=batch_size,
                                   seed=config.seed + seed_offset,
                                   process_index=0, process_count=1))
  if saved:
    it.set_state(saved)
  return it


def check_task_splits(data: ml_collections.ConfigDict,
                      evaluated: Sequence[str] = ("test",)) -> None:
  """Fails unless every process gets train tasks and each evaluated split
  has tasks.

  Raises:
    validate.ConfigError: names the dataset directory, the split and the
      fix.
  """
  for split, need in (("train", jax.process_count()),
                      *((s, 1) for s in evaluated)):
    n = len(data_lib.source(data, data_lib.TASKS, split))
    if n < need:
      where = data_lib.builder(data, data_lib.TASKS).data_dir
      raise validate.ConfigError(
          f"{where}: split {split!r} has {n} tasks, fewer than the {need} "
          "a run needs; delete that directory so that the run rebuilds it, "
          "or point data.data_dir at a built task dataset")


def abstract_adapters(arch: ModelConfig, lora: lora_lib.LoRAConfig
                      ) -> nnx.State:
  """The LoRA adapters' `nnx.State` of ShapeDtypeStructs (nothing
  allocated) of `arch` with `lora`."""
  model = nnx.eval_shape(lambda: lora_lib.apply(
      decoder.Decoder(arch, rngs=nnx.Rngs(params=0)), lora))
  return nnx.state(model, lora_lib.LoRAParam)


def check_checkpoint(config: ml_collections.ConfigDict, arch: ModelConfig,
                     directory: str) -> None:
  """Fails if `directory` holds a checkpoint of another model than `arch`
  (reads only the newest step's metadata).

  Raises:
    checkpoint.IncompatibleCheckpoint: names the parameter and the fix.
  """
  if not os.path.isdir(directory):
    return
  ckpt = checkpoint.Checkpointer(directory)
  lora = lora_config(config)
  # With LoRA a checkpoint holds the adapters only.
  params = (abstract_adapters(arch, lora) if lora.enabled else
            nnx.state(decoder.abstract_model(arch), nnx.Param))
  try:
    ckpt.check_params(params,
                      f"model.preset={config.model.preset!r}, "
                      f"model.path={config.model.path!r}, "
                      f"model.lora.rank={lora.rank}")
  finally:
    ckpt.close()


def check_model_dir(config: ml_collections.ConfigDict) -> None:
  """Fails unless `model.path` (if set) is a model directory whose
  config.json and safetensors headers or orbax metadata agree; reads no
  weights.

  Raises:
    validate.ConfigError: one line naming the file and the key.
  """
  if not config.model.path:
    return
  try:
    convert.check_model_dir(config.model.path)
  except convert.ModelFileError as e:
    raise validate.ConfigError(f"model.path: {e}") from e


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and writes a probe file in it.

  Raises:
    validate.ConfigError: one line naming the directory and the cause.
  """
  probe = os.path.join(workdir, ".write_probe")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise validate.ConfigError(
        f"workdir: cannot write to {workdir!r} ({type(e).__name__}: "
        f"{e.strerror or e}); set --config.workdir to a writable "
        "directory") from e


# Tasks whose prompt and SFT demonstration lengths are measured up front.
LENGTH_SAMPLE = 16


def measured_lengths(config: ml_collections.ConfigDict, tokenizer: Any,
                     task_list: Sequence[Task]
                     ) -> tuple[dict[str, int], dict[str, int]]:
  """(task id -> first-prompt tokens, task id -> SFT demonstration tokens)
  of up to `LENGTH_SAMPLE` tasks spread over the kinds (no SFT lengths
  without SFT steps)."""
  sample = heldout_lib.stratified_subset(task_list, LENGTH_SAMPLE)
  prompts = {t.task_id: len(prompt_ids(t, tokenizer)) for t in sample}
  sft = {}
  if config.sft.steps and sample:
    examples = sft_data.sft_examples(
        sample, tokenizer, dict(config.sft.mix), seed=config.seed,
        max_len=2**31 - 1, bucket=1, max_turns=config.rollout.max_turns)
    sft = dict(zip(examples.task_ids,
                   map(int, examples.attention_mask.sum(1))))
  return prompts, sft


def _rss_mib() -> float:
  """This process's resident memory, MiB."""
  return psutil.Process().memory_info().rss / 2**20

def sync_processes(name: str) -> None:
  """A barrier over processes (nothing with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)



class Run:
  """What the phases of one run share: config, workdir, mesh, tokenizer,
  model, the SFT optimizer settings, the held-out evaluation
  (`heldout`, `evaluation`), checkpoints and SIGTERM (`checkpoints`), the
  metrics writer (set by `warm_start`) and the non-finite guard
  (`faults`), the console's bars (`progress`, one per phase); the SFT
  phase.

  Everything that can be checked without compute is checked first, each
  failure naming the field and the fix: the config's values
  (`validate.check_values`), the tokenizer against the protocol and the
  model's vocabulary, a checkpoint in the workdir against the model, and
  the task splits.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    validate.check_values(config)
    self.config = config
    self.workdir = os.path.abspath(config.workdir)
    self.main = distributed.is_main_process()
    self.mesh = sharding.make_mesh(config.mesh)
    check_model_dir(config)
    self.tokenizer = build_tokenizer(config)
    arch = model_config(config)
    validate.check_tokenizer(
        self.tokenizer, arch.vocab_size,
        config.tokenizer or config.model.path or "the tiny tokenizer")
    check_checkpoint(config, arch, self.path("checkpoints"))
    if self.main:
      check_workdir(self.workdir)
    if not config.data.data_dir:
      config.data.data_dir = os.path.join(self.workdir, "data")
    # One process builds the datasets (docs/data.md); the others wait.
    if self.main:
      data_lib.prepare(config.data, [data_lib.TASKS])
    sync_processes("mosaic_data_prepared")
    check_task_splits(config.data, heldout_lib.eval_splits(config))
    self.model = build_model(config, self.mesh)
    self.sft_opt = dataclasses.replace(
        state_lib.OptimizerConfig.from_config(config.optimizer),
        lr=config.sft.lr, total_steps=config.sft.steps)
    ckpt = checkpoint.Checkpointer(
        self.path("checkpoints"), every=config.checkpoint.every,
        keep=config.checkpoint.keep)
    split_tasks = heldout_lib.split_tasks(config)
    validate.check_lengths(config, *measured_lengths(
        config, self.tokenizer, [t for v in split_tasks.values() for t in v]))
    self.heldout = heldout_lib.HeldOut(
        config, self.tokenizer, self.mesh,
        heldout_lib.select_tasks(config, split_tasks))
    self.progress = progress_lib.Progress(enabled=self.main)
    self.heldout.progress = self.progress
    self.evaluation = hooks.PeriodicEval(self.heldout, config, self.log)
    self.writer: metrics_lib.MetricsWriter | None = None
    self.guard = faults.NonFiniteGuard(
        config.max_nonfinite_steps,
        self.path(faults.NONFINITE_FILE) if self.main else None)
    # Last: from here SIGTERM is a flag until `close`.
    self.checkpoints = hooks.Checkpoints(ckpt, faults.Preemption())

  def close(self) -> None:
    """Flushes and closes the writers; SIGTERM kills again."""
    self.progress.close()
    if self.writer is not None:
      self.writer.close()
    self.checkpoints.close()

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def iterator(self, phase: str, extra: Mapping[str, Any],
               per_step: int) -> Iterator[Any]:
    """The phase's grain task iterator (`per_step` tasks a step, the
    global batch on every process; seed + the phase's index in `PHASES`),
    at its checkpointed position."""
    saved = extra.get("data") if extra.get("phase") == phase else None
    return task_iterator(self.config, per_step, PHASES.index(phase), saved)

  def save(self, state: state_lib.TrainState, phase: str, it: Any,
           force: bool = False,
           extra: Mapping[str, Any] | None = None) -> None:
    """The end of a step of `phase`: `hooks.Checkpoints.save` with the
    phase, the task iterator's position and the phase's own JSON-able
    `extra` (e.g. the LLM judge's cache)."""
    self.checkpoints.save(state, {**(extra or {}), "phase": phase,
                                  "data": it.get_state()}, force=force)

  def write_json(self, name: str, value: Any) -> None:
    """Writes `workdir/name` whole or not at all (a temporary file renamed:
    a crash never leaves a truncated file for a resumed run to read)."""
    if self.main:
      tmp = self.path(name + ".tmp")
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
      os.replace(tmp, self.path(name))

  def log(self, step: int, values: Mapping[str, Any],
          prefix: str = "") -> dict[str, float]:
    """Writes `values` under `prefix`; returns them as host floats."""
    return self.writer.write(step, values, prefix)

  def log_step(self, phase: str, step: int, metrics: Mapping[str, Any],
               times: Mapping[str, float], task_ids: Sequence[str]) -> None:
    """A step's metrics under `phase/`, its wall times and the resident
    memory; a skipped non-finite update goes to the guard (which may stop
    the run); the open phase bar advances with the step's loss, reward
    and KL.

    Args:
      phase: metric prefix and guard label ("sft", "rl", ...).
      step: the global step just taken.
      metrics: the step's metrics (with `skipped`, `loss`, `grad_norm`).
      times: wall times in seconds, logged under `time/<phase>/`.
      task_ids: this process's tasks of the step's batch.
    """
    values = self.log(step, metrics, phase + "/")
    self.progress.step({k[len(phase) + 1:]: v for k, v in values.items()})
    self.log(step, times, TIME_PREFIX + phase + "/")
    self.log(step, {"rss_mib": _rss_mib()}, HOST_PREFIX)
    self.guard.update(phase, step, metrics, task_ids)

  def sft(self, state: state_lib.TrainState, extra: Mapping[str, Any]
          ) -> state_lib.TrainState:
    """The SFT warm-up from `state` to step `sft.steps` (module docstring,
    step 2); `extra` is the restored checkpoint's (its task position)."""
    c = self.config
    it = self.iterator("sft", extra, c.sft.batch)
    step_fn = steps_lib.make_sft_step(
        steps_lib.SFTConfig.from_config(c.sft),
        state_lib.learning_rate_schedule(self.sft_opt))
    pad = self.tokenizer.pad_token_id
    step = int(state.step)
    if step < c.sft.steps:
      self.progress.phase("SFT", c.sft.steps, initial=step)
    while step < c.sft.steps:
      start = time.perf_counter()
      step += 1
      tasks = next(it)
      draw = c.seed * 1_000_003 + step  # policies and fresh entities
      if c.sft.fresh_entities:
        tasks = [tasks_lib.resample(t, draw) for t in tasks]
      examples = sft_data.sft_examples(
          tasks, self.tokenizer, dict(c.sft.mix),
          seed=draw, max_len=c.sft.max_len,
          bucket=c.sft.bucket, max_turns=c.rollout.max_turns)
      faults.fault_point("rollout", step)
      # Every process builds the whole step's batch (scripted episodes, host
      # work) and places its own rows of it. sft_examples pads to a bucket
      # multiple (an all-dropped batch is empty).
      length = max(examples.tokens.shape[1], c.sft.bucket)
      batch = batches_lib.place_global(batches_lib.padded_sft_batch(
          zip(examples.tokens, examples.loss_mask, examples.attention_mask),
          c.sft.batch, length, pad), self.mesh)
      state, metrics = step_fn(state, batch)
      # Dispatch is asynchronous: wait, so step_s includes the update.
      metrics = jax.block_until_ready(metrics)
      faults.fault_point("update", step)
      # Share of this batch's demonstrations that executed an unsafe action.
      unsafe = float(np.mean(examples.z[:, 0] < 1)) if len(examples.z) else 0.
      self.log_step("sft", step, {**metrics, "unsafe_share": unsafe,
                                  "dropped": len(examples.dropped)},
                    {"step_s": time.perf_counter() - start},
                    [t.task_id for t in tasks])
      self.save(state, "sft", it, force=step == c.sft.steps)
    return state


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{"section.field": value}` of a config, JSON-normalised."""
  flat: dict[str, Any] = {}
  def walk(node: Mapping[str, Any], prefix: str) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = value
  walk(json.loads(config.to_json_best_effort()), "")
  return flat


def config_changes(path: str, config: ml_collections.ConfigDict
                   ) -> list[str]:
  """`field: old -> new` for each field of `config` that differs from the
  run config saved at `path` (none when there is no such file).

  A resumed run keeps its checkpoint, data position and logs whatever the
  config says now; reusing a workdir by mistake (another seed, reward or
  model) would otherwise continue the old run silently.
  """
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  new = flat_config(config)
  return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
          for key in sorted(set(old) | set(new))
          if old.get(key, "<absent>") != new.get(key, "<absent>")]


@dataclasses.dataclass
class WarmStart:
  """Where the phase after SFT starts (`warm_start`); both methods share it.

  Attributes:
    run: the run's shared context (its `writer` open).
    state: the restored train state when the checkpoint is from the phase
      after SFT, else the state at the end of SFT.
    extra: the restored checkpoint's extra dict; empty when SFT ended in this
      call.
    reference: the frozen SFT policy (`workdir/reference`).
    before: split -> report of the SFT policy (`workdir/eval_before.json`).
  """
  run: Run
  state: state_lib.TrainState
  extra: dict[str, Any]
  reference: decoder.Decoder
  before: dict[str, Any]


def warm_start(config: ml_collections.ConfigDict) -> WarmStart:
  """Set-up, restore, the SFT warm-up, the reference policy and `before`.

  Restores the newest checkpoint of `workdir/checkpoints` (if any) and runs
  (or finishes) the SFT phase unless the checkpoint is from a later phase.
  The reference policy and the `before` evaluation are read back when an
  earlier run of this workdir wrote them, else computed and written.
  The process group must be initialised already.

  Args:
    config: the run's config.

  Returns:
    The `WarmStart` the second phase continues from; the caller closes its
    `run`.

  Raises:
    faults.Preempted: SIGTERM arrived (the newest step is checkpointed).
    faults.NonFiniteError: too many non-finite SFT updates in a row.
  """
  r = Run(config)
  try:
    template = state_lib.create_train_state(r.model, r.sft_opt,
                                            seed=config.seed, mesh=r.mesh)
    state, extra, resumed = r.checkpoints.ckpt.restore_or_keep(template)
    step = int(state.step)
    r.writer = metrics_lib.MetricsWriter.from_config(r.workdir, config)
    if r.main:
      start = f"resumed at step {step}" if resumed else "fresh"
      sizes = ", ".join(f"{s} {n}" for s, n in r.heldout.sizes().items())
      print(f"workdir: {r.workdir} ({start}); evaluation tasks: {sizes}",
            flush=True)
      if resumed:
        for line in config_changes(r.path(RUN_CONFIG_FILE), config):
          print(f"warning: resuming with a changed config: {line}",
                flush=True)
    r.write_json(RUN_CONFIG_FILE, flat_config(config))
    if extra.get("phase", "sft") == "sft":
      state = r.sft(state, extra)
      extra = {}
    reference = reference_policy(r, state)
    if os.path.exists(r.path(BEFORE_FILE)):
      with open(r.path(BEFORE_FILE), encoding="utf-8") as f:
        before = json.load(f)
    else:
      before = r.heldout.evaluate(reference, "warm_start", config.sft.steps,
                                  final=True)
      # Logged before the file is written: a crash in between logs it again
      # on resume rather than never.
      r.evaluation.log(config.sft.steps, before)
      r.write_json(BEFORE_FILE, before)
    r.checkpoints.stop_if_preempted(int(state.step))
  except BaseException:
    r.close()
    raise
  return WarmStart(r, state, extra, reference, before)


def reference_policy(r: Run, state: state_lib.TrainState) -> decoder.Decoder:
  """The frozen SFT policy: `workdir/reference` read back, else a copy of
  `state`'s model written there (into a temporary directory renamed when
  complete, so a crash never leaves a reference a resumed run would load
  half-written)."""
  final = r.path(REFERENCE_DIR)
  if os.path.isdir(final):
    return convert.load_model(final, mesh=r.mesh)
  # LoRA: the SFT adapters folded in, a plain model (the next phase trains
  # fresh adapters on top of it).
  reference = lora_lib.merge(copy_model(state.model()))
  tmp = final + ".tmp"
  if r.main:
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed run's leftover
  sync_processes("mosaic_reference_tmp")
  convert.save_orbax(reference, tmp)
  sync_processes("mosaic_reference_written")
  if r.main:
    faults.fault_point("reference-write", int(state.step))
    os.rename(tmp, final)
  sync_processes("mosaic_reference_renamed")
  return reference


def second_phase_state(ws: WarmStart, phase: str,
                       opt: state_lib.OptimizerConfig
                       ) -> state_lib.TrainState:
  """The train state the phase after SFT (`phase`) starts or resumes with.

  Starting: the SFT params (copied from the reference), a fresh `opt`
  optimizer and key (seed + 1); the step counter continues from `sft.steps`.
  Resuming (the restored checkpoint is from `phase`): the restored state with
  `opt`'s update rule.

  With LoRA the phase trains fresh adapters (seed + 1) on the merged SFT
  model (the reference) as its frozen base; resuming restores the adapters
  and takes the base from the reference again.
  """
  config = ws.run.config
  lora = lora_config(config)
  if ws.extra.get("phase") == phase:
    state = ws.state.replace(tx=state_lib.make_optimizer(opt))
    if lora.enabled:
      state = state.replace(
          frozen=nnx.split(copy_model(ws.reference), nnx.Param)[1])
    return state
  model = lora_lib.apply(copy_model(ws.reference), lora, seed=config.seed + 1)
  state = state_lib.create_train_state(
      model, opt, seed=config.seed + 1, mesh=ws.run.mesh)
  # Placed like the fresh step counter: a differently placed input would
  # make the jitted step compile a second time.
  return state.replace(step=jax.device_put(
      jnp.asarray(config.sft.steps, jnp.int32), state.step.sharding))
