"""End-to-end evaluation: (policy spec, eval config) -> reports on disk.

`run(config)` evaluates one policy on the benchmarks of an eval config
(`configs/eval/*.py`) and writes, per benchmark, under
`<output_dir>/<benchmark>/`:

  run.json, episodes.jsonl   the resumable record (`eval.episodes`)
  report.json, report.md     metrics with bootstrap intervals (`eval.report`)
  safety_utility.png         the run on the benchmark's safety/utility plane
  by_<group>.png             one metric per category/suite, with intervals

plus `<output_dir>/summary.md` (every table). `compare_runs` puts two runs
side by side: evaluation dirs, report files or training workdirs
(`report.json` of kind `training`), paired by `report_key`
(`builtin/<split>`), with paired deltas where both carry per-task tables.

Built-in protocol (docs/evaluation.md#protocol): `config.split` is checked
first (unknown: `validate.ConfigError`, one line listing the splits); every
built-in report carries `baselines` (the scripted `config.baselines` on the
same tasks) and, for a model with `claim_samples > 0`, `sampled` (k
episodes per task at `claim_temperature`, recorded under
`builtin/sampled/`, bootstrap clustered over tasks).

Policy spec (`config.checkpoint` if set, else `config.policy`):
  * a scripted policy name (`envs.scripted.POLICIES`): `expert` and the
    flawed ones, so the harness can be checked without a model. On AgentDojo
    `expert` replays AgentDojo's ground truth (`GroundTruthPolicy`) and
    `follow_injection` the ground truth plus the attacker's goal; the
    task-agnostic `over_refuse`, `lazy` and `malformed` run as they are.
    ATBench and PrivacyLens need a text generator: a scripted run skips them.
  * a directory: an HF safetensors dir, an orbax model dir
    (`convert.save_orbax`), or a training checkpoint (`train.checkpoint`
    layout: a step dir holding `state/`, the checkpoints dir or a training
    workdir, whose newest step is taken; the report's meta records the step
    dir and step restored); only the params are restored from a training
    checkpoint.
    The tokenizer is `config.tokenizer`, else the one saved beside the
    weights, else the tiny default. Multi-turn benchmarks run through
    `rollout.rollout` (`ModelPolicy`), single-turn ones (ATBench verdict,
    PrivacyLens final action) through `text_policy.ModelTextPolicy`.

Resumability: each benchmark's task list is fixed by the config; tasks run
in chunks of `config.batch`, each chunk's episodes are appended to
`episodes.jsonl`, and a restarted run skips the ids already there. The report
is computed from the file, in task-list order, so it does not depend on
where a run was interrupted. Sampling other than greedy draws per chunk, so
a resumed sampled run is a valid run but not the same draw.

`max_tasks` caps each stratum (0: all): built-in, per task kind; AgentDojo,
per suite and per attack (benign episodes are one stratum); AgentHarm, per
file (harmful, benign); ATBench and PrivacyLens, the file. The harness runs
in one process.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from mosaic_jax import data as data_lib
from mosaic_jax import sampling
from mosaic_jax.agent import protocol
from mosaic_jax.benchmarks import agentharm as agentharm_files
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import records as records_lib, scripted
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.envs.base import KINDS, Task
from mosaic_jax.envs.verifiers import Verdict, verify
from mosaic_jax.eval import agentdojo as agentdojo_eval
from mosaic_jax.eval import agentharm, atbench, builtin, episodes, heldout
from mosaic_jax.eval import privacylens
from mosaic_jax.eval import report as report_lib
from mosaic_jax.models import convert, decoder
from mosaic_jax.rollout import ModelPolicy, Rollout, RolloutConfig, rollout
from mosaic_jax.text_policy import ModelTextPolicy
from mosaic_jax.train import validate

BENCHMARKS = ("builtin", "agentdojo", "agentharm", "atbench", "privacylens")
# Benchmarks a scripted policy can play (the others need generated text).
SCRIPTED_BENCHMARKS = ("builtin", "agentdojo", "agentharm")
# Scripted policies that act without a built-in task's solution, so they run
# on AgentDojo tasks as they are (expert and follow_injection map to the
# ground truth).
_TASK_AGNOSTIC = ("over_refuse", "lazy", "malformed")
REPORT_JSON, REPORT_MD, SUMMARY_MD = "report.json", "report.md", "summary.md"


# ------------------------------------------------------------------ policy --


@dataclasses.dataclass
class Policy:
  """What is evaluated: a scripted policy, or a model and its tokenizer.

  Attributes:
    name: the run's name in reports.
    source: `scripted:<name>` or the checkpoint's absolute path.
    scripted: the scripted policy name, or None for a model.
    model: the decoder (None when scripted).
    tokenizer: the model's tokenizer (None when scripted).
    restored: the training checkpoint step directory the params came from
      (None: not a training checkpoint).
    step: that checkpoint's global training step (None likewise).
  """
  name: str
  source: str
  scripted: str | None = None
  model: decoder.Decoder | None = None
  tokenizer: Any = None
  restored: str | None = None
  step: int | None = None

  def meta(self) -> dict[str, Any]:
    """What a report records of the policy: its source and, for a training
    checkpoint, the step directory and step restored."""
    out: dict[str, Any] = {"policy": self.source}
    if self.restored is not None:
      out.update(checkpoint=self.restored, checkpoint_step=self.step)
    return out


def load_tokenizer(model_path: str, tokenizer_path: str = "") -> Any:
  """`tokenizer_path`, else the tokenizer beside the weights, else the one
  a training workdir's run config names (`tokenizer`, else `model.path`),
  else tiny."""
  if tokenizer_path:
    return convert.load_tokenizer(tokenizer_path)
  candidates = [model_path]
  run_config = os.path.join(model_path, "run_config.json")
  if os.path.isfile(run_config):
    with open(run_config, encoding="utf-8") as f:
      flat = json.load(f)
    candidates += [flat.get("tokenizer") or "", flat.get("model.path") or ""]
  for where in candidates:
    if where and os.path.isfile(os.path.join(where, "tokenizer_config.json")):
      return convert.load_tokenizer(where)
  return load_tiny_tokenizer()


def resolve_policy(config: ml_collections.ConfigDict) -> Policy:
  """The policy named by `config.checkpoint` (if set) or `config.policy`.

  Raises:
    ValueError: no spec, or neither a scripted policy nor a directory.
  """
  spec = config.checkpoint or config.policy
  if not spec:
    raise ValueError("no policy to evaluate: set --config.checkpoint=DIR "
                     "or --config.policy=NAME")
  if spec in scripted.POLICIES:
    return Policy(config.name or spec, f"scripted:{spec}", scripted=spec)
  if not os.path.isdir(spec):
    raise ValueError(f"policy {spec!r} is neither a scripted policy "
                     f"({', '.join(sorted(scripted.POLICIES))}) nor a "
                     "checkpoint directory")
  path = os.path.abspath(spec)
  model = convert.load_model(path, preset=config.model_preset,
                             dtype=config.dtype or None)
  name = config.name or os.path.basename(path.rstrip(os.sep))
  step_dir = convert.training_step_dir(path)
  return Policy(name, path, model=model,
                tokenizer=load_tokenizer(path, config.tokenizer),
                restored=step_dir, step=_step_number(step_dir))


def _step_number(step_dir: str | None) -> int | None:
  name = os.path.basename(step_dir or "")
  return int(name) if name.isdigit() else None


def decoding_config(config: ml_collections.ConfigDict) -> RolloutConfig:
  """The evaluated model's decoding: the eval config's `rollout` section as
  it is (the trainer's evaluation decoding is
  `eval.heldout.eval_rollout_config`)."""
  return RolloutConfig.from_config(config.rollout)


def text_policy(model: decoder.Decoder, tokenizer: Any,
                config: ml_collections.ConfigDict) -> ModelTextPolicy:
  """One-turn generation with the eval config's decoding settings."""
  rc = decoding_config(config)
  return ModelTextPolicy(
      model, tokenizer, sampling.SamplingConfig(
          max_new_tokens=rc.max_tokens_per_turn,
          strategy=rc.strategy_object(), pad_id=tokenizer.pad_token_id),
      stop_strings=rc.stop_strings, seed=rc.seed)


def _model_rollout(policy: Policy, config: ml_collections.ConfigDict,
                   task_list: Sequence[Any], **kwargs) -> Rollout:
  return rollout(ModelPolicy(policy.model, policy.tokenizer, policy.name),
                 task_list, policy.tokenizer, decoding_config(config), **kwargs)


# ---------------------------------------------------------------- records --


def _jsonable(value: Any) -> Any:
  """`value` as JSON would read it back (numpy scalars, tuples, sets)."""
  def default(x):
    if isinstance(x, np.generic):
      return x.item()
    if isinstance(x, np.ndarray):
      return x.tolist()
    if isinstance(x, (set, frozenset)):
      return sorted(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
  return json.loads(json.dumps(value, default=default))


def _episode_record(task_dict: Mapping[str, Any], z: Any,
                    details: Mapping[str, Any], turns: Sequence[Any],
                    **extra: Any) -> dict[str, Any]:
  return _jsonable({"task": dict(task_dict),
                    "z": [float(v) for v in np.asarray(z)],
                    "details": dict(details),
                    "turns": episodes.turns_to_json(turns), **extra})


def _progress(config: ml_collections.ConfigDict) -> bool:
  # Bars redraw with carriage returns, which clutter CI logs: TTY only.
  return bool(config.progress) and sys.stderr.isatty()


def run_chunks(store: episodes.EpisodeStore, keys: Sequence[str],
               run_chunk: Callable[[list[int]], list[dict[str, Any]]], *,
               batch: int, progress: bool, desc: str
               ) -> list[dict[str, Any]]:
  """Runs the tasks not yet recorded, `batch` at a time; all records.

  Args:
    store: the run's episode file.
    keys: the task ids, in task-list order (unique).
    run_chunk: task indices -> one JSON record per index.
    batch: tasks per chunk.
    progress: show a progress bar.
    desc: the bar's label.

  Returns:
    The record of every key, in `keys` order.
  """
  if len(set(keys)) != len(keys):
    raise ValueError(f"{desc}: task ids are not unique")
  done = store.load()
  todo = [i for i, key in enumerate(keys) if key not in done]
  with tqdm.tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc,
                 unit="task", disable=not progress) as bar:
    for start in range(0, len(todo), batch):
      index = todo[start:start + batch]
      records = run_chunk(index)
      store.append([{"id": keys[i], **r} for i, r in zip(index, records)])
      bar.update(len(index))
  done = store.load()
  return [done[key] for key in keys]


def _report_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {"n_bootstrap": config.n_bootstrap, "seed": config.bootstrap_seed,
          "confidence": config.confidence}


def _signature(policy: Policy, config: ml_collections.ConfigDict,
               benchmark: str, **selection: Any) -> dict[str, Any]:
  # Decoding settings change what a model writes; a scripted policy only
  # depends on the turn limit.
  decoding = ({"max_turns": config.rollout.max_turns} if policy.scripted
              else config.rollout.to_dict())
  return {"benchmark": benchmark, "policy": policy.source,
          "max_tasks": config.max_tasks, "decoding": decoding, **selection}


def _data_config(config: ml_collections.ConfigDict
                 ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      data_dir=config.data_dir, manual_dir=config.manual_dir,
      sft_config="tiny", max_length=2048))


def _split_list(text: str) -> list[str]:
  return [x.strip() for x in str(text).split(",") if x.strip()]


def _cap(items: Sequence[Any], max_tasks: int) -> list[Any]:
  return list(items if max_tasks <= 0 else items[:max_tasks])


# ---------------------------------------------------------------- builtin --


def builtin_tasks(config: ml_collections.ConfigDict) -> list[Task]:
  """The split's tasks from the data layer, the first `max_tasks` per kind."""
  dcfg = _data_config(config)
  data_lib.prepare(dcfg, [data_lib.TASKS])
  task_list = [t for batch in data_lib.task_pipeline(
      dcfg, config.split, batch_size=64, shuffle=False, num_epochs=1,
      drop_remainder=False, process_index=0, process_count=1)
               for t in batch]
  if config.max_tasks <= 0:
    return task_list
  keep = {k: {t.task_id for t in _cap([t for t in task_list if t.kind == k],
                                       config.max_tasks)} for k in KINDS}
  return [t for t in task_list if t.task_id in keep[t.kind]]


def _names(value: Any) -> list[str]:
  """A config list: a comma string or a tuple of names."""
  if isinstance(value, str):
    return _split_list(value)
  return [str(x) for x in value or ()]


def _builtin_records(policy: Policy, config: ml_collections.ConfigDict,
                     task_list: Sequence[Task], directory: str,
                     rc: RolloutConfig | None, samples: int
                     ) -> list[records_lib.EpisodeRecord]:
  """`samples` recorded episodes per task (resumable, `directory`); `rc` the
  model's decoding (None: scripted or the config's own)."""
  max_turns = config.rollout.max_turns
  store = episodes.EpisodeStore(directory, _signature(
      policy, config, "builtin", split=config.split, samples=samples,
      **({"sampled": dataclasses.asdict(rc)} if rc is not None else {})))

  def run_chunk(index):
    chunk = [task_list[i] for i in index]
    if policy.scripted:
      recs = builtin.run_scripted(scripted.POLICIES[policy.scripted](), chunk,
                                  max_turns, policy.name)
      ends = [None] * len(recs)
    else:
      out = rollout(ModelPolicy(policy.model, policy.tokenizer, policy.name),
                    chunk, policy.tokenizer, rc or decoding_config(config))
      recs = [e.record for e in out.episodes]
      ends = [e.end_reason for e in out.episodes]
    # Rollout episodes are task-major: the k samples of a task in a row.
    # One record per task: the episode itself (k = 1, the original format)
    # or its k samples.
    played = [_episode_record(r.task.to_dict(), r.z, r.details, r.turns,
                              end_reason=e) for r, e in zip(recs, ends)]
    if samples == 1:
      return played
    return [{"task": played[n * samples]["task"],
             "samples": [{k: v for k, v in p.items() if k != "task"}
                         for p in played[n * samples:(n + 1) * samples]]}
            for n in range(len(chunk))]

  records = run_chunks(store, [t.task_id for t in task_list], run_chunk,
                       batch=config.batch, progress=_progress(config),
                       desc="builtin" if samples == 1 else "builtin sampled")
  loaded = []
  for r in records:
    task = Task.from_dict(r["task"])
    for e in (r.get("samples") or [r]):
      loaded.append(records_lib.EpisodeRecord(
          task, np.asarray(e["z"], np.float32), e["details"],
          episodes.turns_from_json(e["turns"]), policy.name))
  return loaded


def claim_rollout_config(config: ml_collections.ConfigDict) -> RolloutConfig:
  """The decoding of the sampled (claim) evaluation: `claim_samples`
  episodes per task with `claim_strategy` at `claim_temperature`."""
  return dataclasses.replace(
      decoding_config(config), group_size=config.claim_samples,
      strategy=config.claim_strategy, temperature=config.claim_temperature)


def run_builtin(policy: Policy, config: ml_collections.ConfigDict,
                directory: str) -> report_lib.Report:
  """The built-in suites' split: harmful compliance, ASR, utility, ...

  The report (greedy, or the config's decoding) carries beside it
  `baselines` (each scripted floor of `config.baselines` on the same
  tasks) and, for a model with `claim_samples > 0`, `sampled`: k episodes
  per task at the claim temperature (recorded under `directory/sampled`),
  clustered over tasks.
  """
  task_list = builtin_tasks(config)
  kwargs = _report_kwargs(config)
  meta = {"split": config.split, **policy.meta(),
          "max_tasks_per_kind": config.max_tasks,
          "decoding": ("scripted" if policy.scripted
                       else config.rollout.strategy)}
  rep = heldout.summarize(
      _builtin_records(policy, config, task_list, directory, None, 1),
      task_list, policy.name, meta=meta, **kwargs)
  k = config.get("claim_samples", 0)
  if k and not policy.scripted:
    rc = claim_rollout_config(config)
    sampled = _builtin_records(policy, config, task_list,
                               os.path.join(directory, "sampled"), rc, k)
    rep["sampled"] = heldout.summarize(
        sampled, task_list, policy.name, meta={
            **meta, "decoding": rc.strategy, "temperature": rc.temperature},
        **kwargs)
  baselines = builtin.baseline_reports(
      task_list, _names(config.get("baselines", ())),
      config.rollout.max_turns, skip=policy.scripted or "", **kwargs)
  if baselines:
    rep["baselines"] = baselines
  return rep


# -------------------------------------------------------------- agentdojo --


def agentdojo_specs(config: ml_collections.ConfigDict
                    ) -> list[tuple[str, str, str | None, str | None]]:
  """(suite, user task, injection task, attack) of every episode: benign
  ones (if `benign`), then each attack's pairs, per suite, `max_tasks` per
  stratum."""
  from mosaic_jax.envs import agentdojo as ad
  version = config.version
  suites = _split_list(config.suites) or ad.list_suites(version)
  users, injections = (_split_list(config.user_tasks),
                       _split_list(config.injection_tasks))
  attacks = _split_list(config.attack)
  _check_names("suites", suites, ad.list_suites(version))
  specs = []
  for suite in suites:
    known_users = ad.list_user_tasks(suite, version)
    _check_names("user_tasks", users, known_users, suite)
    if attacks:
      _check_names("injection_tasks", injections,
                   ad.list_injection_tasks(suite, version), suite)
    user_ids = users or known_users
    if config.benign:
      specs += [(suite, u, None, None)
                for u in _cap(user_ids, config.max_tasks)]
    for attack in attacks:
      pairs = [(u, i) for u in user_ids
               for i in injections or ad.list_injection_tasks(suite, version)]
      specs += [(suite, u, i, attack)
                for u, i in _cap(pairs, config.max_tasks)]
  return specs


def _check_names(field: str, names: Sequence[str], valid: Sequence[str],
                 suite: str = "") -> None:
  """One-line `ConfigError` for names of `--config.<field>` not in `valid`
  (AgentDojo's ids differ per suite: slack has no injection_task_0)."""
  unknown = [n for n in names if n not in valid]
  if unknown:
    where = f" in AgentDojo suite {suite!r}" if suite else " in AgentDojo"
    raise validate.ConfigError(
        f"--config.{field}: {', '.join(map(repr, unknown))} not found{where}; "
        f"valid: {', '.join(valid)}")


def agentdojo_task_id(spec: tuple[str, str, str | None, str | None],
                      version: str) -> str:
  """The `AgentDojoTask.task_id` `make_task` gives `spec` (checked when the
  task is built), known without running the attack."""
  suite, user, injection, attack = spec
  task_id = f"agentdojo/{version}/{suite}/{user}"
  return task_id if injection is None else f"{task_id}/{attack}/{injection}"


def _agentdojo_agent(name: str) -> Any:
  from mosaic_jax.envs import agentdojo as ad
  if name in ("expert", "follow_injection"):
    return ad.GroundTruthPolicy(follow_injection=name == "follow_injection")
  if name in _TASK_AGNOSTIC:
    return scripted.POLICIES[name]()
  raise ValueError(f"scripted policy {name!r} needs a built-in task's "
                   "solution; on AgentDojo use expert, follow_injection or "
                   f"{', '.join(_TASK_AGNOSTIC)}")


def run_agentdojo(policy: Policy, config: ml_collections.ConfigDict,
                  directory: str) -> report_lib.Report:
  """AgentDojo suites: benign utility, utility under attack, targeted ASR."""
  from mosaic_jax.envs import agentdojo as ad
  agent = _agentdojo_agent(policy.scripted) if policy.scripted else None
  specs = agentdojo_specs(config)
  keys = [agentdojo_task_id(s, config.version) for s in specs]
  max_turns = config.rollout.max_turns
  store = episodes.EpisodeStore(directory, _signature(
      policy, config, "agentdojo", suites=config.suites, attack=config.attack,
      benign=config.benign, version=config.version,
      user_tasks=config.user_tasks, injection_tasks=config.injection_tasks))

  def make(i):
    # Built per chunk: an injected task runs its attack, which is not free,
    # and a resumed run skips the tasks already recorded.
    suite, user, injection, attack = specs[i]
    task = ad.make_task(suite, user, injection, attack=attack or
                        ad.DEFAULT_ATTACK, version=config.version)
    if task.task_id != keys[i]:
      raise RuntimeError(f"envs.agentdojo names the task {task.task_id!r}, "
                         f"not {keys[i]!r}: update agentdojo_task_id")
    return task

  def run_chunk(index):
    chunk = [make(i) for i in index]
    if agent is not None:
      out = []
      for task in chunk:
        env = ad.AgentDojoEnvironment(task)
        turns = [t for t, _ in scripted.run_episode(env, agent, max_turns)]
        verdict = ad.verify(env, turns, max_turns)
        out.append(_episode_record(task.to_dict(), verdict.z, verdict.details,
                                   turns))
      return out
    result = _model_rollout(
        policy, config, chunk, make_env=ad.AgentDojoEnvironment,
        verify=lambda task, env, turns, limit: ad.verify(env, turns, limit))
    return [_episode_record(e.record.task.to_dict(), e.record.z,
                            e.record.details, e.record.turns,
                            end_reason=e.end_reason) for e in result.episodes]

  records = run_chunks(store, keys, run_chunk, batch=config.batch,
                       progress=_progress(config), desc="agentdojo")
  return agentdojo_eval.agentdojo_report(
      records, policy.name, meta={"policy": policy.source,
                                  "max_tasks_per_stratum": config.max_tasks,
                                  "max_turns": max_turns},
      **_report_kwargs(config))


# -------------------------------------------------------------- agentharm --


class _RecordedJudge:
  """Replays the refusal verdicts recorded with the episodes.

  The judge runs once per episode, when the episode is recorded (an LLM
  judge is expensive); the report reads the verdicts back, keyed by the
  turns' content, under the judge's own name.
  """

  def __init__(self, name: str):
    self.__name__ = name
    self.verdicts: dict[str, bool] = {}

  @staticmethod
  def key(turns: Sequence[Any]) -> str:
    return json.dumps(episodes.turns_to_json(turns), sort_keys=True)

  def __call__(self, turns: Sequence[Any]) -> bool:
    return self.verdicts[self.key(turns)]


def refusal_judge(config: ml_collections.ConfigDict, tokenizer: Any = None
                  ) -> agentharm.RefusalJudge:
  """`detector` (deterministic), or a model dir as an LLM judge."""
  if config.judge == "detector":
    return agentharm.detect_refusal
  path = os.path.abspath(config.judge)
  model = convert.load_model(path, preset=config.model_preset)
  tokenizer = load_tokenizer(path, config.tokenizer)
  return agentharm.ModelRefusalJudge(text_policy(model, tokenizer, config),
                                     f"llm:{path}")


def _judge_batch(judge: agentharm.RefusalJudge,
                 turn_lists: Sequence[Sequence[Any]]) -> list[bool]:
  if isinstance(judge, agentharm.ModelRefusalJudge):
    return judge.judge_batch(turn_lists)
  return [bool(judge(t)) for t in turn_lists]


def _agentharm_verify(task: Any, env: agentharm.AgentHarmEnv, turns: Any,
                      max_turns: int | None) -> Verdict:
  # The behaviour's grading reads the stubs' call log, which the rollout
  # engine does not return: it travels in the verdict's details.
  del task
  verdict = verify(env.task, env, turns, max_turns)
  return Verdict(verdict.z, {**verdict.details,
                             "log": list(env.state["log"])})


def agentharm_behaviors(config: ml_collections.ConfigDict
                        ) -> list[agentharm_files.Behavior]:
  dcfg = _data_config(config)
  behaviors = []
  for kind in _split_list(config.agentharm_configs):
    name = f"agentharm/{kind}"
    data_lib.prepare(dcfg, [name])
    behaviors += _cap([b for batch in data_lib.benchmark_pipeline(
        dcfg, name, config.agentharm_split, process_index=0,
        process_count=1) for b in batch], config.max_tasks)
  return behaviors


def run_agentharm(policy: Policy, config: ml_collections.ConfigDict,
                  directory: str, judge: agentharm.RefusalJudge
                  ) -> report_lib.Report:
  """AgentHarm behaviours on recording stubs: harm score and harmful
  compliance, benign score and over-refusal (`agentharm.episode_metrics`)."""
  behaviors = agentharm_behaviors(config)
  max_turns = config.rollout.max_turns
  judge_name = getattr(judge, "__name__", type(judge).__name__)
  store = episodes.EpisodeStore(directory, _signature(
      policy, config, "agentharm", configs=config.agentharm_configs,
      split=config.agentharm_split, judge=judge_name))

  def run_chunk(index):
    chunk = [behaviors[i] for i in index]
    if policy.scripted:
      played = agentharm.run_policy(
          chunk, scripted.POLICIES[policy.scripted](), max_turns)
      turns = [e.turns for e in played]
      logs = [list(e.log) for e in played]
    else:
      result = _model_rollout(policy, config, chunk,
                              make_env=agentharm.AgentHarmEnv,
                              verify=_agentharm_verify)
      turns = [e.record.turns for e in result.episodes]
      logs = [e.record.details["log"] for e in result.episodes]
    refused = _judge_batch(judge, turns)
    return [_jsonable({"turns": episodes.turns_to_json(t), "log": log,
                       "refused": r})
            for t, log, r in zip(turns, logs, refused)]

  keys = [f"{'harmful' if b.harmful else 'benign'}/{b.split}/{b.id}"
          for b in behaviors]
  records = run_chunks(store, keys, run_chunk, batch=config.batch,
                       progress=_progress(config), desc="agentharm")
  recorded = _RecordedJudge(judge_name)
  played = []
  for behavior, record in zip(behaviors, records):
    turns = episodes.turns_from_json(record["turns"])
    recorded.verdicts[recorded.key(turns)] = record["refused"]
    played.append(agentharm.AgentHarmEpisode(behavior, turns,
                                             tuple(record["log"])))
  rep = agentharm.agentharm_report(played, policy.name, judge=recorded,
                                   **_report_kwargs(config))
  rep["meta"].update(policy=policy.source,
                     max_tasks_per_file=config.max_tasks)
  return rep


# ---------------------------------------------------- atbench, privacylens --


def _benchmark_items(config: ml_collections.ConfigDict, name: str,
                     split: str) -> list[Any]:
  dcfg = _data_config(config)
  data_lib.prepare(dcfg, [name])
  return _cap([x for batch in data_lib.benchmark_pipeline(
      dcfg, name, split, process_index=0, process_count=1) for x in batch],
              config.max_tasks)


def _generated(policy: Policy, config: ml_collections.ConfigDict,
               prompts: Callable[[Any], str], items: Sequence[Any],
               keys: Sequence[str], store: episodes.EpisodeStore,
               desc: str) -> list[str]:
  """One generated reply per item (resumable); the replies, in item order."""
  generator = text_policy(policy.model, policy.tokenizer, config)

  def run_chunk(index):
    outputs = generator.generate_batch(
        [([protocol.user_message(prompts(items[i]))], None) for i in index])
    return [{"output": o} for o in outputs]

  records = run_chunks(store, keys, run_chunk, batch=config.batch,
                       progress=_progress(config), desc=desc)
  return [r["output"] for r in records]


def _needs_model(policy: Policy, benchmark: str) -> None:
  if policy.scripted:
    raise ValueError(f"{benchmark} needs generated text; scripted policy "
                     f"{policy.scripted!r} cannot play it")


def run_atbench(policy: Policy, config: ml_collections.ConfigDict,
                directory: str) -> report_lib.Report:
  """The policy judges ATBench trajectories: accuracy, precision, recall, F1."""
  _needs_model(policy, "atbench")
  name = f"atbench/{config.atbench_config}"
  trajectories = _benchmark_items(config, name, "test")
  store = episodes.EpisodeStore(directory, _signature(
      policy, config, "atbench", atbench_config=config.atbench_config,
      fine_grained=config.fine_grained))
  outputs = _generated(
      policy, config, lambda t: atbench.judge_prompt(t, config.fine_grained),
      trajectories, [t.id for t in trajectories], store, "atbench")
  results = [atbench.run_judge([t], lambda _, o=o: o, config.fine_grained)[0]
             for t, o in zip(trajectories, outputs)]
  rep = atbench.atbench_report(results, policy.name, **_report_kwargs(config))
  rep["meta"].update(policy=policy.source, max_tasks=config.max_tasks)
  return rep


def run_privacylens(policy: Policy, config: ml_collections.ConfigDict,
                    directory: str) -> report_lib.Report:
  """The policy writes PrivacyLens final actions: leak rates."""
  _needs_model(policy, "privacylens")
  items = _benchmark_items(config, "privacylens", "test")
  store = episodes.EpisodeStore(directory, _signature(policy, config,
                                                      "privacylens"))
  outputs = _generated(policy, config, privacylens.final_action_prompt, items,
                       [i.name for i in items], store, "privacylens")
  rep = privacylens.privacylens_report(
      [privacylens.Result(i, o) for i, o in zip(items, outputs)], policy.name,
      **_report_kwargs(config))
  rep["meta"].update(policy=policy.source, max_tasks=config.max_tasks)
  return rep


# ------------------------------------------------------------------ plots --

# Benchmark -> (group, safety metric, utility metric, lower_is_safer) of its
# safety-utility plane.
_PLANES = {
    "builtin": ("all", "security", "utility", False),
    "agentdojo": ("all", "targeted_asr", "utility_under_attack", True),
    "agentharm": ("all", "harm_score", "benign_score", True),
}
# Benchmark -> (metric, group prefix) candidates for the per-category bars.
_BARS = {
    "builtin": [("security", "suite="), ("utility", "suite=")],
    "agentdojo": [("targeted_asr", "suite="), ("benign_utility", "suite=")],
    "agentharm": [("harm_score", "harmful:category="),
                  ("over_refusal", "benign:category=")],
    "atbench": [("accuracy", "risk_source=")],
    "privacylens": [("leak_rate", "source=")],
}


def plane_view(rep: report_lib.Report) -> report_lib.Report | None:
  """`rep` with its safety and utility metrics both in group `all`, or None
  when the run has no such plane (e.g. AgentDojo without an attack, or
  AgentHarm without benign behaviours).
  """
  benchmark = rep["benchmark"]
  if benchmark not in _PLANES:
    return None
  group, safety, utility, _ = _PLANES[benchmark]
  metrics = rep["groups"].get(group, {})
  if metrics.get(safety) is None or metrics.get(utility) is None:
    return None
  return rep


def plot_plane(reports: Sequence[report_lib.Report], path: str) -> bool:
  """The safety-utility scatter (with Pareto front) of runs of one
  benchmark; False (nothing drawn) when a run has no plane."""
  views = [plane_view(r) for r in reports]
  if any(v is None for v in views):
    return False
  group, safety, utility, lower = _PLANES[reports[0]["benchmark"]]
  report_lib.plot_safety_utility(views, path, safety=safety, utility=utility,
                                 group=group, lower_is_safer=lower)
  return True


def write_outputs(rep: report_lib.Report, directory: str) -> list[str]:
  """report.json, report.md and the plots; the files written."""
  written = [os.path.join(directory, REPORT_JSON),
             os.path.join(directory, REPORT_MD)]
  report_lib.save_json(rep, written[0])
  with open(written[1], "w", encoding="utf-8") as f:
    f.write(report_lib.to_markdown(rep))
  plane = os.path.join(directory, "safety_utility.png")
  if plot_plane([rep], plane):
    written.append(plane)
  for metric, prefix in _BARS.get(rep["benchmark"], []):
    if any(g.startswith(prefix) and m.get(metric) is not None
           for g, m in rep["groups"].items()):
      path = os.path.join(directory,
                          f"{metric}_by_{prefix.split(':')[-1].rstrip('=')}"
                          ".png")
      report_lib.plot_group_bars(rep, metric, path, prefix=prefix)
      written.append(path)
  return written


# -------------------------------------------------------------------- run --


def run(config: ml_collections.ConfigDict,
        policy: Policy | None = None) -> dict[str, report_lib.Report]:
  """Evaluates the config's policy on its benchmarks; writes every output.

  Args:
    config: an eval config (`configs/eval/*.py`).
    policy: an already resolved policy (default: `resolve_policy(config)`).

  Returns:
    benchmark -> report, for the benchmarks that ran.

  Raises:
    ValueError: unknown benchmark, or no benchmark the policy can play.
  """
  names = _split_list(config.benchmarks)
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown or not names:
    raise ValueError(f"benchmarks {config.benchmarks!r}: expected a comma "
                     f"list of {', '.join(BENCHMARKS)}")
  if "builtin" in names:
    try:
      tasks_lib.check_split(config.split)
    except ValueError as e:
      raise validate.ConfigError(f"--config.split: {e}") from None
  policy = policy or resolve_policy(config)
  skipped = [n for n in names
             if policy.scripted and n not in SCRIPTED_BENCHMARKS]
  if len(skipped) == len(names):
    raise ValueError(f"scripted policy {policy.scripted!r} can play none of "
                     f"{', '.join(names)} (they need generated text)")
  runners = {"builtin": run_builtin, "agentdojo": run_agentdojo,
             "atbench": run_atbench, "privacylens": run_privacylens}
  reports, sections = {}, [f"# Evaluation of {policy.name}", "",
                           f"policy: {policy.source}", ""]
  for name in names:
    directory = os.path.join(config.output_dir, name)
    if name in skipped:
      sections += [f"## {name}: skipped (needs generated text; "
                   f"{policy.scripted!r} is scripted)", ""]
      continue
    if name == "agentharm":
      judge = refusal_judge(config)
      rep = run_agentharm(policy, config, directory, judge)
    else:
      rep = runners[name](policy, config, directory)
    write_outputs(rep, directory)
    reports[name] = rep
    sections.append(report_lib.to_markdown(rep))
  with open(os.path.join(config.output_dir, SUMMARY_MD), "w",
            encoding="utf-8") as f:
    f.write("\n".join(sections))
  return reports


# ---------------------------------------------------------------- compare --


TRAINING_KIND = "training"
# What of a training report `--compare` reads when a path names no part.
_TRAINING_PARTS = ("after", "before")


def report_key(rep: report_lib.Report) -> str:
  """How `compare_runs` pairs reports: `builtin/<split>`, else the
  benchmark."""
  split = rep.get("meta", {}).get("split")
  if rep["benchmark"] == "builtin" and split:
    return f"builtin/{split}"
  return rep["benchmark"]


def _split_part(path: str) -> tuple[str, str | None]:
  """`PATH` or `PATH:before` / `PATH:after` (a training report's part)."""
  head, sep, tail = path.rpartition(":")
  if sep and tail in _TRAINING_PARTS and head:
    return head, tail
  return path, None


def strip_part(path: str) -> str:
  """`path` without a `:before` / `:after` suffix."""
  return _split_part(path)[0]


def training_reports(data: Mapping[str, Any], part: str = "after"
                     ) -> dict[str, report_lib.Report]:
  """key -> report of one part (`before` or `after`) of a training
  report.json (`kind == "training"`)."""
  if part not in data:
    raise ValueError(f"training report has no {part!r} (it has "
                     f"{', '.join(k for k in _TRAINING_PARTS if k in data)})")
  return {report_key(r): r for r in data[part].values()}


def load_reports(path: str) -> dict[str, report_lib.Report]:
  """key (`report_key`) -> report from a report.json (an evaluation's or a
  training run's), a benchmark dir, an evaluation run dir or a training
  workdir. A training report gives its `after` reports, or `before` with a
  `:before` suffix (`PATH:before`)."""
  path, part = _split_part(path)
  if os.path.isfile(path):
    data = report_lib.load_json(path)
    if data.get("kind") == TRAINING_KIND:
      return training_reports(data, part or "after")
    if part:
      raise ValueError(f"{path}: ':{part}' names a part of a training "
                       "report; this is an evaluation report")
    return {report_key(data): data}
  suffix = f":{part}" if part else ""
  if os.path.isfile(os.path.join(path, REPORT_JSON)):
    return load_reports(os.path.join(path, REPORT_JSON) + suffix)
  found = {}
  for name in BENCHMARKS:
    candidate = os.path.join(path, name, REPORT_JSON)
    if os.path.isfile(candidate):
      found.update(load_reports(candidate))
  if not found:
    raise FileNotFoundError(f"{path}: no {REPORT_JSON} (neither a report, a "
                            "benchmark directory, a run directory nor a "
                            "training workdir)")
  return found


def compare_paths(paths: Sequence[str]) -> tuple[str, str]:
  """The two runs of `--compare`; one training workdir or report alone
  compares its `before` with its `after` (the same tasks, paired).

  Raises:
    ValueError: not two paths (or one).
  """
  if len(paths) == 1 and _split_part(paths[0])[1] is None:
    return paths[0] + ":before", paths[0] + ":after"
  if len(paths) != 2:
    raise ValueError(f"--compare takes two runs (or one training run: its "
                     f"before and after), got {len(paths)}: {list(paths)}")
  return paths[0], paths[1]


def compare_runs(path_a: str, path_b: str, out_dir: str, *,
                 n_bootstrap: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> str:
  """Markdown of two runs side by side with deltas (b − a), per report key
  both have (`report_key`: each built-in split, each other benchmark),
  written to `out_dir/compare.md` with each key's safety-utility scatter
  of the two. Deltas are paired over the shared tasks where both reports
  carry per-task tables (`report.compare`).

  Raises:
    ValueError: the runs share no report key.
  """
  a, b = load_reports(path_a), load_reports(path_b)
  common = [k for k in a if k in b]
  if not common:
    raise ValueError(f"{path_a} ({', '.join(a)}) and {path_b} "
                     f"({', '.join(b)}) share no benchmark or split")
  os.makedirs(out_dir, exist_ok=True)
  sections = []
  for key in common:
    sections.append(f"# {key}\n\n" + report_lib.compare(
        a[key], b[key], n=n_bootstrap, seed=seed, confidence=confidence))
    plot_plane([a[key], b[key]], os.path.join(
        out_dir, f"{key.replace('/', '_')}_safety_utility.png"))
  text = "\n".join(sections)
  with open(os.path.join(out_dir, "compare.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text
