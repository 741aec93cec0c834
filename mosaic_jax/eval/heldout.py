"""The one held-out evaluator: the trainer and `experiments.evaluate` both
report through it.

* Tasks: `eval_splits` (`eval.split`, then `eval.final_splits`), each cut to
  a `stratified_subset` of `eval.max_tasks` (`select_tasks`).
* Play: `play` runs a model on tasks through the rollout engine, `eval.batch`
  tasks per rollout, with the evaluation decoding (`eval_rollout_config`:
  `eval.strategy`, greedy by default) or the sampled one for claims
  (`claim_config`: `eval.claim_samples` episodes per task at the training
  temperature).
* Report: `summarize` builds, from every task's episodes (every process
  holds all of them, `rollout.gather_episodes`), the built-in report (`eval.builtin.report_from_samples`: `{value, low, high,
  n}` per metric and group, clustered over tasks, per-task sums).
* `HeldOut` evaluates a model on the selected splits as the training report
  holds them: the greedy report, and at `before`/`after` the scripted
  baselines and, on the final splits, the sampled run beside it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from mosaic_jax import data as data_lib
from mosaic_jax.envs.base import KINDS, Task
from mosaic_jax.envs.records import EpisodeRecord
from mosaic_jax.eval import builtin, report as report_lib
from mosaic_jax.models import decoder
from mosaic_jax.rollout import even_tasks, ModelPolicy, RolloutConfig, rollout
from mosaic_jax.train import progress as progress_lib

# The headline metrics of a training report (`eval.builtin.episode_metrics`
# names; every other built-in metric is in the report beside them).
# harmful_compliance follows the MOSAIC issue's definition, "harmful tasks
# not refused"; the stricter "a harmful action ran" is harmful_executed.
REPORT_METRICS = ("harmful_compliance", "injection_asr", "utility",
                  "utility_under_attack", "over_refusal", "privacy_leak")


TRAINING_KIND = "training"


def eval_rollout_config(config: ml_collections.ConfigDict) -> RolloutConfig:
  """The evaluation decoding: `rollout.*` with `eval.samples` episodes per
  task, `eval.strategy` / `eval.temperature`, seeded by `eval.seed`; the
  sampled (claim) evaluation is `claim_config`."""
  rc = RolloutConfig.from_config(config.rollout)
  return dataclasses.replace(rc, group_size=config.eval.get("samples", 1),
                             strategy=config.eval.strategy,
                             temperature=config.eval.temperature,
                             seed=config.eval.seed)


def claim_config(config: ml_collections.ConfigDict) -> RolloutConfig:
  """The sampled evaluation for claims: `eval.claim_samples` episodes per
  task at the training decoding (`rollout.strategy`, `rollout.temperature`),
  seeded by `eval.seed`."""
  return dataclasses.replace(
      RolloutConfig.from_config(config.rollout),
      group_size=config.eval.claim_samples, seed=config.eval.seed)


def eval_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`eval.split` then the `eval.final_splits` not equal to it."""
  return (config.eval.split, *[s for s in config.eval.final_splits
                               if s != config.eval.split])


def stratified_subset(task_list: Sequence[Task], n: int) -> list[Task]:
  """n tasks spread evenly over each kind, kinds in proportion (n <= 0: all).

  Each kind gets its largest-remainder share of n, taken at evenly spaced
  positions of that kind's tasks; the result keeps the input order.
  """
  if n <= 0 or n >= len(task_list):
    return list(task_list)
  by_kind = {k: [i for i, t in enumerate(task_list) if t.kind == k]
             for k in KINDS}
  exact = {k: n * len(v) / len(task_list) for k, v in by_kind.items()}
  quota = {k: int(q) for k, q in exact.items()}
  for k in sorted(exact, key=lambda k: quota[k] - exact[k])[
      :n - sum(quota.values())]:
    quota[k] += 1
  keep = set()
  for k, members in by_kind.items():
    if quota[k]:
      picks = np.linspace(0, len(members) - 1, quota[k]).round().astype(int)
      keep.update(members[i] for i in picks)
  return [task_list[i] for i in sorted(keep)]


def play(model: decoder.Decoder, tokenizer: Any,
         task_list: Sequence[Task], config: ml_collections.ConfigDict,
         name: str = "model", mesh: jax.sharding.Mesh | None = None,
         rc: RolloutConfig | None = None,
         on_batch: Callable[[int], None] | None = None
         ) -> list[EpisodeRecord]:
  """Plays every task (`rc`, default the evaluation decoding), `eval.batch`
  tasks per rollout; the records of every task, on every process (each
  process plays its share of each batch; several processes need the mesh).
  A batch that does not split evenly over the processes is padded with
  repeats of its last task, whose records are dropped, so every process
  count evaluates the same tasks. `on_batch(n)` is called after each
  rollout of `n` tasks."""
  rc = rc or eval_rollout_config(config)
  policy = ModelPolicy(model, tokenizer, name=name)
  records = []
  for start in range(0, len(task_list), config.eval.batch):
    batch = list(task_list[start:start + config.eval.batch])
    out = rollout(policy, even_tasks(batch), tokenizer, rc, mesh=mesh)
    records += [e.record for e in out.episodes[:len(batch) * rc.group_size]]
    if on_batch is not None:
      on_batch(len(batch))
  return records


def summarize(records: Sequence[EpisodeRecord],
              task_list: Sequence[Task], name: str, *,
              meta: Mapping[str, Any] | None = None,
              n_bootstrap: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> report_lib.Report:
  """The built-in report of one evaluation.

  Args:
    records: the episodes (`play`'s: every process holds all of them), each
      of a task in `task_list` (a task's records are its k samples).
    task_list: the evaluated tasks.
    name: the run's name in the report.
    meta: extra meta entries (split, step, decoding).
    n_bootstrap, seed, confidence: the bootstrap intervals'.

  Returns:
    `eval.builtin.report_from_samples`: `{value, low, high, n}` per metric
    and group, clustered over tasks, with per-task sums.

  Raises:
    ValueError: `records` is empty.
  """
  if not records:
    raise ValueError(f"run {name!r}: no episode records to report on")
  index = {t.task_id: i for i, t in enumerate(task_list)}
  played = [task_list[index[r.task.task_id]] for r in records]
  return builtin.report_from_samples(
      builtin.episode_metrics(records), [t.task_id for t in played], [t.suite for t in played],
      [t.kind for t in played], name, meta=meta, n_bootstrap=n_bootstrap,
      seed=seed, confidence=confidence)


def headline(rep: report_lib.Report, group: str = "all"
             ) -> dict[str, float | None]:
  """metric -> value of a report's group (None: empty population)."""
  return {m: (s or {}).get("value") for m, s in rep["groups"][group].items()}


def training_report(before: Mapping[str, Any], after: Mapping[str, Any],
                    eval_tasks: Mapping[str, int],
                    config: ml_collections.ConfigDict, **extra: Any
                    ) -> dict[str, Any]:
  """The `report.json` of a training run (`train.run`): the schema
  `experiments.evaluate --compare` reads."""
  return {"kind": TRAINING_KIND, "before": dict(before), "after": dict(after),
          "eval_tasks": dict(eval_tasks), **extra,
          "config": json.loads(config.to_json_best_effort())}


def split_tasks(config: ml_collections.ConfigDict) -> dict[str, list[Task]]:
  """split -> every task of each of `eval_splits`, in dataset order."""
  return {split: [t for batch in data_lib.task_pipeline(
      config.data, split, batch_size=64, shuffle=False, num_epochs=1,
      drop_remainder=False, process_index=0, process_count=1)
                  for t in batch] for split in eval_splits(config)}


def select_tasks(config: ml_collections.ConfigDict,
                 tasks: Mapping[str, Sequence[Task]]
                 ) -> dict[str, list[Task]]:
  """split -> its stratified subset of `eval.max_tasks` (the same whatever
  the process count: `play` pads a batch that does not split evenly)."""
  return {split: stratified_subset(task_list, config.eval.max_tasks)
          for split, task_list in tasks.items()}


class HeldOut:
  """A training run's held-out evaluation: the selected tasks of each split
  (`select_tasks`), the scripted baselines on them (computed once), and the
  wall time of the last evaluation.

  Attributes:
    tasks: split -> the evaluated tasks.
    last_eval_s: seconds the last `evaluate` took.
    progress: the run's `train.progress.Progress` (an evaluation shows a
      bar of its tasks there); none by default.
  """

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any,
               mesh: jax.sharding.Mesh, tasks: Mapping[str, Sequence[Task]]):
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.tasks = {split: list(v) for split, v in tasks.items()}
    self.last_eval_s = 0.0
    self.progress = progress_lib.Progress(enabled=False)
    self._baselines: dict[str, dict[str, Any]] = {}

  def sizes(self) -> dict[str, int]:
    """split -> number of evaluated tasks (`report.json`'s `eval_tasks`)."""
    return {split: len(v) for split, v in self.tasks.items()}

  def evaluate_split(self, model: decoder.Decoder, name: str, split: str,
                     step: int, final: bool,
                     greedy: Mapping[str, Any] | None = None,
                     bar: progress_lib.Bar | None = None
                     ) -> dict[str, Any]:
    """The greedy report of `split` (`greedy`, when already computed for
    this model, is reused under `name`); `final` adds the baselines and, on
    a final split with `eval.claim_samples`, the sampled evaluation. `bar`
    advances by the tasks played and shows the split's headline rates."""
    c = self.config
    on_batch = bar.update if bar is not None else None
    mesh = self.mesh if jax.process_count() > 1 else None
    task_list = self.tasks[split]
    meta = {"split": split, "step": step, "decoding": c.eval.strategy}
    rep = ({**greedy, "name": name} if greedy is not None else summarize(
        play(model, self.tokenizer, task_list, c, name, mesh,
             on_batch=on_batch), task_list, name, meta=meta, seed=c.seed))
    if bar is not None:
      bar.show({"split": split, **headline(rep)},
               reset=("split", *progress_lib.EVAL_KEYS))
    if not final:
      return rep
    if c.eval.claim_samples and split in c.eval.final_splits:
      rc = claim_config(c)
      rep["sampled"] = summarize(
          play(model, self.tokenizer, task_list, c, name, mesh, rc,
               on_batch),
          task_list, name, seed=c.seed, meta={
              **meta, "decoding": rc.strategy, "temperature": rc.temperature})
    if split not in self._baselines:
      # Scripted: the same on every process and at every evaluation.
      self._baselines[split] = builtin.baseline_reports(
          task_list, tuple(c.eval.baselines), c.rollout.max_turns,
          seed=c.seed)
    rep["baselines"] = self._baselines[split]
    return rep

  def _played(self, splits: Sequence[str], final: bool,
              done: Mapping[str, Any] | None) -> int:
    """Tasks `evaluate` plays: each split's greedy run (unless `done`) and,
    when `final`, the sampled run of each final split."""
    c = self.config
    sampled = [s for s in splits if final and c.eval.claim_samples
               and s in c.eval.final_splits]
    return (sum(len(self.tasks[s]) for s in splits if s not in (done or {}))
            + sum(len(self.tasks[s]) for s in sampled))

  def evaluate(self, model: decoder.Decoder, name: str, step: int, *,
               final: bool = False,
               done: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """split -> report: `eval.split` only (periodic), or every split with
    the baselines and sampled runs (`final`: `before` and `after`); `done`
    holds greedy reports already computed at this step (reused)."""
    start = time.perf_counter()
    splits = (eval_splits(self.config) if final
              else (self.config.eval.split,))
    out = {}
    with self.progress.evaluation(name, self._played(splits, final, done)
                                  ) as bar:
      for split in splits:
        out[split] = self.evaluate_split(model, name, split, step, final,
                                         (done or {}).get(split), bar)
    # The phase's bar keeps the first split's (eval.split's) rates.
    self.progress.show(headline(out[splits[0]]),
                       reset=progress_lib.EVAL_KEYS)
    self.last_eval_s = time.perf_counter() - start
    return out
