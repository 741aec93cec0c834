"""What every `python -m experiments.X` entry point shares.

- `main(fn, config_files=True)`: `absl.app.run` with a flags parser that turns
  a user's mistake in the flags (a typo in `--config=PATH`, an unknown
  `--config.FIELD`, a value of the wrong type) into one line on stderr and
  exit status 2, and that switches third-party INFO logging off.
- `fail(message)`: the same one line and exit status 2, for the mistakes an
  entry point finds itself (an unknown benchmark, a missing file, an existing
  destination). Every message names the path, name or flag and what is valid.
- Logging: absl, orbax, TFDS, grain and JAX log INFO lines by default (5-15
  per orbax checkpoint). They are off unless `--verbosity` is given:
  `--verbosity=0` brings INFO back, `--verbosity=1` adds DEBUG (absl's own
  flag).
"""
from __future__ import annotations

import difflib
import glob
import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags

from mosaic_jax.train import progress

# The loggers quieted and the level they are set to (train.progress).
THIRD_PARTY_LOGGERS = progress.THIRD_PARTY_LOGGERS
QUIET_VERBOSITY = progress.QUIET_VERBOSITY


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on stderr; exits with 2. One line, except a
  config's list of problems (one per line under its title)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def one_line(message: object) -> str:
  """The first non-empty line of `message` (a string or an exception)."""
  text = message.args[0] if (isinstance(message, KeyError)
                             and message.args) else message
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[0] if lines else type(message).__name__


def did_you_mean(name: str, valid: Sequence[str]) -> str:
  """`"; did you mean 'x'?"` for the closest valid name, or ""."""
  close = difflib.get_close_matches(name, list(valid), n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def quiet_logging(verbosity: int | None) -> None:
  """Third-party logging at WARNING, or at `verbosity` (absl's scale) when
  the user gave `--verbosity` (`train.progress.quiet_logging`)."""
  progress.quiet_logging(verbosity)


def _config_file_choices(path: str) -> str:
  """The config files beside `path` (or in configs/), for the message."""
  folder = os.path.dirname(path) or "."
  if not os.path.isdir(folder):
    folder = "configs"
  files = sorted(f for f in glob.glob(os.path.join(folder, "*.py"))
                 if not os.path.basename(f).startswith("_"))
  close = difflib.get_close_matches(path, files, n=1)
  hint = f"did you mean {close[0]}? " if close else ""
  return f"{hint}config files in {folder}/: {', '.join(files) or 'none'}"


def _config_args(argv: Sequence[str]) -> list[tuple[str, str]]:
  """(flag name, file path) of each `--NAME=PATH.py[:arg]` in `argv`."""
  out = []
  for arg in argv[1:]:
    name, eq, value = arg.lstrip("-").partition("=")
    if eq and "." not in name and value.split(":", 1)[0].endswith(".py"):
      out.append((name, value.split(":", 1)[0]))
  return out


def check_config_files(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Exits with one line when a config-file flag's file could not be loaded.

  ml_collections defers that error to the first use of the config (then a
  34-line traceback); this reports it right after parsing.
  """
  for name in list(flag_values):
    flag = flag_values[name]
    value = flag.value
    if type(value).__name__ != "_ErrorConfig":
      continue
    path = getattr(flag, "config_filename", None) or flag.serialize()
    path = path.split(":", 1)[0]
    if not os.path.isfile(path):
      fail(f"--{name}={path}: no such file; {_config_file_choices(path)}")
    fail(f"--{name}={path}: cannot be loaded as a config file "
         f"({one_line(object.__getattribute__(value, '_error'))})")


def parse_flags(argv: list[str], config_files: bool = True) -> list[str]:
  """absl `flags_parser`: one line and exit 2 for a bad flag; then the
  logging level (module docstring)."""
  if config_files:
    # Imported here: it pulls in the training stack, which plain tools
    # (convert, transcripts) do not need.
    from mosaic_jax.train import validate
    try:
      rest = validate.parse_config_flags(argv)
    except OSError as e:
      # An override (`--config.x=1`) of a config file that failed to load
      # fails inside the parser.
      for name, path in _config_args(argv):
        if not os.path.isfile(path):
          fail(f"--{name}={path}: no such file; {_config_file_choices(path)}")
      fail(f"--config: {one_line(e)}")
    check_config_files()
  else:
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:
      fail(str(e))
  verbosity = flags.FLAGS["verbosity"]
  quiet_logging(verbosity.value if verbosity.present else None)
  return rest


def main(fn: Callable[[list[str]], None], config_files: bool = True) -> None:
  """`app.run(fn)` with `parse_flags` (one-line flag errors, quiet logs)."""
  app.run(fn, flags_parser=lambda argv: parse_flags(argv, config_files))
