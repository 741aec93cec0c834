r"""MOSAIC training: SFT warm-up, held-out evaluation, pairwise-reward RL.

  python -m experiments.train --config=configs/tiny.py
  python -m experiments.train --config=configs/tiny.py --config.rl.group_size=8
  python -m experiments.train --config=configs/fate_tiny.py
  python -m experiments.train --config=configs/qwen25_7b.py \
      --config.model.path=/ckpt/Qwen2.5-7B-Instruct --config.workdir=/runs/q7

Every output (checkpoints, metrics.jsonl, TensorBoard events, report.json)
goes under --config.workdir; running the same command again resumes from the
newest checkpoint. The flow is described in mosaic_jax/train/run.py (set-up,
SFT, evaluation) and mosaic_jax/methods/ (mosaic.py, fate.py).
When the run ends it draws training_curves.png (reward, KL, entropy,
validation rates, SFT loss against step) and prints where the report is and
a before/after table of the headline metrics with 95% intervals per split.
Third-party INFO logging is off; `--verbosity=0` brings it back.

Exit status: 0 done; 2 the config, tokenizer, model files, data or workdir
cannot run (checked before any compute; the message names the field or
file and the fix) or the newest checkpoint is damaged (the message names it
and the step to fall back to);
143 preempted by SIGTERM after checkpointing (rerun to resume); 1 stopped
after `max_nonfinite_steps` non-finite updates in a row, or any other error.
"""
import os
import sys
from typing import Any, Mapping

from absl import app
import ml_collections
from ml_collections import config_flags

from experiments import cli

from configs import base, fate_settings, judge_settings
from mosaic_jax import distributed
from mosaic_jax.models.config import ModelFileError
from mosaic_jax.eval import heldout
from mosaic_jax.methods import fate, judge_training, mosaic
from mosaic_jax.train import checkpoint, faults, run as run_lib, validate
from mosaic_jax.viz import plots, summary

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py",
                                          "experiment config file")


def reference_config(config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """Every field a training config may have, at values of its type:
  configs/base.py's, plus the `fate` section when the config has one."""
  reference = base.base_config(config.model.preset)
  if config.get("method") == "judge":
    return judge_settings.add_judge_training(reference)
  if "fate" in config or "method" in config:
    fate_settings.add_fate(reference)
  return reference


def main(argv):
  del argv
  config = _CONFIG.value
  if not config.workdir:
    raise app.UsageError("set --config.workdir (every output goes there)")
  # config.method "fate" (configs/fate_tiny.py) runs the FATE loop
  # (mosaic_jax/methods/fate.py), which writes the same report.json.
  # config.method "judge" (configs/judge_tiny.py) trains a pairwise judge
  # (mosaic_jax/methods/judge_training.py) and writes judge_report.json.
  method = config.get("method", "mosaic")
  run = {"fate": fate.run, "judge": judge_training.run}.get(method,
                                                            mosaic.run)
  try:
    # Structure first (pure Python); run() initialises the process group,
    # then checks values, tokenizer, checkpoint and data before any compute.
    validate.check_structure(config, reference_config(config))
    report = run(config)
  except (validate.ConfigError, checkpoint.IncompatibleCheckpoint,
          checkpoint.UnreadableCheckpoint, ModelFileError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except faults.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(faults.PREEMPTED_EXIT)
  except faults.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if distributed.is_main_process():
    print(judge_training.summary(report) if method == "judge" else
          after_run(config.workdir, report), flush=True)


def after_run(workdir: str, report: Mapping[str, Any]) -> str:
  """Draws `workdir/training_curves.png` from metrics.jsonl and returns the
  final block: where the report, curves and TensorBoard events are, and the
  before/after table with intervals (`viz.summary`)."""
  curves = os.path.join(workdir, plots.CURVES_FILE)
  metrics_file = os.path.join(workdir, plots.METRICS_FILE)
  if os.path.isfile(metrics_file):
    plots.plot_training_curves(plots.read_metrics(metrics_file), curves,
                               title=workdir)
  else:
    curves = None
  extra = [f"{name + ':':<9}{os.path.join(workdir, sub)}"
           for name, sub in (("events", "tensorboard"),)
           if os.path.isdir(os.path.join(workdir, sub))]
  return summary.final_block(
      report, heldout.REPORT_METRICS,
      report_path=os.path.join(workdir, run_lib.REPORT_FILE),
      curves_path=curves, extra=extra)

if __name__ == "__main__":
  cli.main(main)
