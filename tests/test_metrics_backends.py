"""`train.metrics.MetricsWriter`: the backends `logging.backends` selects get
the same names; a TensorBoard event file read back has them."""
import glob
import json
import struct
import sys
import types

import ml_collections
import pytest

from mosaic_jax.train import metrics, validate
from configs import base


def read_event_scalars(logdir):
  """{tag: [(step, value)]} from the TFRecord-framed event files under
  `logdir` (length u64, crc u32, Event proto, crc u32)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, round(value.simple_value, 6)))
  return out


def test_tensorboard_event_file_has_the_jsonl_names(tmp_path):
  writer = metrics.MetricsWriter(tmp_path, enabled=True,
                                 backends=("jsonl", "tensorboard"))
  writer.write(1, {"loss": 2.5, "grad_norm": 1.0}, "sft/")
  writer.write(2, {"reward": 0.25, "kl": 0.01}, "rl/")
  writer.write(2, {"utility": 0.5}, "eval/")
  writer.close()
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  jsonl_names = {k for r in rows for k in r if k != "step"}
  scalars = read_event_scalars(tmp_path / "tensorboard")
  assert set(scalars) == jsonl_names == {
      "sft/loss", "sft/grad_norm", "rl/reward", "rl/kl", "eval/utility"}
  assert scalars["sft/loss"] == [(1, 2.5)]
  assert scalars["rl/reward"] == [(2, 0.25)]


def test_backends_come_from_the_config(tmp_path, monkeypatch):
  config = base.base_config("tiny")
  assert tuple(config.logging.backends) == metrics.DEFAULT_BACKENDS
  config.logging.backends = ("jsonl",)
  writer = metrics.MetricsWriter.from_config(tmp_path, config, enabled=True)
  writer.write(1, {"loss": 1.0}, "sft/")
  writer.close()
  assert not (tmp_path / "tensorboard").exists()
  assert (tmp_path / "metrics.jsonl").exists()
  config.logging.backends = ("jsonl", "tensorbord")
  problems = validate.value_problems(config, process_count=1)
  assert any(p.startswith("logging.backends: 'tensorbord' is not one of")
             for p in problems), problems
  with pytest.raises(ValueError, match="unknown backend 'tensorbord'"):
    metrics.MetricsWriter(tmp_path, backends=("tensorbord",), enabled=True)


def test_wandb_gets_the_same_names_or_is_skipped(tmp_path, monkeypatch,
                                                 capsys):
  logged = []

  class Run:
    def log(self, values, step):
      logged.append((step, dict(values)))

    def finish(self):
      logged.append("finished")

  fake = types.SimpleNamespace(init=lambda **kw: (logged.append(kw), Run())[1])
  monkeypatch.setitem(sys.modules, "wandb", fake)
  writer = metrics.MetricsWriter(tmp_path, enabled=True,
                                 backends=("jsonl", "wandb"))
  writer.write(3, {"reward": 0.5}, "rl/")
  writer.close()
  assert logged[0]["mode"] == "offline" and logged[0]["dir"] == str(tmp_path)
  assert logged[1:] == [(3, {"rl/reward": 0.5}), "finished"]
  # Not installed: one warning line, the other backends still write.
  monkeypatch.setitem(sys.modules, "wandb", None)
  writer = metrics.MetricsWriter(tmp_path / "b", enabled=True,
                                 backends=("jsonl", "wandb"))
  writer.write(1, {"loss": 1.0}, "sft/")
  writer.close()
  assert "wandb is not installed" in capsys.readouterr().err
  assert (tmp_path / "b" / "metrics.jsonl").read_text().count("\n") == 1
