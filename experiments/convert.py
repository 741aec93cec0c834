r"""Converts a model between an HF safetensors directory and an orbax checkpoint.

  python -m experiments.convert --src=/ckpt/phi-4 --dst=/ckpt/phi-4-orbax --to=orbax
  python -m experiments.convert --src=/ckpt/phi-4-orbax --dst=/ckpt/phi-4-hf --to=hf

The tokenizer and generation_config.json found beside the source (if any)
are copied along. `--src` may also be a Hugging Face hub id already in the
local cache (`huggingface-cli download ID`).

Exit status 2 with one line on stderr: `--src` is not a model directory (nor
a cached hub id), or `--dst` already exists (nothing is overwritten).
"""
import os

from absl import flags, logging

from experiments import cli

from mosaic_jax import models
from mosaic_jax.models import convert, hub
from mosaic_jax.models.config import ModelFileError

_SRC = flags.DEFINE_string("src", None, "source directory", required=True)
_DST = flags.DEFINE_string("dst", None, "destination directory", required=True)
_TO = flags.DEFINE_enum("to", None, ["orbax", "hf"], "destination format", required=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                           "parameter dtype (default: the source's)")


def _tokenizer_or_none(path):
  if not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
    return None
  return models.load_tokenizer(path)


def main(argv):
  del argv
  if os.path.lexists(_DST.value):
    cli.fail(f"--dst={_DST.value} already exists; give a new directory "
             "(convert never overwrites)")
  try:
    src = hub.resolve(_SRC.value)
    convert.check_model_dir(src)
  except ModelFileError as e:
    cli.fail(f"--src={_SRC.value}: {cli.one_line(e)}")
  kwargs = {"dtype": _DTYPE.value} if _DTYPE.value else {}
  model = convert.load_model(src, **kwargs)
  tokenizer = _tokenizer_or_none(src)
  if _TO.value == "orbax":
    convert.save_orbax(model, _DST.value, tokenizer=tokenizer)
  else:
    models.save_pretrained(model, _DST.value, tokenizer=tokenizer)
  convert.copy_generation_config(src, _DST.value)
  logging.info("wrote %s (%s, %d params)", _DST.value, _TO.value,
               models.count_params(model))
  print(f"wrote {_DST.value} ({_TO.value}, {models.count_params(model):,} params)")


if __name__ == "__main__":
  cli.main(main, config_files=False)
