r"""Evaluates a policy on the benchmarks of an eval config, or compares runs.

  python -m experiments.evaluate --config=configs/eval/builtin.py \
      --config.policy=expert
  python -m experiments.evaluate --config=configs/eval/agentdojo.py \
      --config.checkpoint=/runs/tiny/reference --config.suites=banking,travel
  python -m experiments.evaluate --config=configs/eval/builtin.py \
      --config.checkpoint=/runs/tiny --config.split=test_ood
  python -m experiments.evaluate --compare /tmp/mosaic_eval/a /tmp/mosaic_eval/b
  python -m experiments.evaluate --compare /runs/tiny   # its before vs after

Outputs go to --config.output_dir/<benchmark>/ (report.json, report.md,
plots, the episode record); running the same command again resumes an
interrupted evaluation. --compare takes two report.json files, benchmark
directories, evaluation run directories or training workdirs (a training
run's `after`, or `PATH:before`), or one training workdir alone (its before
vs after), and prints the side-by-side Markdown with paired differences
over the shared tasks (also written with the scatter plots to
--compare_out, default: the second run's directory + "/compare").
`--config.checkpoint` takes a training workdir (its newest checkpoint), a
checkpoints dir, a step dir, an HF or an orbax model dir.

Exit status 2 with one line on stderr: a bad flag (e.g. an unknown
--config.split), a malformed model directory (config.json, safetensors,
orbax metadata), benchmark file or training checkpoint, or runs --compare
cannot read.
"""
import os

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

from mosaic_jax.benchmarks import jsonfiles
from mosaic_jax.envs import scripted
from mosaic_jax.eval import harness
from mosaic_jax.models.config import ModelFileError
from mosaic_jax.train import checkpoint, validate

# Bad input files and settings: one line on stderr, exit status 2.
INPUT_ERRORS = (validate.ConfigError, ModelFileError, jsonfiles.DatasetError,
                checkpoint.UnreadableCheckpoint)

_CONFIG = config_flags.DEFINE_config_file("config", None, "eval config file")
_COMPARE = flags.DEFINE_multi_string(
    "compare", None, "two runs to compare (report.json, evaluation dir or "
    "training workdir; PATH:before for a training run's before): "
    "--compare A --compare B, --compare A B, or --compare WORKDIR (its "
    "before vs after)")
_COMPARE_OUT = flags.DEFINE_string("compare_out", "",
                                   "where compare.md and plots go")


def check_names(config) -> None:
  """Exits with one line for an unknown `--config.benchmarks` entry or a
  `--config.policy` that is neither a scripted policy nor a directory
  (before any data or model is loaded)."""
  names = [n.strip() for n in str(config.benchmarks).split(",") if n.strip()]
  for name in names or [""]:
    if name not in harness.BENCHMARKS:
      cli.fail(f"--config.benchmarks: unknown benchmark {name!r}"
               f"{cli.did_you_mean(name, harness.BENCHMARKS)} (valid: "
               f"{', '.join(harness.BENCHMARKS)}, comma-separated)")
  if config.checkpoint:
    if not os.path.isdir(config.checkpoint):
      cli.fail(f"--config.checkpoint={config.checkpoint}: no such directory "
               "(a training workdir, checkpoints dir, step dir, or an HF or "
               "orbax model dir)")
    return
  policies = sorted(scripted.POLICIES)
  if config.policy not in scripted.POLICIES and not os.path.isdir(
      config.policy):
    cli.fail(f"--config.policy: unknown policy {config.policy!r}"
             f"{cli.did_you_mean(config.policy, policies)} (valid: "
             f"{', '.join(policies)}, or a checkpoint directory)")


def main(argv):
  if _COMPARE.value:
    # `--compare A B` leaves B among the positional arguments.
    try:
      a, b = harness.compare_paths(list(_COMPARE.value) + argv[1:])
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    where = harness.strip_part(b)
    out = _COMPARE_OUT.value or os.path.join(
        where if os.path.isdir(where) else os.path.dirname(where), "compare")
    try:
      print(harness.compare_runs(a, b, out), end="")
    except (OSError, ValueError, KeyError) as e:
      cli.fail(f"--compare: {cli.one_line(e)}")
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("set --config=configs/eval/NAME.py (or --compare)")
  check_names(_CONFIG.value)
  try:
    harness.run(_CONFIG.value)
  except jsonfiles.DatasetError as e:
    # Its later lines are the download instructions docs/data.md also has.
    cli.fail(f"{cli.one_line(e)} (docs/data.md says where the files come "
             "from)")
  except INPUT_ERRORS as e:
    cli.fail(str(e))
  except AssertionError as e:
    # TFDS asserts when a benchmark's manual directory is missing or empty.
    if not str(e).startswith("Manual directory"):
      raise
    where = _CONFIG.value.manual_dir or "(TFDS default)"
    reason = cli.one_line(e).split(". ")[0]
    cli.fail(f"--config.manual_dir={where}: benchmark files missing for "
             f"{_CONFIG.value.benchmarks} ({reason}); put <benchmark>/ "
             "there as docs/data.md says")
  with open(os.path.join(_CONFIG.value.output_dir, harness.SUMMARY_MD),
            encoding="utf-8") as f:
    print(f.read(), end="")


if __name__ == "__main__":
  cli.main(main)
