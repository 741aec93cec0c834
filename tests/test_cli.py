"""The entry points' one-line errors (exit 2) and their quiet logging.

Every user mistake the console issue lists ends in one `error:` line on
stderr that names the path, name or flag and what is valid, and exit 2.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mosaic_jax.models import hub
from mosaic_jax.models.config import ModelFileError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BASE = os.path.join(ROOT, "mosaic_jax", "assets", "tiny_base")
# absl's INFO line prefix, e.g. "I1203 16:35:11.123456 1234 file.py:12] ...".
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d", re.M)


def _run(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **(env or {}))
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _one_error_line(out) -> str:
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  return lines[0]


def test_train_config_path_typo_names_the_file_and_the_choices():
  line = _one_error_line(_run("experiments.train", "--config=configs/tny.py"))
  assert "--config=configs/tny.py: no such file" in line
  assert "did you mean configs/tiny.py?" in line
  assert "configs/fate_tiny.py" in line


@pytest.mark.parametrize("args, expected", [
    # The typo'd file with an override: ml_collections fails inside parsing.
    (["--config=configs/eval/bultin.py", "--config.policy=expert"],
     ["--config=configs/eval/bultin.py: no such file",
      "did you mean configs/eval/builtin.py?"]),
    (["--config=configs/eval/builtin.py", "--config.policy=expret"],
     ["--config.policy: unknown policy 'expret'", "did you mean 'expert'?",
      "refuse_all", "or a checkpoint directory"]),
    (["--config=configs/eval/builtin.py", "--config.benchmarks=bultin"],
     ["--config.benchmarks: unknown benchmark 'bultin'",
      "did you mean 'builtin'?", "agentdojo, agentharm"]),
    (["--config=configs/eval/builtin.py", "--config.checkpoint=/nonexistent/ck"],
     ["--config.checkpoint=/nonexistent/ck: no such directory"]),
])
def test_evaluate_names_the_flag_and_what_is_valid(args, expected, tmp_path):
  line = _one_error_line(_run("experiments.evaluate", *args,
                              f"--config.output_dir={tmp_path}/out"))
  for text in expected:
    assert text in line, line


def test_evaluate_missing_benchmark_files_names_the_manual_dir(tmp_path):
  line = _one_error_line(_run(
      "experiments.evaluate", "--config=configs/eval/agentharm.py",
      f"--config.manual_dir={tmp_path}/manual",
      f"--config.data_dir={tmp_path}/data",
      f"--config.output_dir={tmp_path}/out"))
  assert f"--config.manual_dir={tmp_path}/manual: benchmark files missing " \
         "for agentharm" in line
  assert "docs/data.md" in line


def test_convert_refuses_an_existing_destination(tmp_path):
  (tmp_path / "dst").mkdir()
  line = _one_error_line(_run("experiments.convert", f"--src={TINY_BASE}",
                              f"--dst={tmp_path}/dst", "--to=orbax"))
  assert f"--dst={tmp_path}/dst already exists" in line


def test_convert_of_an_uncached_hub_id_says_how_to_get_it(tmp_path):
  line = _one_error_line(_run(
      "experiments.convert", "--src=nobody/no-such-model",
      f"--dst={tmp_path}/dst", "--to=orbax",
      env={"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}))
  assert "--src=nobody/no-such-model" in line
  assert str(tmp_path / "cache") in line
  assert "huggingface-cli download nobody/no-such-model" in line


def test_third_party_info_logging_is_off_unless_asked_for(tmp_path):
  """An orbax save logs INFO lines through absl; they show only with
  --verbosity=0."""
  quiet = _run("experiments.convert", f"--src={TINY_BASE}",
               f"--dst={tmp_path}/quiet", "--to=orbax")
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert "wrote" in quiet.stdout
  assert not INFO_LINE.search(quiet.stderr), quiet.stderr[:3000]
  loud = _run("experiments.convert", f"--src={TINY_BASE}",
              f"--dst={tmp_path}/loud", "--to=orbax", "--verbosity=0")
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert INFO_LINE.search(loud.stderr), loud.stderr[:3000]


def _fake_cache(root, repo_id, files):
  """A hub cache laid out as huggingface_hub writes it."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = root / f"models--{repo_id.replace('/', '--')}"
  snapshot = repo / "snapshots" / commit
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  for name in files:
    shutil.copy(os.path.join(TINY_BASE, name), snapshot / name)
  return snapshot


def test_hub_id_resolves_through_the_local_cache(tmp_path, monkeypatch):
  snapshot = _fake_cache(tmp_path, "someone/tiny",
                         ["config.json", "model.safetensors"])
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert hub.resolve("someone/tiny") == str(snapshot)
  # Local paths pass through untouched, hub ids or not.
  assert hub.resolve(TINY_BASE) == TINY_BASE
  from mosaic_jax.models import convert
  cfg = convert.check_model_dir("someone/tiny")
  assert cfg.vocab_size == json.load(
      open(os.path.join(TINY_BASE, "config.json")))["vocab_size"]
  with pytest.raises(ModelFileError, match="someone/other: not a local "
                     "directory, and not in the Hugging Face cache"):
    hub.resolve("someone/other")


def test_demo_exports_to_its_own_directory_with_the_tokenizer(tmp_path):
  out = _run("experiments.demo", "--config=configs/tiny.py",
             f"--config.workdir={tmp_path}/workdir", f"--out={tmp_path}/x")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "reloaded logits identical: True" in out.stdout
  assert (tmp_path / "x" / "tokenizer_config.json").is_file()
  assert (tmp_path / "x" / "model.safetensors").is_file()
  assert not (tmp_path / "workdir").exists()
