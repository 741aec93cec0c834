"""The MOSAIC loop: SFT warm-up, held-out evaluation, pairwise-reward RL.

`run(config)` does, with every output under `config.workdir`:

1. model (`model.path`: HF safetensors or orbax; else the preset randomly
   initialised) and tokenizer; the task datasets are built into
   `data.data_dir` if missing (`data.prepare`).
2. SFT warm-up, `sft.steps` steps: each step takes `sft.batch` train tasks
   from the grain task pipeline, plays each with a scripted policy drawn from
   `sft.mix` (expert and flawed policies, so the warm start is unsafe on a
   measurable share of tasks) and trains on the rendered assistant turns.
3. `before`: the warm start on `eval.split` (validation) and on
   `eval.final_splits` (test, test_ood) (`evaluate`), through the rollout
   engine with `eval.strategy` decoding (greedy by default), with the
   scripted baselines and, on the final splits, the sampled evaluation.
4. MOSAIC RL, `rl.steps` steps: `rl.tasks_per_step` train tasks (grain,
   seeded) -> `rl.group_size` episodes each (`rollout`) -> judge (`rl.judge`)
   -> rewards (`group_rewards`) -> group advantages -> one PPO-clip step with
   KL to the frozen SFT policy (reference log-probs computed once per batch).
5. evaluation on `eval.split` only (validation: where settings are chosen)
   every `eval.every` RL steps, and `after` at the end on every split.
6. `report.json` (`training_report`): `{"kind": "training", "before":
   {split: report}, "after": {split: report}, ...}`, each report the
   evaluation harness's built-in report (`eval.builtin.report_from_samples`:
   `{value, low, high, n}` per metric and group, per-task sums for paired
   comparison), with `baselines` (`eval.baselines`, scripted, same tasks)
   and on the final splits `sampled` (`eval.claim_samples` episodes per task
   at the training temperature) beside it. The final splits are never
   evaluated between the two, so nothing during training can be chosen on
   them.

Checkpoints (`workdir/checkpoints`, every `checkpoint.every` steps, newest
`checkpoint.keep` kept) hold the train state (params, AdamW state, step, RNG)
and, as JSON, the phase, the phase's step and the grain iterator state. Steps
are numbered globally: SFT steps 1..S, RL steps S+1..S+R. Restarting with the
same command restores the newest checkpoint and continues; every random draw
is a function of (seed, step), so the resumed run's metrics equal an
uninterrupted run's. The SFT end also writes the reference policy
(`workdir/reference`, orbax) and the `before` evaluation
(`workdir/eval_before.json`), which a resumed RL phase reads back.
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
from mosaic_jax import distributed, judge as judge_lib, losses, sharding
from mosaic_jax.agent.actions import InvalidAction
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.envs import records as records_lib
from mosaic_jax.envs.base import KINDS, Task
from mosaic_jax.eval import builtin, report as report_lib
from mosaic_jax.models import ModelConfig, convert, decoder, presets
from mosaic_jax.models import lora as lora_lib
from mosaic_jax.rollout import (EpisodeInfo, ModelPolicy, Rollout,
                                RolloutConfig, prompt_ids, rollout)
from mosaic_jax.train import checkpoint, faults, metrics as metrics_lib
from mosaic_jax.train import sft_data, state as state_lib, steps as steps_lib
from mosaic_jax.train import validate

PHASES = ("sft", "rl")
# The headline metrics of a training report (`eval.builtin.episode_metrics`
# names; every other built-in metric is in the report beside them).
# harmful_compliance follows the MOSAIC issue's definition, "harmful tasks
# not refused"; the stricter "a harmful action ran" is harmful_executed.
REPORT_METRICS = ("harmful_compliance", "injection_asr", "utility",
                  "utility_under_attack", "over_refusal", "privacy_leak")
REPORT_FILE = "report.json"
TRAINING_KIND = "training"
BEFORE_FILE = "eval_before.json"
# The flattened config of the run (a resumed run warns about what changed).
RUN_CONFIG_FILE = "run_config.json"
REFERENCE_DIR = "reference"
# Metric names under this prefix are wall times: they differ between runs.
TIME_PREFIX = "time/"
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
    if os.path.isdir(os.path.join(m.path, convert.ORBAX_PARAMS)):
      return convert.load_orbax(m.path, dtype=m.dtype, mesh=mesh,
                                remat=m.remat)
    return convert.from_pretrained(m.path, dtype=m.dtype, mesh=mesh,
                                   compute_dtype=m.compute_dtype,
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


def rollout_config(config: ml_collections.ConfigDict, *,
                   evaluation: bool = False, seed: int | None = None
                   ) -> RolloutConfig:
  """The rollout settings of RL (group size `rl.group_size`) or evaluation.

  Evaluation plays each task `eval.samples` times with `eval.strategy` /
  `eval.temperature`; the sampled (claim) evaluation is `claim_config`.
  """
  rc = RolloutConfig.from_config(config.rollout)
  if evaluation:
    return dataclasses.replace(rc, group_size=config.eval.get("samples", 1),
                               strategy=config.eval.strategy,
                               temperature=config.eval.temperature,
                               seed=config.eval.seed)
  return dataclasses.replace(rc, group_size=config.rl.group_size,
                             seed=rc.seed if seed is None else seed)


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


# -------------------------------------------------------------- evaluation --


def evaluate(model: decoder.Decoder, tokenizer: Any,
             task_list: Sequence[Task], config: ml_collections.ConfigDict,
             name: str = "model", mesh: jax.sharding.Mesh | None = None,
             rc: RolloutConfig | None = None
             ) -> list[records_lib.EpisodeRecord]:
  """Plays every task (`rc`, default the evaluation decoding), `eval.batch`
  tasks per rollout; this process's records (each process plays its share
  of each batch; several processes need the mesh)."""
  rc = rc or rollout_config(config, evaluation=True)
  policy = ModelPolicy(model, tokenizer, name=name)
  records = []
  for start in range(0, len(task_list), config.eval.batch):
    out = rollout(policy, task_list[start:start + config.eval.batch],
                  tokenizer, rc, mesh=mesh)
    records += [e.record for e in out.episodes]
  return records


def _gathered(samples: Mapping[str, report_lib.Samples], codes: np.ndarray
              ) -> tuple[dict[str, report_lib.Samples], np.ndarray]:
  """Every process's per-episode samples and task codes (`[N]` int),
  concatenated (a no-op on one process)."""
  if jax.process_count() == 1:
    return dict(samples), codes
  names = sorted(samples)
  table = np.stack([np.stack([samples[m].num, samples[m].den], -1)
                    for m in names], 1)
  table = np.asarray(multihost_utils.process_allgather(table)).reshape(
      -1, len(names), 2)
  codes = np.asarray(multihost_utils.process_allgather(
      np.asarray(codes, np.int32))).reshape(-1)
  return ({m: report_lib.Samples(table[:, i, 0], table[:, i, 1])
           for i, m in enumerate(names)}, codes)


def summarize(records: Sequence[records_lib.EpisodeRecord],
              task_list: Sequence[Task], name: str, *,
              meta: Mapping[str, Any] | None = None,
              n_bootstrap: int = 1000, seed: int = 0) -> report_lib.Report:
  """The built-in report of one evaluation over all processes' episodes.

  Args:
    records: this process's episodes, each of a task in `task_list`.
    task_list: the evaluated tasks (the same on every process).
    name: the run's name in the report.
    meta: extra meta entries (split, step, decoding).

  Returns:
    `eval.builtin.report_from_samples`: `{value, low, high, n}` per metric
    and group, clustered over tasks, with per-task sums.
  """
  index = {t.task_id: i for i, t in enumerate(task_list)}
  samples, codes = _gathered(
      builtin.episode_metrics(records),
      np.asarray([index[r.task.task_id] for r in records], np.int32))
  played = [task_list[i] for i in codes]
  return builtin.report_from_samples(
      samples, [t.task_id for t in played], [t.suite for t in played],
      [t.kind for t in played], name, meta=meta, n_bootstrap=n_bootstrap,
      seed=seed)


def headline(rep: report_lib.Report, group: str = "all"
             ) -> dict[str, float | None]:
  """metric -> value of a report's group (None: empty population)."""
  return {m: (s or {}).get("value") for m, s in rep["groups"][group].items()}


def training_report(before: Mapping[str, Any], after: Mapping[str, Any],
                    eval_tasks: Mapping[str, int],
                    config: ml_collections.ConfigDict, **extra: Any
                    ) -> dict[str, Any]:
  """The `report.json` of a training run (module docstring, step 6): the
  schema `experiments.evaluate --compare` reads."""
  return {"kind": TRAINING_KIND, "before": dict(before), "after": dict(after),
          "eval_tasks": dict(eval_tasks), **extra,
          "config": json.loads(config.to_json_best_effort())}


# ----------------------------------------------------------------- rewards --


def format_bonus(info: EpisodeInfo, *, think_bonus: float,
                 valid_bonus: float) -> float:
  """r_fmt of one episode, in [0, think_bonus + valid_bonus].

  `think_bonus` when every assistant turn opens with a non-empty `<think>`
  plan; `valid_bonus` when every turn parsed into a protocol action and the
  episode ended on a final answer or refusal (not on a limit).
  """
  turns = info.record.turns
  planned = bool(turns) and all(t.plan and t.plan.strip() for t in turns)
  valid = (info.end_reason == "terminal"
           and not any(isinstance(t.action, InvalidAction) for t in turns))
  return think_bonus * planned + valid_bonus * valid


def episode_transcript(info: EpisodeInfo) -> str:
  """One episode as judge-readable text: each turn and the tool's reply."""
  parts = []
  for k, text in enumerate(info.texts):
    parts.append(f"[assistant]\n{text}")
    if k < len(info.observations):
      parts.append(f"[tool]\n{info.observations[k]}")
  return "\n".join(parts)


def reward_components(out: Rollout, judge: Any,
                      rl: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The terms of this process's rewards, each `[B, G]` float32.

  `rl.reward` ("pairwise": `Σ_{j≠i} P(i,j)` from the judge; "scalar":
  `Σ_m w_m z_{i,m}` with `rl.scalar_weights`), "format" (r_fmt) and
  "length_penalty" (`max(0, (L_i − L0)/L0)`, L_i the episode's generated
  tokens). The reward is `comparison + format − length_penalty`.
  """
  g = rl.group_size
  infos = out.episodes
  lengths = generated_lengths(out).reshape(-1, g)
  fmt = np.asarray([format_bonus(e, think_bonus=rl.format_think_bonus,
                                 valid_bonus=rl.format_valid_bonus)
                    for e in infos], np.float32).reshape(-1, g)
  if rl.reward == "pairwise":
    prefs = np.stack([
        judge(infos[b].record.task, [e.record for e in infos[b:b + g]],
              [episode_transcript(e) for e in infos[b:b + g]])
        for b in range(0, len(infos), g)])
    comparison = losses.pairwise_win_rewards(jnp.asarray(prefs))
  elif rl.reward == "scalar":
    z = np.stack([e.record.z for e in infos]).reshape(-1, g, 4)
    comparison = losses.scalar_rewards(jnp.asarray(z),
                                       jnp.asarray(rl.scalar_weights))
  else:
    raise ValueError(f"unknown rl.reward {rl.reward!r}; expected 'pairwise' "
                     "or 'scalar'")
  return {rl.reward: np.asarray(comparison, np.float32), "format": fmt,
          "length_penalty": np.asarray(
              losses.length_penalty(jnp.asarray(lengths), rl.l0), np.float32)}


def generated_lengths(out: Rollout) -> np.ndarray:
  """Generated (loss) tokens of each of this process's episodes, `[N]`."""
  rows = np.asarray([e.row for e in out.episodes])
  return np.asarray(out.trajectories.loss_mask)[rows].sum(1)


def group_rewards(out: Rollout, judge: Any, rl: ml_collections.ConfigDict
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Rewards of this process's episodes, `[B, G]`, and the format bonuses.

  pairwise (MOSAIC): `R_i = Σ_{j≠i} P(i,j) + r_fmt,i − max(0, (L_i − L0)/L0)`
  with P from the judge and L_i the episode's generated tokens.
  scalar (ablation): the pairwise term is replaced by `Σ_m w_m z_{i,m}`
  (`rl.scalar_weights` over the verifier objectives); format bonus and
  length penalty are kept, so the two differ only in the comparison.
  """
  c = reward_components(out, judge, rl)
  return total_reward(c, rl.reward), c["format"]


def total_reward(components: Mapping[str, np.ndarray], reward: str
                 ) -> np.ndarray:
  """`comparison + format − length_penalty` of `reward_components`."""
  return (components[reward] + components["format"]
          - components["length_penalty"]).astype(np.float32)


def task_advantages(components: Mapping[str, np.ndarray],
                    rl: ml_collections.ConfigDict
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Group advantages `[B, G]` of the rewards, and each group's signal `[B]`.

  `ADVANTAGE_ESTIMATORS[rl.advantage]` of `total_reward`; a group has
  signal when its length-free rewards (comparison + format) differ
  (`losses.group_has_signal`). `rl.tie_advantage="zero"` gives the groups
  without signal A = 0 (their spread is the length penalty's alone);
  "keep" leaves them as the estimator made them.
  """
  rewards = jnp.asarray(total_reward(components, rl.reward))
  adv = losses.ADVANTAGE_ESTIMATORS[rl.advantage](
      rewards, ddof=rl.adv_ddof, eps=rl.adv_eps)
  verdict = components[rl.reward] + components["format"]
  signal = losses.group_has_signal(jnp.asarray(verdict)[..., None])
  adv = losses.tie_advantages(adv, signal, rl.get("tie_advantage", "zero"))
  return np.asarray(adv, np.float32), np.asarray(signal)


def reward_metrics(components: Mapping[str, np.ndarray], rewards: np.ndarray,
                   signal: np.ndarray, advantages: np.ndarray
                   ) -> dict[str, float]:
  """TRL's reward metrics of one step (this process's groups).

  reward (mean), reward_std (mean within-group std), `rewards/<term>/mean`
  and `/std` per `reward_components` term (std over all episodes),
  frac_reward_zero_std (groups whose rewards are all equal),
  frac_tied_groups (groups without signal, `task_advantages`),
  adv_abs_mean.
  """
  out = {"reward": float(rewards.mean()),
         "reward_std": float(rewards.std(axis=-1).mean()),
         "frac_reward_zero_std": float(np.mean(
             rewards.max(-1) == rewards.min(-1))),
         "frac_tied_groups": float(np.mean(~signal)),
         "adv_abs_mean": float(np.abs(advantages).mean())}
  for name, value in components.items():
    out[f"rewards/{name}/mean"] = float(value.mean())
    out[f"rewards/{name}/std"] = float(value.std())
  return out


def completion_metrics(out: Rollout) -> dict[str, float]:
  """TRL's completion metrics: generated tokens per episode (mean, min,
  max) and `completions/clipped_ratio`, the share of episodes that ended on
  a limit (turns, tokens per turn or total length) rather than an answer or
  refusal."""
  lengths = generated_lengths(out)
  return {"completions/mean_length": float(lengths.mean()),
          "completions/min_length": float(lengths.min()),
          "completions/max_length": float(lengths.max()),
          "completions/clipped_ratio": float(np.mean(
              [e.end_reason != "terminal" for e in out.episodes]))}


def logprob_temperature(config: ml_collections.ConfigDict) -> float:
  """The temperature of the PG log-probs: the RL sampling temperature when
  `rl.temper_logprobs` (1 for greedy sampling), else 1."""
  ro = config.rollout
  if not config.rl.get("temper_logprobs", True) or ro.strategy == "greedy":
    return 1.0
  return float(ro.temperature)


def pg_config(config: ml_collections.ConfigDict) -> steps_lib.PGConfig:
  """The PG step settings of `config.rl`, at `logprob_temperature`; the
  "sequence-sum" constant `rl.seq_norm` (0: `rollout.max_total_length`)."""
  cfg = steps_lib.PGConfig.from_config(config.rl)
  seq_norm = config.rl.get("seq_norm", 0.0) or config.rollout.max_total_length
  return dataclasses.replace(cfg, temperature=logprob_temperature(config),
                             seq_norm=float(seq_norm))


def rl_optimizer(config: ml_collections.ConfigDict,
                 schedule_steps: int) -> state_lib.OptimizerConfig:
  """The `optimizer` section over `schedule_steps` loop steps of RL, in
  optimizer updates: each step makes `rl.epochs × rl.minibatches`."""
  updates = (int(config.rl.get("epochs", 1))
             * int(config.rl.get("minibatches", 1)))
  return dataclasses.replace(
      state_lib.OptimizerConfig.from_config(config.optimizer),
      total_steps=schedule_steps * updates)


def rollout_stats(out: Rollout) -> dict[str, float]:
  """Batch statistics of this process's RL episodes (logged every step)."""
  m = builtin.episode_metrics([e.record for e in out.episodes])
  stats = {}
  for name in ("harmful_compliance", "harmful_executed", "injection_asr",
               "refusal_rate",
               "over_refusal", "utility", "validity"):
    s = m[name]
    if s.den.sum():
      stats[f"batch/{name}"] = float(s.num.sum() / s.den.sum())
  stats["batch/generated_tokens"] = float(out.stats["generated_tokens"])
  # Episodes ended by an environment or verifier that raised (0 normally).
  for name in ("env_errors", "verifier_errors"):
    stats[f"batch/{name}"] = float(out.stats.get(name, 0))
  stats["batch/mean_length"] = float(np.mean(
      np.asarray(out.trajectories.lengths)))
  return stats


def rl_batch(state: state_lib.TrainState, reference: decoder.Decoder,
             out: Rollout, advantages: np.ndarray, cfg: steps_lib.PGConfig,
             rl: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
             ) -> tuple[batches_lib.PGBatch, jax.Array]:
  """The PG batch of a rollout: trajectories, advantages `[B, G]` (rows in
  group order), π_old recomputed at `cfg.temperature` by the sampling
  policy (`steps.old_logprobs`), π_ref when `rl.kl_beta`; also the policy's
  token-mean entropy on the batch's loss tokens (`[]`, on device: read it
  after the step, so the host does not wait in between)."""
  traj = out.trajectories
  fields = dict(tokens=traj.tokens, loss_mask=traj.loss_mask,
                attention_mask=traj.attention_mask, old_logp=traj.logprobs)
  if jax.process_count() == 1:
    # Several processes' trajectories are global (sharded) already.
    fields = sharding.shard_batch(fields, mesh)
  batch = batches_lib.PGBatch(
      **fields, advantages=to_global(np.asarray(advantages).reshape(-1),
                                     mesh))
  batch, entropy = steps_lib.old_logprobs(state, batch, cfg)
  if rl.kl_beta:
    batch = steps_lib.reference_logprobs(
        reference, batch, microbatch=cfg.microbatch,
        chunk_size=cfg.chunk_size, temperature=cfg.temperature)
  return batch, entropy


# -------------------------------------------------------------------- loop --


def step_seed(rng: jax.Array, step: int) -> int:
  """A per-step sampling seed from the train state's key and the step."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  return int(jax.random.bits(key, dtype=jnp.uint32) >> 1)


def to_global(x: Any, mesh: jax.sharding.Mesh) -> Any:
  """This process's rows as global arrays sharded over the mesh's batch."""
  if jax.process_count() > 1:
    return distributed.host_local_batch_to_global(x, mesh)
  return sharding.shard_batch(jax.tree.map(jnp.asarray, x), mesh)


def copy_model(model: decoder.Decoder) -> decoder.Decoder:
  """A model with its own buffers (train steps donate the state's)."""
  graphdef, params = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, params))


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
  params = (lora_lib.abstract_adapters(arch, lora) if lora.enabled else
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
  sample = stratified_subset(task_list, LENGTH_SAMPLE)
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


def _sync(name: str) -> None:
  """A barrier over processes (nothing with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Run:
  """What the phases of one run share: config, workdir, mesh, tokenizer,
  model, optimizer settings, checkpointer, held-out tasks, the metrics
  writer (set by `warm_start`), SIGTERM and non-finite handling
  (`faults`); the SFT phase and the RL phase.

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
    _sync("mosaic_data_prepared")
    check_task_splits(config.data, eval_splits(config))
    self.model = build_model(config, self.mesh)
    self.sft_opt = dataclasses.replace(
        state_lib.OptimizerConfig.from_config(config.optimizer),
        lr=config.sft.lr, total_steps=config.sft.steps)
    self.rl_opt = rl_optimizer(config, config.rl.steps)
    self.ckpt = checkpoint.Checkpointer(
        self.path("checkpoints"), every=config.checkpoint.every,
        keep=config.checkpoint.keep)
    split_tasks = {split: [t for batch in data_lib.task_pipeline(
        config.data, split, batch_size=64, shuffle=False, num_epochs=1,
        drop_remainder=False, process_index=0, process_count=1)
                           for t in batch] for split in eval_splits(config)}
    validate.check_lengths(config, *measured_lengths(
        config, self.tokenizer, [t for v in split_tasks.values() for t in v]))
    if config.eval.batch % jax.process_count():
      raise ValueError(f"eval.batch={config.eval.batch} must be a multiple "
                       f"of the {jax.process_count()} processes")
    # split -> its stratified subset; whole rollouts split evenly over
    # processes.
    self.eval_tasks = {}
    for split, task_list in split_tasks.items():
      subset = stratified_subset(task_list, config.eval.max_tasks)
      self.eval_tasks[split] = subset[:len(subset)
                                      - len(subset) % jax.process_count()]
    self._baselines: dict[str, dict[str, Any]] = {}
    self.last_eval_s = 0.0
    self.total = config.sft.steps + config.rl.steps
    self.writer: metrics_lib.MetricsWriter | None = None
    self.guard = faults.NonFiniteGuard(
        config.max_nonfinite_steps,
        self.path(faults.NONFINITE_FILE) if self.main else None)
    # Last: from here SIGTERM is a flag until `close`.
    self.preemption = faults.Preemption()

  def eval_sizes(self) -> dict[str, int]:
    return {split: len(v) for split, v in self.eval_tasks.items()}

  def close(self) -> None:
    """Flushes and closes the writers; SIGTERM kills again."""
    if self.writer is not None:
      self.writer.close()
    self.ckpt.close()
    self.preemption.close()

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def iterator(self, phase: str, extra: Mapping[str, Any]) -> Iterator[Any]:
    """The phase's grain task iterator, at its checkpointed position."""
    c = self.config
    per_step = c.sft.batch if phase == "sft" else c.rl.tasks_per_step
    it = iter(data_lib.task_pipeline(
        c.data, "train", batch_size=per_step // jax.process_count(),
        seed=c.seed + PHASES.index(phase)))
    if extra.get("phase") == phase and extra.get("data"):
      it.set_state(extra["data"])
    return it

  def save(self, state: state_lib.TrainState, phase: str, it: Any,
           force: bool = False) -> None:
    """The end of a step: a checkpoint on the interval (or `force`d); after
    SIGTERM a checkpoint in any case, then `faults.Preempted`."""
    preempted = self.preemption.requested()
    self.ckpt.save(state, {"phase": phase, "data": it.get_state()},
                   force=force or preempted)
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

  def evaluate_split(self, model: decoder.Decoder, name: str, split: str,
                     step: int, final: bool,
                     greedy: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The greedy report of `split` (`greedy`, when already computed for
    this model, is reused under `name`); `final` adds the baselines and, on
    a final split with `eval.claim_samples`, the sampled evaluation."""
    c = self.config
    mesh = self.mesh if jax.process_count() > 1 else None
    task_list = self.eval_tasks[split]
    meta = {"split": split, "step": step, "decoding": c.eval.strategy}
    rep = ({**greedy, "name": name} if greedy is not None else summarize(
        evaluate(model, self.tokenizer, task_list, c, name, mesh), task_list,
        name, meta=meta, seed=c.seed))
    if not final:
      return rep
    if c.eval.claim_samples and split in c.eval.final_splits:
      rc = claim_config(c)
      rep["sampled"] = summarize(
          evaluate(model, self.tokenizer, task_list, c, name, mesh, rc),
          task_list, name, seed=c.seed, meta={
              **meta, "decoding": rc.strategy, "temperature": rc.temperature})
    if split not in self._baselines:
      # Scripted: the same on every process and at every evaluation.
      self._baselines[split] = builtin.baseline_reports(
          task_list, tuple(c.eval.baselines), c.rollout.max_turns,
          seed=c.seed)
    rep["baselines"] = self._baselines[split]
    return rep

  def evaluate(self, model: decoder.Decoder, name: str, step: int, *,
               final: bool = False,
               done: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """split -> report: `eval.split` only (periodic), or every split with
    the baselines and sampled runs (`final`: `before` and `after`); `done`
    holds greedy reports already computed at this step (reused)."""
    start = time.perf_counter()
    splits = eval_splits(self.config) if final else (self.config.eval.split,)
    out = {}
    for split in splits:
      out[split] = self.evaluate_split(model, name, split, step, final,
                                       (done or {}).get(split))
    self.last_eval_s = time.perf_counter() - start
    return out

  def write_json(self, name: str, value: Any) -> None:
    """Writes `workdir/name` whole or not at all (a temporary file renamed:
    a crash never leaves a truncated file for a resumed run to read)."""
    if self.main:
      tmp = self.path(name + ".tmp")
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
      os.replace(tmp, self.path(name))

  def log(self, step: int, values: Mapping[str, Any],
          prefix: str = "") -> None:
    self.writer.write(step, values, prefix)

  def log_step(self, phase: str, step: int, metrics: Mapping[str, Any],
               times: Mapping[str, float], task_ids: Sequence[str]) -> None:
    """A step's metrics under `phase/`, its wall times and the resident
    memory; a skipped non-finite update goes to the guard (which may stop
    the run).

    Args:
      phase: metric prefix and guard label ("sft", "rl", ...).
      step: the global step just taken.
      metrics: the step's metrics (with `skipped`, `loss`, `grad_norm`).
      times: wall times in seconds, logged under `time/<phase>/`.
      task_ids: this process's tasks of the step's batch.
    """
    self.log(step, metrics, phase + "/")
    self.log(step, times, TIME_PREFIX + phase + "/")
    self.log(step, {"rss_mib": _rss_mib()}, HOST_PREFIX)
    self.guard.update(phase, step, metrics, task_ids)

  def log_eval(self, step: int, reports: Mapping[str, Any]) -> None:
    """Group `all` of the `eval.split` report under `eval/` (the final
    splits are in report.json only), and the evaluation's wall time."""
    values = {k: v for k, v in headline(
        reports[self.config.eval.split]).items() if v is not None}
    self.log(step, values, "eval/")
    self.log(step, {"wall_s": self.last_eval_s},
             TIME_PREFIX + "eval/")

  # ------------------------------------------------------------------ SFT --

  def sft(self, state: state_lib.TrainState, extra: Mapping[str, Any]
          ) -> state_lib.TrainState:
    c = self.config
    it = self.iterator("sft", extra)
    step_fn = steps_lib.make_sft_step(
        steps_lib.SFTConfig.from_config(c.sft),
        state_lib.learning_rate_schedule(self.sft_opt))
    rows = c.sft.batch // jax.process_count()
    pad = self.tokenizer.pad_token_id
    step = int(state.step)
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
      # sft_examples pads to a bucket multiple (an all-dropped batch is
      # empty); processes' rows must share one length, so several pad to
      # max_len.
      length = (c.sft.max_len if jax.process_count() > 1 else
                max(examples.tokens.shape[1], c.sft.bucket))
      batch = to_global(batches_lib.padded_sft_batch(
          zip(examples.tokens, examples.loss_mask, examples.attention_mask),
          rows, length, pad), self.mesh)
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

  # ------------------------------------------------------------------- RL --

  def rl(self, state: state_lib.TrainState, reference: decoder.Decoder,
         extra: Mapping[str, Any]
         ) -> tuple[state_lib.TrainState, dict[str, Any] | None]:
    """RL steps to the end: the final state, and the last periodic evaluation
    if it fell on the final step (then `after` is not recomputed), else
    None."""
    c = self.config
    it = self.iterator("rl", extra)
    pg_cfg = pg_config(c)
    pg_step = steps_lib.make_pg_step(
        pg_cfg, state_lib.learning_rate_schedule(self.rl_opt))
    judge = (judge_lib.make_judge("llm", model=reference,
                                  tokenizer=self.tokenizer)
             if c.rl.judge == "llm" else judge_lib.make_judge(c.rl.judge))
    step, last_eval = int(state.step), None
    while step < self.total:
      start = time.perf_counter()
      tasks = next(it)
      policy = ModelPolicy(state.model(), self.tokenizer, name="policy")
      out = rollout(policy, tasks, self.tokenizer,
                    rollout_config(c, seed=step_seed(state.rng, step)),
                    mesh=self.mesh if jax.process_count() > 1 else None)
      rollout_s = time.perf_counter() - start
      faults.fault_point("rollout", step + 1)
      components = reward_components(out, judge, c.rl)
      rewards = total_reward(components, c.rl.reward)
      adv, signal = task_advantages(components, c.rl)
      batch, entropy = rl_batch(state, reference, out, adv, pg_cfg, c.rl,
                                self.mesh)
      state, metrics = pg_step(state, batch)
      # Dispatch is asynchronous: wait, so step_s includes the update.
      metrics = jax.block_until_ready(metrics)
      step += 1
      faults.fault_point("update", step)
      rl_metrics = {**metrics, "entropy": float(entropy),
                    **reward_metrics(components, rewards, signal, adv),
                    **completion_metrics(out), **rollout_stats(out)}
      self.log_step("rl", step, rl_metrics,
                    {"rollout_s": rollout_s,
                     "step_s": time.perf_counter() - start},
                    [t.task_id for t in tasks])
      if c.eval.every and (step - c.sft.steps) % c.eval.every == 0:
        last_eval = self.evaluate(state.model(), f"step_{step}", step)
        self.log_eval(step, last_eval)
      else:
        last_eval = None
      self.save(state, "rl", it, force=step == self.total)
    return state, last_eval


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
  """Where the phase after SFT starts (`warm_start`); MOSAIC and FATE share it.

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


def warm_start(config: ml_collections.ConfigDict, total_steps: int
               ) -> WarmStart:
  """Set-up, restore, the SFT warm-up, the reference policy and `before`.

  Restores the newest checkpoint of `workdir/checkpoints` (if any) and runs
  (or finishes) the SFT phase unless the checkpoint is from a later phase.
  The reference policy and the `before` evaluation are read back when an
  earlier run of this workdir wrote them, else computed and written.
  The process group must be initialised already.

  Args:
    config: the run's config.
    total_steps: the last global step of the whole run (progress bar).

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
    state, extra, resumed = r.ckpt.restore_or_keep(template)
    step = int(state.step)
    r.writer = metrics_lib.MetricsWriter(r.workdir, total_steps=total_steps,
                                         initial_step=step)
    if r.main:
      start = f"resumed at step {step}" if resumed else "fresh"
      sizes = ", ".join(f"{s} {len(v)}" for s, v in r.eval_tasks.items())
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
    reference = _reference(r, state)
    if os.path.exists(r.path(BEFORE_FILE)):
      with open(r.path(BEFORE_FILE), encoding="utf-8") as f:
        before = json.load(f)
    else:
      before = r.evaluate(reference, "warm_start", config.sft.steps,
                          final=True)
      # Logged before the file is written: a crash in between logs it again
      # on resume rather than never.
      r.log_eval(config.sft.steps, before)
      r.write_json(BEFORE_FILE, before)
    r.stop_if_preempted(int(state.step))
  except BaseException:
    r.close()
    raise
  return WarmStart(r, state, extra, reference, before)


def _reference(r: Run, state: state_lib.TrainState) -> decoder.Decoder:
  """The frozen SFT policy: `workdir/reference` read back, else a copy of
  `state`'s model written there (into a temporary directory renamed when
  complete, so a crash never leaves a reference a resumed run would load
  half-written)."""
  final = r.path(REFERENCE_DIR)
  if os.path.isdir(final):
    return convert.load_orbax(final, mesh=r.mesh)
  # LoRA: the SFT adapters folded in, a plain model (the next phase trains
  # fresh adapters on top of it).
  reference = lora_lib.merge(copy_model(state.model()))
  tmp = final + ".tmp"
  if r.main:
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed run's leftover
  _sync("mosaic_reference_tmp")
  convert.save_orbax(reference, tmp)
  _sync("mosaic_reference_written")
  if r.main:
    faults.fault_point("reference-write", int(state.step))
    os.rename(tmp, final)
  _sync("mosaic_reference_renamed")
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


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs (or resumes) the whole MOSAIC job; returns the report.

  Args:
    config: a `configs/*.py` config (see `configs/base.py`).

  Returns:
    `training_report(...)` as written to `workdir/report.json`.

  Raises:
    validate.ConfigError: the config, tokenizer, model directory, lengths
      or workdir cannot run.
    checkpoint.UnreadableCheckpoint: the newest checkpoint is damaged.
    faults.Preempted: SIGTERM arrived (the newest step is checkpointed).
    faults.NonFiniteError: `max_nonfinite_steps` non-finite updates in a row.
  """
  validate.check_start(config)
  distributed.initialize_from_config(config.distributed)
  ws = warm_start(config, config.sft.steps + config.rl.steps)
  r = ws.run
  try:
    # RL starts from the SFT params with a fresh optimizer; steps continue.
    state = second_phase_state(ws, "rl", r.rl_opt)
    state, last = r.rl(state, ws.reference, ws.extra)
    after = r.evaluate(state.model(), "final", int(state.step), final=True,
                       done=last)
    result = training_report(ws.before, after, r.eval_sizes(), config,
                             method="mosaic", final_step=int(state.step))
    r.write_json(REPORT_FILE, result)
  finally:
    r.close()
  return result
