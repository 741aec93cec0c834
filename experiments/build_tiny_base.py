r"""Builds the committed tiny base model: long SFT, exported as HF safetensors.

  # stage 1: 450 SFT steps from scratch (~20 min on 2 idle CPUs)
  python -m experiments.build_tiny_base --config=configs/tiny_base.py:scratch \
      --out=/tmp/tiny_base_scratch
  # stage 2: 600 steps on fresh entities from stage 1 (~10 min)
  python -m experiments.build_tiny_base --config=configs/tiny_base.py:fresh \
      --config.model.path=/tmp/tiny_base_scratch
  python -m experiments.build_tiny_base --config.sft.steps=5 \
      --config.model.path=mosaic_jax/assets/tiny_base --out=/tmp/b   # smoke

Runs the SFT phase of `configs/tiny_base.py` (resumable under its workdir),
evaluates the result on the tiny held-out subset, and writes
`mosaic_jax/assets/tiny_base/` (or --out): `config.json`, `model.safetensors`,
the tokenizer with its chat template, and `build_info.json` (steps, final SFT
loss, the held-out metrics, wall time). `configs/tiny.py` starts from it.
"""
import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

from mosaic_jax.models import convert, presets
from mosaic_jax.eval import heldout
from mosaic_jax.methods import mosaic
from mosaic_jax.train import run as run_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny_base.py",
                                          "the base-building config")
_OUT = flags.DEFINE_string("out", str(presets.TINY_BASE_DIR),
                           "where the HF checkpoint is written")


def _last_sft_loss(workdir: str) -> float | None:
  loss = None
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      loss = json.loads(line).get("sft/loss", loss)
  return loss


def main(argv):
  del argv
  config = _CONFIG.value
  if config.rl.steps:
    raise app.UsageError("the base is SFT only: set rl.steps=0")
  if config.sft.fresh_entities and not config.model.path:
    raise app.UsageError("the fresh stage continues from stage 1: set "
                         "--config.model.path=<the scratch stage's --out>")
  start = time.perf_counter()
  report = mosaic.run(config)
  model = convert.load_model(os.path.join(config.workdir,
                                          run_lib.REFERENCE_DIR))
  convert.save_pretrained(model, _OUT.value,
                          tokenizer=run_lib.build_tokenizer(config))
  info = {"config": "configs/tiny_base.py", "init": config.model.path or None,
          "fresh_entities": config.sft.fresh_entities,
          "sft_steps": config.sft.steps,
          "sft_lr": config.sft.lr, "seed": config.seed,
          "sft_mix": dict(config.sft.mix),
          "final_sft_loss": _last_sft_loss(config.workdir),
          # `after`: evaluated now with the current metric definitions
          # (`before`, the same model, may be read back from an older run).
          "test": {k: heldout.headline(report["after"]["test"])[k]
                   for k in (*heldout.REPORT_METRICS, "harmful_executed",
                             "validity", "refusal_rate", "mean_turns")},
          "eval_tasks": report["eval_tasks"],
          "wall_s": round(time.perf_counter() - start, 1)}
  with open(os.path.join(_OUT.value, "build_info.json"), "w",
            encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  print(json.dumps(info, indent=2), flush=True)


if __name__ == "__main__":
  cli.main(main)
