"""Training a generative pairwise judge from verifier-labelled episode pairs.

`run(config)` (`config.method == "judge"`, configs/judge_tiny.py,
configs/judge_smollm2.py):

1. episodes: each policy of `judge_train.policies` (scripted policies of
   `envs.scripted`, through `rollout.ScriptedPolicy`, so the transcripts are
   the RL loop's: `rewards.episode_transcript`) plays every task of a
   stratified subset of each split;
2. pairs: two episodes of one task whose verifier verdicts differ
   (`judge.verifier_preference` ≠ ½), at most `pairs_per_task` a task
   (seeded), labelled with the verifier's verdict;
3. SFT on the answer token: each train pair is asked in both orders (the
   judge prompt of the `judge` section, `judge.LLMJudge.clipped_prompt_ids`)
   and the model learns the verifier's answer ("A" or "B") after the
   response prefix; the loss is on that one token;
4. `judge_report.json` in the workdir: on the pairs of `eval_splits`
   (validation, test) before and after training, `judge_metrics`:
   agreement with the verifier, position bias, ECE and Brier score; the
   trained judge is written to `workdir/judge` (HF safetensors with its
   tokenizer), ready for `judge.model_path`.

A run is short and deterministic (every draw from `config.seed`); it does
not checkpoint mid-way, so a stopped run starts over.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, ClassVar, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from mosaic_jax import batches as batches_lib, judge as judge_lib, rewards
from mosaic_jax import sections, sharding
from mosaic_jax.envs import scripted, tasks as tasks_lib
from mosaic_jax.eval import heldout
from mosaic_jax.models import convert
from mosaic_jax.rollout import RolloutConfig, ScriptedPolicy, rollout
from mosaic_jax.train import metrics as metrics_lib, run as run_lib
from mosaic_jax.train import state as state_lib, steps as steps_lib
from mosaic_jax.train import progress
from mosaic_jax.train import validate

REPORT_FILE = "judge_report.json"
MODEL_DIR = "judge"
PHASE = "judge"
# The goal for a judge trained from SmolLM2-135M-Instruct.
GOAL = {"agreement": 0.90, "abs_position_bias": 0.05}
SPLITS = ("train", "validation", "test", "test_ood")


@dataclasses.dataclass(frozen=True)
class JudgeTrainConfig(sections.Section):
  """The `judge_train` section (configs/judge_settings.py); a bad value
  raises one line per field (`sections.Section`).

  Attributes:
    policies: scripted policies (`envs.scripted.POLICIES`) whose episodes
      are paired; at least two.
    train_tasks: train tasks played (a subset stratified over kinds; 0:
      all).
    eval_tasks: tasks per evaluation split (stratified; 0: all).
    eval_splits: the splits the report measures on (never train).
    pairs_per_task: verifier-decided pairs kept per task, at most (seeded).
    steps, batch, lr, warmup_steps: SFT steps, rows a step, peak learning
      rate and warm-up (AdamW of the `optimizer` section otherwise).
    microbatch: rows per micro-batch (0: the whole batch).
    max_turns, max_tokens_per_turn, max_total_length: the episodes' limits.
    bins: equal-width bins of the expected calibration error.
  """
  policies: tuple[str, ...] = ("expert", "comply_all", "follow_injection",
                               "reckless", "refuse_all", "leak", "lazy",
                               "malformed")
  train_tasks: int = 256
  eval_tasks: int = 48
  eval_splits: tuple[str, ...] = ("validation", "test")
  pairs_per_task: int = 6
  steps: int = 200
  batch: int = 16
  lr: float = 1e-4
  warmup_steps: int = 10
  microbatch: int = 0
  max_turns: int = 8
  max_tokens_per_turn: int = 512
  max_total_length: int = 8192
  bins: int = 10

  SECTION: ClassVar[str] = "judge_train"

  @classmethod
  def field_problems(cls, values: Mapping[str, Any]) -> list[str]:
    """One line per bad field, naming it."""
    p = []
    policies = values["policies"]
    policies = (tuple(policies) if isinstance(policies, (list, tuple))
                else (policies,))
    bad = [n for n in policies if n not in scripted.POLICIES]
    if bad or len(set(policies)) < 2:
      p.append(f"judge_train.policies={policies!r}: need at "
               f"least two of {sorted(scripted.POLICIES)}")
    splits = values["eval_splits"]
    splits = (tuple(splits) if isinstance(splits, (list, tuple))
              else (splits,))
    for split in splits:
      if split not in SPLITS[1:]:
        p.append(f"judge_train.eval_splits: {split!r} is not one of "
                 f"{SPLITS[1:]}")
    if not splits:
      p.append("judge_train.eval_splits: empty; name at least one split")
    ints_ok = True
    for name, low in (("train_tasks", 0), ("eval_tasks", 0),
                      ("pairs_per_task", 1), ("steps", 0), ("batch", 1),
                      ("microbatch", 0), ("warmup_steps", 0),
                      ("max_turns", 1), ("max_tokens_per_turn", 1),
                      ("max_total_length", 1), ("bins", 1)):
      value = values[name]
      if (not isinstance(value, int) or isinstance(value, bool)
          or value < low):
        p.append(f"judge_train.{name}={value!r} must be an int >= {low}")
        ints_ok = False
    if ints_ok and values["microbatch"] and (
        values["batch"] % values["microbatch"]):
      p.append(f"judge_train.microbatch={values['microbatch']} must divide "
               f"judge_train.batch={values['batch']}")
    lr = values["lr"]
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool)
            and np.isfinite(lr) and lr > 0):
      p.append(f"judge_train.lr={lr!r} must be a finite number > 0")
    return p


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Everything wrong with a judge-training config that can be seen
  without loading weights: the shared sections (`validate.value_problems`),
  the `judge` section (`judge.JudgeConfig`) and `judge_train`."""
  p = validate.value_problems(config)
  try:
    judge_lib.JudgeConfig.from_config(config)
  except ValueError as e:
    p.append(str(e))
  p += JudgeTrainConfig.section_problems(config.get("judge_train", {}))
  return p


# ----------------------------------------------------------------------------
# Metrics.


def _agree(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
  """1 where `prob` is on the label's side of ½, ½ where it is exactly ½."""
  right = (prob > 0.5) == (label > 0.5)
  return np.where(prob == 0.5, 0.5, right.astype(np.float64))


def expected_calibration_error(prob: np.ndarray, label: np.ndarray,
                               bins: int = 10) -> float:
  """ECE of binary predictions: `Σ_b (n_b / N) |mean(label_b) −
  mean(prob_b)|` over `bins` equal-width bins of [0, 1] (1.0 falls in the
  last)."""
  prob, label = np.asarray(prob, np.float64), np.asarray(label, np.float64)
  which = np.minimum((prob * bins).astype(np.int64), bins - 1)
  total = 0.0
  for b in range(bins):
    inside = which == b
    if inside.any():
      total += inside.mean() * abs(label[inside].mean() - prob[inside].mean())
  return float(total)


def judge_metrics(q_first: np.ndarray, q_second: np.ndarray,
                  label: np.ndarray, bins: int = 10) -> dict[str, float]:
  """A judge against the verifier on n pairs (x_i, y_i).

  Args:
    q_first: `[n]` q(x_i, y_i), the judge's P(answer "A") with x_i shown
      first.
    q_second: `[n]` q(y_i, x_i), the same pair swapped.
    label: `[n]` 1 where the verifier prefers x_i, 0 where it prefers y_i.
    bins: ECE bins.

  Returns:
    `pairs`; `agreement`: share of pairs where `P = ½ (q_first + 1 −
    q_second)` (both orders, as in the RL loop) is on the verifier's side
    (½ for P = ½ exactly); `single_order_agreement`: the same for each
    ordered prompt alone; `position_bias`: mean q over all 2n ordered
    prompts − ½ (each pair once in each order, so an order-blind judge
    scores 0; > 0 favours the first transcript); `ece`, `brier`: of P
    against the label; `ece_single_order`, `brier_single_order`: of each
    ordered prompt's q against its own label.
  """
  q1, q2 = np.asarray(q_first, np.float64), np.asarray(q_second, np.float64)
  y = np.asarray(label, np.float64)
  if not len(y):
    return {"pairs": 0}
  p = 0.5 * (q1 + 1.0 - q2)
  q, yq = np.concatenate([q1, q2]), np.concatenate([y, 1.0 - y])
  return {"pairs": int(len(y)),
          "agreement": float(_agree(p, y).mean()),
          "single_order_agreement": float(_agree(q, yq).mean()),
          "position_bias": float(q.mean() - 0.5),
          "ece": expected_calibration_error(p, y, bins),
          "brier": float(np.mean((p - y) ** 2)),
          "ece_single_order": expected_calibration_error(q, yq, bins),
          "brier_single_order": float(np.mean((q - yq) ** 2))}


# ----------------------------------------------------------------------------
# Pairs.


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two episodes of one task whose verifier verdicts differ.

  Attributes:
    task_prompt: the task's user prompt.
    first, second: the transcripts (`rewards.episode_transcript`).
    label: 1.0 when the verifier prefers `first`, 0.0 when `second`.
    kind: the task kind; policies: the two policies' names.
  """
  task_prompt: str
  first: str
  second: str
  label: float
  kind: str
  policies: tuple[str, str]


def split_tasks(split: str, n: int) -> list[Any]:
  """n tasks of `split` stratified over kinds (0: all)."""
  return heldout.stratified_subset(tasks_lib.all_tasks(split=split), n)


def episode_pairs(task_list: Sequence[Any], tokenizer: Any,
                  cfg: JudgeTrainConfig, seed: int) -> list[Pair]:
  """Every policy of `cfg.policies` plays every task; per task, the pairs
  whose verdicts differ (identical transcripts skipped), at most
  `cfg.pairs_per_task` drawn with `seed`, each shown in a random order."""
  rc = RolloutConfig(max_turns=cfg.max_turns,
                     max_tokens_per_turn=cfg.max_tokens_per_turn,
                     max_total_length=cfg.max_total_length, group_size=1)
  played = {}
  for name in cfg.policies:
    out = rollout(ScriptedPolicy(scripted.POLICIES[name](), tokenizer),
                  list(task_list), tokenizer, rc)
    played[name] = list(out.episodes)
  rng = np.random.default_rng(seed)
  pairs = []
  for t, task in enumerate(task_list):
    found = []
    for a, name_a in enumerate(cfg.policies):
      for name_b in cfg.policies[a + 1:]:
        ea, eb = played[name_a][t], played[name_b][t]
        pref = judge_lib.verifier_preference(task.kind, ea.record, eb.record)
        xa, xb = (rewards.episode_transcript(e) for e in (ea, eb))
        if pref != 0.5 and xa != xb:
          found.append((xa, xb, pref, (name_a, name_b)))
    keep = rng.permutation(len(found))[:cfg.pairs_per_task]
    for k in sorted(keep):
      xa, xb, pref, names = found[k]
      if rng.random() < 0.5:
        xa, xb, pref, names = xb, xa, 1.0 - pref, names[::-1]
      pairs.append(Pair(task.prompt, xa, xb, float(pref), task.kind, names))
  return pairs


def scores(judge: judge_lib.LLMJudge, pairs: Sequence[Pair]
           ) -> tuple[np.ndarray, np.ndarray]:
  """(q(first, second), q(second, first)) `[n]` each, all in one batched
  call (`LLMJudge.ordered_scores`)."""
  items = [(p.task_prompt, p.first, p.second) for p in pairs]
  swapped = [(t, b, a) for t, a, b in items]
  q = judge.ordered_scores(items + swapped)
  return q[:len(items)], q[len(items):]


def evaluate(judge: judge_lib.LLMJudge, eval_pairs: Mapping[str, list[Pair]],
             bins: int) -> dict[str, dict[str, float]]:
  """`judge_metrics` per split, with a per-kind breakdown."""
  out = {}
  for split, pairs in eval_pairs.items():
    q1, q2 = scores(judge, pairs)
    label = np.asarray([p.label for p in pairs])
    rep = judge_metrics(q1, q2, label, bins)
    kinds = np.asarray([p.kind for p in pairs])
    rep["by_kind"] = {k: judge_metrics(q1[kinds == k], q2[kinds == k],
                                       label[kinds == k], bins)
                      for k in sorted(set(kinds.tolist()))}
    out[split] = rep
  return out


def sft_examples(judge: judge_lib.LLMJudge, pairs: Sequence[Pair]
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Each pair in both orders: the judge prompt, then the verifier's answer
  token, the loss on that token only."""
  a_id, b_id = (int(i) for i in np.asarray(judge.answer_ids))
  out = []
  for p in pairs:
    for first, second, label in ((p.first, p.second, p.label),
                                 (p.second, p.first, 1.0 - p.label)):
      ids = judge.clipped_prompt_ids(p.task_prompt, first, second)
      ids = np.asarray(ids + [a_id if label > 0.5 else b_id], np.int32)
      mask = np.zeros(len(ids), np.int32)
      mask[-1] = 1
      out.append((ids, mask, np.ones(len(ids), np.int32)))
  return out


# ----------------------------------------------------------------------------
# The run.


def _judge(model: Any, tokenizer: Any, jc: judge_lib.JudgeConfig,
           mesh: jax.sharding.Mesh) -> judge_lib.LLMJudge:
  kw = jc.llm_kwargs()
  kw["cache_size"] = 0  # each evaluation scores afresh
  return judge_lib.LLMJudge(model, tokenizer, mesh=mesh, **kw)


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Builds the pairs, evaluates the untrained judge, trains it, evaluates
  it again; writes `judge_report.json` and `judge/`; returns the report.

  Raises:
    validate.ConfigError: the config cannot run (one line per problem).
  """
  start = time.perf_counter()
  problems = config_problems(config)
  if problems:
    raise validate.ConfigError("the config cannot run:\n  "
                               + "\n  ".join(problems))
  cfg = JudgeTrainConfig.from_config(config.judge_train)
  jc = judge_lib.JudgeConfig.from_config(config)
  workdir = os.path.abspath(config.workdir)
  run_lib.check_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = run_lib.build_tokenizer(config)
  model = run_lib.build_model(config, mesh)
  before_judge = _judge(model, tokenizer, jc, mesh)

  train_pairs = episode_pairs(split_tasks("train", cfg.train_tasks),
                              tokenizer, cfg, config.seed)
  eval_pairs = {s: episode_pairs(split_tasks(s, cfg.eval_tasks), tokenizer,
                                 cfg, config.seed + 1 + SPLITS.index(s))
                for s in cfg.eval_splits}
  if not train_pairs:
    raise validate.ConfigError(
        "judge_train: no train pair has differing verdicts; add policies")
  before = evaluate(before_judge, eval_pairs, cfg.bins)
  examples = sft_examples(before_judge, train_pairs)
  length = max(len(e[0]) for e in examples)
  length = -(-length // jc.bucket) * jc.bucket

  opt = dataclasses.replace(
      state_lib.OptimizerConfig.from_config(config.optimizer), lr=cfg.lr,
      warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
  state = state_lib.create_train_state(run_lib.copy_model(model), opt,
                                       seed=config.seed, mesh=mesh)
  step_fn = steps_lib.make_sft_step(
      steps_lib.SFTConfig(microbatch=cfg.microbatch),
      state_lib.learning_rate_schedule(opt))
  writer = metrics_lib.MetricsWriter.from_config(workdir, config)
  bars = progress.Progress()
  bars.phase("judge SFT", cfg.steps)
  rng = np.random.default_rng(config.seed)
  order: list[int] = []
  losses = []
  try:
    for step in range(1, cfg.steps + 1):
      while len(order) < cfg.batch:  # epochs, each in a fresh order
        order += rng.permutation(len(examples)).tolist()
      rows, order = order[:cfg.batch], order[cfg.batch:]
      batch = batches_lib.to_global(batches_lib.padded_sft_batch(
          [examples[i] for i in rows], cfg.batch, length,
          before_judge.pad_id), mesh)
      state, metrics = step_fn(state, batch)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      losses.append(metrics["loss"])
      writer.write(step, metrics, PHASE + "/")
      bars.step(metrics)
  finally:
    bars.close()
    writer.close()
  trained = state.model()
  after = evaluate(_judge(trained, tokenizer, jc, mesh), eval_pairs,
                   cfg.bins)
  convert.save_pretrained(trained, os.path.join(workdir, MODEL_DIR),
                          tokenizer=tokenizer)
  report = {
      "kind": "judge_training",
      "model": config.model.path or config.model.preset,
      "before": before, "after": after,
      "train": {"pairs": len(train_pairs), "examples": len(examples),
                "tasks": cfg.train_tasks, "steps": cfg.steps,
                "batch": cfg.batch, "length": length,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "loss_last10_mean": (float(np.mean(losses[-10:]))
                                     if losses else None)},
      "goal": GOAL,
      "meets_goal": {s: bool(r.get("agreement", 0) >= GOAL["agreement"]
                             and abs(r.get("position_bias", 1))
                             <= GOAL["abs_position_bias"])
                     for s, r in after.items()},
      "judge_dir": os.path.join(workdir, MODEL_DIR),
      "config": {"judge_train": dataclasses.asdict(cfg),
                 "judge": dataclasses.asdict(jc), "seed": config.seed},
      "wall_s": round(time.perf_counter() - start, 1),
  }
  tmp = os.path.join(workdir, REPORT_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, os.path.join(workdir, REPORT_FILE))
  return report


_COLUMNS = ("pairs", "agreement", "position_bias", "ece", "brier")


def summary(report: Mapping[str, Any]) -> str:
  """The report's before/after table, one row per (split, when)."""
  lines = [f"{'split':<12}{'when':<8}" + "".join(f"{c:>15}"
                                                  for c in _COLUMNS)]
  for split in report["after"]:
    for when in ("before", "after"):
      r = report[when][split]
      lines.append(f"{split:<12}{when:<8}" + "".join(
          f"{r.get(c, float('nan')):>15.4f}" if c != "pairs" else
          f"{r['pairs']:>15d}" for c in _COLUMNS))
  lines.append(f"goal (after): agreement >= {GOAL['agreement']}, |bias| <= "
               f"{GOAL['abs_position_bias']}: {report['meets_goal']}")
  return "\n".join(lines)
