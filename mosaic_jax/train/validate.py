"""Checks a training run's config, tokenizer and model before any compute.

A bad setting should fail in the first second with the field to change, not
after an SFT phase with a shape error from inside a jitted step. Each check
returns a list of problems, one line each, naming the field (`rl.group_size`)
and the fix; `check_structure`, `check_values` and `check_tokenizer` raise
one `ConfigError` listing all of them. `experiments/train.py` checks the
structure before anything else; `train.run.Run` checks values, tokenizer
and checkpoint before it builds the model.

* `structure_problems`: fields the reference config (`configs/base.py`, plus
  the `fate` section) does not have, with the closest known name; fields
  whose value has the wrong type; fields the config lacks.
* `value_problems`: each settings dataclass's own checks of its section
  (`sections.Section.section_problems`: `RolloutConfig`, `SFTConfig`,
  `PGConfig`, `OptimizerConfig`, `LoRAConfig`, `JudgeConfig`; the same
  lines their constructors raise), then what no one dataclass owns: fields
  the loops read directly (reward, advantage estimator, scripted policies,
  preset, dtype, remat, steps and batch sizes), batch splits that must
  divide (micro-batches, processes; FATE's round and SFT batches too), and
  the mesh against the device count (the `fate` section's own fields are
  `methods.fate.FateConfig`'s, which its run builds first).
* `start_problems` (part of `value_problems`, pure Python, so it runs before
  the process group starts): a full-size preset without `model.path` (random
  init only with `model.random_init=True`), the `optimizer` and `rl`
  sections' own checks (learning rate, warm-up, KL β, clip range, ...),
  `sft.lr`, a workdir below a file.
* `length_problems`: lengths that cannot hold a task's prompt plus a turn,
  and an `sft.max_len` that drops every demonstration (a run that would
  train on zero tokens), measured on sampled tasks with the run's tokenizer.
* `tokenizer_problems`: the tokens the agent protocol cannot run without (a
  pad token, an end-of-turn token the sampler stops on and the parser
  strips, a chat template) and ids that fit the model's vocabulary.

A checkpoint of another model in the workdir is `Checkpointer.check_params`'s
job (it reads only the checkpoint's metadata).
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import Any, Mapping, Sequence

from absl import flags
import jax
import ml_collections

from mosaic_jax import judge as judge_lib, losses, rewards, sections
from mosaic_jax import sharding
from mosaic_jax.agent import parse
from mosaic_jax.envs import scripted
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.models import hub, lora as lora_lib, presets
from mosaic_jax.models.config import REMAT_POLICIES, ModelFileError
from mosaic_jax.rollout import RolloutConfig
from mosaic_jax.train import metrics as metrics_lib
from mosaic_jax.train import state as state_lib, steps as steps_lib

# Sections whose keys are data, not settings (policy name -> weight).
FREE_FORM = ("sft.mix",)
STRATEGIES = RolloutConfig.STRATEGIES
REWARDS = tuple(rewards.MOSAIC_COMPARISONS)
DTYPES = ("float32", "bfloat16", "float16")
METHODS = ("mosaic", "fate", "judge")
# A preset this large is never randomly initialised by accident: without
# model.path it needs model.random_init=True.
FULL_SIZE_PARAMS = 1e9


class ConfigError(ValueError):
  """The config cannot run; the message lists every problem found."""


def _type_name(value: Any) -> str:
  return type(value).__name__


def _is_section(value: Any) -> bool:
  # A ConfigDict is not a collections.abc.Mapping.
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _type_ok(value: Any, reference: Any) -> bool:
  """Whether `value` may stand where the reference config has `reference`.

  An int is a valid float; a list a valid tuple; None in the reference
  accepts anything; bool is neither int nor float.
  """
  if reference is None:
    return True
  if isinstance(reference, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(reference, bool)
  if isinstance(reference, float):
    return isinstance(value, (int, float))
  if isinstance(reference, (tuple, list)):
    return isinstance(value, (tuple, list))
  if _is_section(reference):
    return _is_section(value)
  return isinstance(value, type(reference))


def structure_problems(config: Mapping[str, Any], reference: Mapping[str, Any],
                       prefix: str = "") -> list[str]:
  """Unknown, mistyped and missing fields of `config` against `reference`.

  Args:
    config: the run's config (ConfigDict or nested mappings).
    reference: a config with every valid field at a value of its type.
    prefix: the dotted path of `config` (for messages).
  """
  problems = []
  known = list(reference.keys())
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in reference:
      close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
      hint = (f"did you mean {prefix}{close[0]}?" if close else
              f"known fields here: {', '.join(sorted(known))}")
      problems.append(f"{name}: unknown field; {hint} (a new field is "
                      "declared in configs/base.py)")
      continue
    value, ref = config[key], reference[key]
    if _is_section(ref) and name not in FREE_FORM:
      if not _is_section(value):
        problems.append(f"{name}: must be a section, got {_type_name(value)} "
                        f"{value!r}")
      else:
        problems += structure_problems(value, ref, name + ".")
    elif not _type_ok(value, ref):
      problems.append(f"{name}: expected {_type_name(ref)} (like {ref!r}), "
                      f"got {_type_name(value)} {value!r}")
  for key in reference.keys():
    if key not in config:
      problems.append(f"{prefix}{key}: missing; the reference value is "
                      f"{reference[key]!r}")
  return problems


def _eval_split_problems(p: list[str], ev: ml_collections.ConfigDict
                         ) -> None:
  """eval.split / final_splits name evaluation splits; baselines are
  scripted policies; claim_samples >= 0."""
  evaluable = [s for s in tasks_lib.SPLITS if s != "train"]
  sections.choice(p, "eval.split", ev.get("split", "validation"), evaluable)
  for split in tuple(ev.get("final_splits", ())):
    sections.choice(p, "eval.final_splits", split, evaluable)
  for name in tuple(ev.get("baselines", ())):
    sections.choice(p, "eval.baselines", name, scripted.POLICIES)
  sections.at_least(p, "eval.claim_samples", ev.get("claim_samples", 0), 0)


def workdir_problem(workdir: str) -> str | None:
  """Why `workdir` cannot be created or written, checked without creating
  it (its nearest existing ancestor must be a writable directory), or
  None."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    return f"workdir: {workdir!r} is a file, not a directory"
  ancestor = path
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    return (f"workdir: {workdir!r} cannot be created: {ancestor!r} is a "
            "file, not a directory")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    return (f"workdir: {workdir!r} cannot be written: no write permission "
            f"on {ancestor!r}")
  return None


def start_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Settings that cannot work, found without JAX (safe before the
  process group starts): random init of a full-size preset without
  `model.random_init`, learning rates, KL β, the workdir."""
  p: list[str] = []
  m = config.model
  preset = presets.PRESETS.get(m.preset)
  if (not m.path and preset is not None and not m.get("random_init", False)
      and preset.num_params() >= FULL_SIZE_PARAMS):
    p.append(f"model.path: empty, so model.preset={m.preset!r} "
             f"({preset.num_params() / 1e9:.1f}B params) would start from "
             "random weights; set --config.model.path=DIR (an HF safetensors "
             "or orbax model directory), or --config.model.random_init=True "
             "to train a random init on purpose")
  p += state_lib.OptimizerConfig.section_problems(config.optimizer)
  sections.finite(p, "sft.lr", config.sft.lr, 0, strict=True)
  p += steps_lib.PGConfig.section_problems(config.rl)
  if config.get("workdir"):
    problem = workdir_problem(config.workdir)
    if problem:
      p.append(problem)
  return p


def value_problems(config: ml_collections.ConfigDict,
                   process_count: int | None = None) -> list[str]:
  """Settings that cannot work, whatever their types.

  Args:
    config: the run's config.
    process_count: processes of the run (default: JAX's); the mesh is laid
      over JAX's devices.
  """
  processes = jax.process_count() if process_count is None else process_count
  p: list[str] = start_problems(config)
  if not config.get("workdir"):
    p.append("workdir: empty; set --config.workdir=DIR (every output goes "
             "there)")
  sections.choice(p, "method", config.get("method", "mosaic"), METHODS)
  m = config.model
  if m.path:
    try:
      local = hub.resolve(m.path)  # a hub id: its cached snapshot
    except ModelFileError as e:
      p.append(f"model.path: {e}")
      local = None
    if local is not None and not os.path.isdir(local):
      p.append(f"model.path: {m.path!r} is not a directory; point it at an "
               "HF safetensors or orbax model directory (or a hub id in the "
               "local Hugging Face cache), or set it to '' for a randomly "
               "initialised model.preset")
  else:
    sections.choice(p, "model.preset", m.preset, presets.PRESETS)
  if "logging" in config:
    for backend in config.logging.backends:
      sections.choice(p, "logging.backends", backend, metrics_lib.BACKENDS)
  sections.choice(p, "model.dtype", m.dtype, DTYPES)
  sections.choice(p, "model.compute_dtype", m.compute_dtype, DTYPES)
  sections.choice(p, "model.remat", m.remat, REMAT_POLICIES)
  p += lora_lib.LoRAConfig.section_problems(m.get("lora"))
  if config.tokenizer and not os.path.isdir(config.tokenizer):
    p.append(f"tokenizer: {config.tokenizer!r} is not a directory; set it "
             "to a tokenizer directory or '' (the one beside model.path)")
  sections.at_least(p, "max_nonfinite_steps", config.max_nonfinite_steps, 0)

  sft, rl, ro = config.sft, config.rl, config.rollout
  sections.at_least(p, "sft.steps", sft.steps, 0)
  sections.at_least(p, "rl.steps", rl.steps, 0)
  for name, value in [("sft.batch", sft.batch),
                      ("rl.group_size", rl.group_size),
                      ("rl.tasks_per_step", rl.tasks_per_step),
                      ("sft.max_len", sft.max_len), ("sft.bucket", sft.bucket),
                      ("checkpoint.every", config.checkpoint.every),
                      ("eval.batch", config.eval.batch)]:
    sections.at_least(p, name, value, 1)
  p += RolloutConfig.section_problems(ro)
  p += steps_lib.SFTConfig.section_problems(sft)
  if isinstance(sft.batch, int) and isinstance(sft.microbatch, int):
    sections.divides(p, "sft.microbatch", sft.microbatch,
                     sft.batch // processes, "sft.batch per process")
  if all(isinstance(x, int) for x in (rl.tasks_per_step, rl.group_size,
                                      rl.microbatch)):
    sections.divides(p, "rl.microbatch", rl.microbatch,
             rl.tasks_per_step * rl.group_size // processes,
             "rl.tasks_per_step x rl.group_size per process")
  # (An evaluation batch need not split evenly: `eval.heldout.play` pads
  # it.)
  for name, value in [("sft.batch", sft.batch),
                      ("rl.tasks_per_step", rl.tasks_per_step)]:
    if isinstance(value, int) and value % processes:
      p.append(f"{name}={value} is not a multiple of the {processes} "
               "processes; each process takes an equal share")
  if rl.steps and isinstance(rl.group_size, int) and rl.group_size < 2:
    p.append(f"rl.group_size={rl.group_size}: group advantages and pairwise "
             "judgements need at least 2 episodes per task; set it >= 2")
  try:
    judge_lib.JudgeConfig.from_config(config)
  except (ValueError, TypeError) as e:
    p.append(str(e))
  sections.choice(p, "rl.reward", rl.reward, REWARDS)
  sections.choice(p, "rl.advantage", rl.advantage, losses.ADVANTAGE_ESTIMATORS)
  sections.choice(p, "rl.tie_advantage", rl.get("tie_advantage", "zero"),
          losses.TIE_ADVANTAGES)
  minibatches = rl.get("minibatches", 1)
  if all(isinstance(x, int) and x >= 1 for x in (
      rl.tasks_per_step, rl.group_size, minibatches)):
    rows = rl.tasks_per_step * rl.group_size // processes
    if rows % minibatches:
      p.append(f"rl.minibatches={minibatches} does not divide the {rows} "
               "rows of a step (rl.tasks_per_step x rl.group_size per "
               f"process); set it to a divisor of {rows}")
    if isinstance(rl.microbatch, int) and minibatches > 1:
      sections.divides(p, "rl.microbatch", rl.microbatch, rows // minibatches,
               "the rows of one minibatch (per process)")
  sections.choice(p, "eval.strategy", config.eval.strategy, STRATEGIES)
  samples = config.eval.get("samples", 1)
  sections.at_least(p, "eval.samples", samples, 1)
  if (isinstance(samples, int) and samples > 1
      and config.eval.strategy == "greedy"):
    p.append(f"eval.samples={samples} with eval.strategy='greedy' plays the "
             "same episode again; set eval.strategy='temperature' or "
             "eval.samples=1")
  _eval_split_problems(p, config.eval)
  if len(tuple(rl.scalar_weights)) != 4:
    p.append(f"rl.scalar_weights: needs 4 weights (security, utility, "
             f"no_over_refusal, validity), got {tuple(rl.scalar_weights)}")
  mix = dict(sft.mix)
  for name in mix:
    sections.choice(p, f"sft.mix.{name}", name, scripted.POLICIES)
  weights = list(mix.values())
  if sft.steps and (not weights or any(
      not isinstance(w, (int, float)) or w < 0 for w in weights)
                    or not sum(weights)):
    p.append(f"sft.mix: weights must be >= 0 with a positive sum, got {mix}")
  try:
    sharding.make_mesh(config.mesh)
  except ValueError as e:
    p.append(f"mesh: {e}")
  # The `fate` section's own choices are checked by `FateConfig` (the FATE
  # run reads it first); across sections: the shares of its processes.
  if "fate" in config and config.get("method", "mosaic") == "fate":
    for name in ("tasks_per_round", "sft_batch"):
      value = config.fate.get(name)
      if isinstance(value, int) and value % processes:
        p.append(f"fate.{name}={value} is not a multiple of the {processes} "
                 "processes; each process takes an equal share")
  return p


def length_problems(config: ml_collections.ConfigDict,
                    prompt_lengths: Mapping[str, int],
                    sft_lengths: Mapping[str, int]) -> list[str]:
  """Lengths that leave a run nothing to train on or evaluate.

  Args:
    config: the run's config.
    prompt_lengths: task id -> tokens of its first prompt (system, user,
      tool list and the assistant header), for sampled tasks.
    sft_lengths: task id -> tokens of a sampled SFT demonstration (empty
      when the run has no SFT steps).
  """
  p = []
  ro = config.rollout
  if prompt_lengths:
    task, longest = max(prompt_lengths.items(), key=lambda kv: kv[1])
    need = longest + ro.max_tokens_per_turn
    if need > ro.max_total_length:
      p.append(
          f"rollout.max_total_length={ro.max_total_length} cannot hold a "
          f"prompt plus one turn: task {task!r} has a {longest}-token prompt "
          f"and rollout.max_tokens_per_turn={ro.max_tokens_per_turn}, so its "
          "episodes would end before a token is generated (nothing to train "
          f"on or evaluate); set rollout.max_total_length >= {need}")
  if sft_lengths and config.sft.steps:
    task, shortest = min(sft_lengths.items(), key=lambda kv: kv[1])
    if shortest > config.sft.max_len:
      p.append(
          f"sft.max_len={config.sft.max_len} drops every demonstration (the "
          f"shortest of {len(sft_lengths)} sampled, task {task!r}, has "
          f"{shortest} tokens), so SFT would train on zero tokens; set "
          f"sft.max_len >= {max(sft_lengths.values())}")
  return p


def tokenizer_problems(tokenizer: Any, vocab_size: int, source: str
                       ) -> list[str]:
  """What the agent protocol needs from a tokenizer, for a model of
  `vocab_size` rows (`source` names where the tokenizer came from)."""
  p = []
  fix = (f"use the tokenizer of the model's family (config.tokenizer, or "
         f"the one beside model.path); this one is from {source}")
  if getattr(tokenizer, "pad_token_id", None) is None:
    p.append(f"tokenizer: no pad token (batches are padded with it); {fix}")
  eos = getattr(tokenizer, "eos_token", None)
  if getattr(tokenizer, "eos_token_id", None) is None or eos is None:
    p.append(f"tokenizer: no end-of-turn (eos) token, so the sampler cannot "
             f"stop a turn; {fix}")
  elif eos not in parse.END_OF_TURN_TOKENS:
    p.append(f"tokenizer: eos token {eos!r} is not an end-of-turn token of "
             f"the protocol ({', '.join(parse.END_OF_TURN_TOKENS)}), so "
             f"turns would not parse; {fix}")
  elif len(tokenizer.encode(eos, add_special_tokens=False)) != 1:
    p.append(f"tokenizer: eos token {eos!r} is not a single token; {fix}")
  if not getattr(tokenizer, "chat_template", None):
    p.append(f"tokenizer: no chat template, so episodes cannot be "
             f"rendered; {fix}")
  if len(tokenizer) > vocab_size:
    p.append(f"tokenizer: {len(tokenizer)} token ids but the model has "
             f"{vocab_size} embedding rows (ids past it would be silently "
             f"clamped); {fix}, or a model.preset/model.path with a "
             "vocabulary this large")
  return p


def _raise(what: str, problems: list[str]) -> None:
  if len(problems) == 1:
    raise ConfigError(f"{what} (nothing was run): {problems[0]}")
  if problems:
    raise ConfigError(f"{what} ({len(problems)} problems; nothing was "
                      "run):\n" + "\n".join(f"  {line}" for line in problems))


def check_structure(config: Mapping[str, Any],
                    reference: Mapping[str, Any]) -> None:
  """Raises `ConfigError` listing `structure_problems` (pure Python: safe
  before the process group is initialised)."""
  _raise("the config does not match configs/base.py",
         structure_problems(config, reference))


def check_values(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` listing `value_problems` (reads the process and
  device counts: call after `distributed.initialize_from_config`)."""
  _raise("the config cannot run", value_problems(config))


def check_start(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` listing `start_problems` (pure Python: call before
  `distributed.initialize_from_config`, which a full-size config's
  auto-detected process group would otherwise fail in first)."""
  _raise("the config cannot run", start_problems(config))


def check_lengths(config: ml_collections.ConfigDict,
                  prompt_lengths: Mapping[str, int],
                  sft_lengths: Mapping[str, int]) -> None:
  """Raises `ConfigError` listing `length_problems`."""
  _raise("the config cannot run",
         length_problems(config, prompt_lengths, sft_lengths))


def check_tokenizer(tokenizer: Any, vocab_size: int, source: str) -> None:
  """Raises `ConfigError` listing `tokenizer_problems`."""
  _raise("the tokenizer cannot run the agent protocol",
         tokenizer_problems(tokenizer, vocab_size, source))


def parse_config_flags(argv: list[str]) -> list[str]:
  """absl `flags_parser` for the config-file CLIs: a bad `--config.X=V`
  override exits with status 2 and one line naming the flag, instead of a
  traceback (ml_collections raises AttributeError for an unknown field).

  Use as `app.run(main, flags_parser=validate.parse_config_flags)`.
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections: AttributeError(KeyError("'name'\nDid you mean ...?")).
    inner = e.args[0] if e.args else e
    if isinstance(inner, KeyError) and inner.args:
      inner = inner.args[0]
    key, _, hint = str(inner).partition("\n")
    key = key.strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv[1:]
                 if a.startswith("--config.")
                 and a.split("=", 1)[0].rsplit(".", 1)[-1] == key),
                "--config")
    message = f"{flag}: the config has no field {key!r}"
    if hint:
      message += f"; {hint.strip()}"
  except flags.Error as e:
    message = one_line_flag_error(str(e))
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def one_line_flag_error(message: str) -> str:
  """absl's message of a bad flag, in one line.

  ml_collections reports an exception inside a config file's `get_config`
  (a value of the wrong type for a field, a NameError, a SyntaxError) as
  "Error whilst parsing config file:" and the whole traceback; this keeps
  the flag, the config file's line and the exception.
  """
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if len(lines) <= 1:
    return message.strip()
  head = lines[0].rstrip(":")
  frames = [line for line in lines if line.startswith("File ")
            and "site-packages" not in line and "/lib/python" not in line]
  where = f" ({frames[-1].split(', in ')[0]})" if frames else ""
  return f"{head}{where}: {lines[-1]}"
