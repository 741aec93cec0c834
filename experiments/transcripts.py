r"""Episodes of an evaluation as one HTML page to read in a browser.

  python -m experiments.transcripts /tmp/mosaic_eval/builtin
  python -m experiments.transcripts /tmp/mosaic_eval/builtin --filter=failed
  python -m experiments.transcripts RUN --filter=injection,failed \
      --out=/tmp/injection_failures.html

RUN is an evaluation's --config.output_dir, one benchmark's directory, or an
episodes.jsonl file (`experiments.evaluate` writes them; a training workdir
records none: evaluate its checkpoint first). Every `--filter` name must hold
(comma list): failed, passed, unsafe, harmful, injection, benign, privacy,
refused, over_refused, invalid, leaked, followed_injection. The page
(default RUN/transcripts.html, or beside the file) is self-contained: inline
CSS, no script. See `mosaic_jax/viz/transcripts.py` for what it shows.

Exit status 2 with one line on stderr: no episodes under RUN, an unknown
filter, or nothing left after the filters.
"""
import os

from absl import flags

from experiments import cli
from mosaic_jax.viz import transcripts

_FILTER = flags.DEFINE_list(
    "filter", [], f"keep episodes every name holds for: "
    f"{', '.join(transcripts.FILTERS)}")
_OUT = flags.DEFINE_string("out", "", "the HTML file (default: "
                           "RUN/transcripts.html)")
_LIMIT = flags.DEFINE_integer("limit", 0, "at most this many episodes "
                              "(0: all)")


def default_out(run: str) -> str:
  """RUN/transcripts.html, or transcripts.html beside a RUN file."""
  folder = run if os.path.isdir(run) else os.path.dirname(run) or "."
  return os.path.join(folder, "transcripts.html")


def main(argv):
  if len(argv) != 2:
    cli.fail("give one RUN: an evaluation output_dir, a benchmark dir or an "
             "episodes.jsonl (python -m experiments.transcripts RUN)")
  run = argv[1]
  unknown = [f for f in _FILTER.value if f not in transcripts.FILTERS]
  if unknown:
    cli.fail(f"--filter: unknown filter {unknown[0]!r}"
             f"{cli.did_you_mean(unknown[0], list(transcripts.FILTERS))} "
             f"(valid: {', '.join(transcripts.FILTERS)})")
  try:
    episodes = transcripts.read_episodes(run)
  except FileNotFoundError as e:
    cli.fail(str(e))
  shown = transcripts.select(episodes, _FILTER.value)
  if not shown:
    cli.fail(f"{run}: none of its {len(episodes)} episodes passes --filter="
             f"{','.join(_FILTER.value)}")
  if _LIMIT.value:
    shown = shown[:_LIMIT.value]
  note = (f"{len(episodes)} read from {run}"
          + (f"; filter: {', '.join(_FILTER.value)}" if _FILTER.value else ""))
  out = _OUT.value or default_out(run)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    f.write(transcripts.render_page(shown, f"Transcripts: {run}", note))
  print(f"wrote {out} ({len(shown)} of {len(episodes)} episodes)")


if __name__ == "__main__":
  cli.main(main, config_files=False)
