"""Bad files and settings (issue #22, item 4): one line naming the file, key
or field and what is valid, before any compute; the CLIs exit 2.

Damaged checkpoints, model directories (safetensors, config.json, orbax),
configs (random init of a full-size preset, a type error in a config file,
ranges, lengths that leave nothing to train on, the workdir) and benchmark
files (encoding, depth, NaN literals). Each case failed on the code before
the issue: a traceback, the wrong error, or no error.
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import phi4, qwen25_7b, qwen3_4b_thinking, tiny
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.envs import tasks as tasks_lib
from mosaic_jax.benchmarks import agentharm as agentharm_files
from mosaic_jax.benchmarks import atbench as atbench_files
from mosaic_jax.benchmarks import privacylens as privacylens_files
from mosaic_jax.benchmarks.jsonfiles import DatasetError
from mosaic_jax.models import convert, init_model, presets, safetensors_io
from mosaic_jax.models.config import ModelConfig, ModelFileError
from mosaic_jax.models.decoder import abstract_model
from mosaic_jax.methods import mosaic
from mosaic_jax.train import checkpoint, run as run_lib
from mosaic_jax.train import state as state_lib, validate
from tests import benchmark_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = presets.TINY.replace(vocab_size=256, hidden_size=32,
                           intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16)


def _one_line(error) -> str:
  text = str(error)
  assert "\n" not in text, text
  return text


def _tiny(workdir):
  config = tiny.get_config()
  config.workdir = str(workdir)
  config.model.path = ""
  return config


# ------------------------------------------------------------ checkpoints --


def _damage(step_dir, how):
  state_dir = os.path.join(step_dir, "state")
  if how == "no_metadata":
    os.remove(os.path.join(state_dir, "_METADATA"))
  else:  # empty array files
    for name in os.listdir(os.path.join(state_dir, "d")):
      open(os.path.join(state_dir, "d", name), "w").close()


# Orbax's failed read leaves an asyncio loop to be collected, harmlessly.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["empty_arrays", "no_metadata"])
def test_damaged_newest_checkpoint_stops_before_any_compute(tmp_path, how):
  # Steps 1, 2, 3; 3 and 2 damaged: the message names 3 and falls back to
  # 1, the newest step whose metadata reads. check_params (which runs
  # before the model is built) reports it, not a raw orbax error.
  state = state_lib.create_train_state(init_model(CFG, seed=0),
                                       state_lib.OptimizerConfig(), seed=0)
  ckpt = checkpoint.Checkpointer(tmp_path, every=1)
  for step in (1, 2, 3):
    ckpt.save(state.replace(step=jnp.asarray(step, jnp.int32)))
  ckpt.close()
  _damage(tmp_path / "3", how)
  _damage(tmp_path / "2", how)
  ckpt = checkpoint.Checkpointer(tmp_path, every=1)
  params = nnx.state(abstract_model(CFG), nnx.Param)
  with pytest.raises(checkpoint.UnreadableCheckpoint) as e:
    ckpt.check_params(params, "x")
  message = _one_line(e.value)
  assert message.startswith(f"{tmp_path / '3'} is unreadable ("), message
  assert message.endswith("; delete it to resume from step 1"), message
  ckpt.close()


# -------------------------------------------------------- model directories --


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A small HF safetensors directory (config.json + model.safetensors)."""
  path = str(tmp_path_factory.mktemp("hf") / "model")
  convert.save_pretrained(init_model(CFG, seed=0), path)
  return path


def _header(path, edit):
  """Rewrites a safetensors file's JSON header with `edit(header)`."""
  with open(path, "rb") as f:
    raw = f.read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = edit(json.loads(raw[8:8 + n]))
  blob = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _entry(key, **changes):
  def edit(header):
    header[key].update(changes)
    for name in [k for k, v in changes.items() if v is None]:
      del header[key][name]
    return header
  return edit


def _config_json(**changes):
  def mutate(d):
    path = os.path.join(d, "config.json")
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
    hf.update(changes)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(hf, f)
  return mutate


def _safetensors(edit):
  return lambda d: _header(os.path.join(d, "model.safetensors"), edit)


def _index(weight_map):
  def mutate(d):
    with open(os.path.join(d, safetensors_io.INDEX_FILE), "w") as f:
      json.dump({"weight_map": weight_map}, f)
  return mutate


def _write(name, text):
  def mutate(d):
    with open(os.path.join(d, name), "w", encoding="utf-8") as f:
      f.write(text)
  return mutate


EMBED = "model.embed_tokens.weight"
ST = "model.safetensors"
MODEL_CASES = {
    # name: (mutation of a valid HF dir, file named, expected text)
    "header_is_a_list": (_safetensors(lambda h: [h]), ST,
                         "header must be a JSON object"),
    "no_data_offsets": (_safetensors(_entry(EMBED, data_offsets=None)), ST,
                        f"tensor {EMBED!r}: header entry has no "
                        "'data_offsets'"),
    "dtype_cannot_reshape": (_safetensors(_entry(EMBED, dtype="F16")), ST,
                             "dtype F16 and shape [256, 32] need 16384 "
                             "bytes, but data_offsets"),
    "shape_not_the_bytes": (_safetensors(_entry(EMBED, shape=[256, 64])),
                            ST, "shape [256, 64] need 65536 bytes"),
    "relabelled_f32_as_i32": (_safetensors(_entry(EMBED, dtype="I32")), ST,
                              f"tensor {EMBED!r} has dtype I32; weights "
                              "must be one of F64, F32, F16, BF16"),
    "index_leaves_the_directory": (
        _index({EMBED: "../../../../etc/passwd"}), safetensors_io.INDEX_FILE,
        "weight_map names '../../../../etc/passwd', which is outside the "
        "model directory"),
    "config_not_json": (_write("config.json", "{not json"), "config.json",
                        "not a JSON config (JSONDecodeError"),
    "hidden_size_a_string": (_config_json(hidden_size="32"), "config.json",
                             "'hidden_size' must be an integer >= 1, got "
                             "str '32'"),
    "negative_layer_count": (_config_json(num_hidden_layers=-2),
                             "config.json", "'num_hidden_layers' must be an "
                             "integer >= 1, got int -2"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_file_is_one_line_naming_file_and_key(tmp_path, hf_dir,
                                                        case):
  mutate, filename, expected = MODEL_CASES[case]
  d = str(tmp_path / "model")
  shutil.copytree(hf_dir, d)
  mutate(d)
  # What run_lib.Run checks first (before the tokenizer and any weight) ...
  config = _tiny(tmp_path / "run")
  config.model.path = d
  with pytest.raises(validate.ConfigError) as e:
    run_lib.check_model_dir(config)
  message = _one_line(e.value)
  assert f"model.path: {os.path.join(d, filename)}" in message, message
  assert expected in message, message
  # ... and what loading (experiments/evaluate.py) raises.
  with pytest.raises(ModelFileError, match="^" + os.path.join(d, filename)):
    convert.load_model(d)


def test_non_finite_weight_is_refused_at_load_naming_the_tensor(tmp_path,
                                                                hf_dir):
  d = str(tmp_path / "model")
  shutil.copytree(hf_dir, d)
  path = os.path.join(d, ST)
  files = safetensors_io.SafetensorsDir(d)
  entry = files._entry_file("model.norm.weight").entries["model.norm.weight"]
  with open(path, "r+b") as f:
    f.seek(files._entry_file(EMBED).data_start + entry["data_offsets"][0])
    f.write(np.float32(np.nan).tobytes())
  with pytest.raises(safetensors_io.SafetensorsError) as e:
    convert.from_pretrained(d)
  assert _one_line(e.value) == (
      f"{path}: tensor 'model.norm.weight' holds 1 non-finite value(s) (NaN "
      "or inf); re-export the checkpoint")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["missing", "garbage"])
def test_orbax_model_dir_with_bad_metadata_is_one_line(tmp_path, how):
  d = str(tmp_path / "orbax")
  convert.save_orbax(init_model(CFG, seed=0), d)
  meta = os.path.join(d, convert.ORBAX_PARAMS, "_METADATA")
  os.remove(meta)
  if how == "garbage":
    with open(meta, "w", encoding="utf-8") as f:
      f.write("\x00garbage{")
  params_dir = os.path.join(d, convert.ORBAX_PARAMS)
  for load in (convert.check_model_dir, convert.load_orbax):
    with pytest.raises(ModelFileError) as e:
      load(d)
    assert _one_line(e.value).startswith(f"{params_dir}: "), str(e.value)
    assert "re-export the model" in str(e.value)


def test_empty_model_dir_fails_before_the_tokenizer(tmp_path):
  # Was a sentencepiece traceback from the tokenizer loaded beside it.
  os.makedirs(tmp_path / "empty")
  config = _tiny(tmp_path / "run")
  config.model.path = str(tmp_path / "empty")
  with pytest.raises(validate.ConfigError) as e:
    mosaic.run(config)
  assert _one_line(e.value).endswith(
      f"model.path: {tmp_path / 'empty'}: no config.json (found: nothing); "
      "expected an HF safetensors or orbax model directory")
  assert not os.path.exists(tmp_path / "run")


def test_load_model_names_a_path_that_is_no_model(tmp_path):
  # The one loader (training, evaluation, the judge): a directory that is
  # neither HF, orbax nor a training checkpoint, and a path that is absent.
  notes = tmp_path / "notes"
  os.makedirs(notes)
  (notes / "readme.txt").write_text("not a model")
  for path, found in ((notes, "readme.txt"), (tmp_path / "absent", "nothing")):
    with pytest.raises(ModelFileError) as e:
      convert.load_model(str(path))
    assert _one_line(e.value) == (
        f"{path}: no config.json (found: {found}); expected an HF "
        "safetensors or orbax model directory")


# ---------------------------------------------------------------- configs --


@pytest.mark.parametrize("module", [phi4, qwen25_7b, qwen3_4b_thinking])
def test_full_size_config_without_model_path_refuses_to_start(tmp_path,
                                                              module):
  # phi4 used to die in the process group ("coordinator_address should be
  # defined"); qwen25_7b started a random 7.6B init.
  config = module.get_config()
  config.workdir = str(tmp_path / "run")
  with pytest.raises(validate.ConfigError) as e:
    mosaic.run(config)
  message = _one_line(e.value)
  assert f"model.path: empty, so model.preset={config.model.preset!r}" in (
      message)
  assert "--config.model.random_init=True" in message
  config.model.random_init = True
  assert validate.start_problems(config) == []


@pytest.mark.parametrize("field,value,expected", [
    ("optimizer.lr", -0.1, "optimizer.lr: must be a finite number > 0, got "
     "-0.1"),
    ("optimizer.lr", math.inf, "optimizer.lr: must be a finite number > 0"),
    ("sft.lr", math.nan, "sft.lr: must be a finite number > 0, got nan"),
    ("sft.lr", 0.0, "sft.lr: must be a finite number > 0, got 0.0"),
    ("rl.kl_beta", -5.0, "rl.kl_beta: must be a finite number >= 0, got "
     "-5.0"),
    ("rl.kl_beta", math.nan, "rl.kl_beta: must be a finite number >= 0"),
])
def test_out_of_range_settings_are_refused(tmp_path, field, value, expected):
  config = _tiny(tmp_path / "run")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validate.ConfigError) as e:
    validate.check_start(config)
  message = _one_line(e.value)
  assert message.startswith("the config cannot run (nothing was run): ")
  assert expected in message, message
  assert expected in validate.value_problems(config, process_count=1)[0]


def test_workdir_that_cannot_be_written_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  config = _tiny(tmp_path / "file" / "run")
  with pytest.raises(validate.ConfigError) as e:
    mosaic.run(config)
  assert _one_line(e.value).endswith(
      f"workdir: {str(tmp_path / 'file' / 'run')!r} cannot be created: "
      f"{str(tmp_path / 'file')!r} is a file, not a directory")
  # Where only trying tells (root may write anywhere os.access can see):
  # /proc takes no new directories.
  with pytest.raises(validate.ConfigError,
                     match=r"^workdir: cannot write to '/proc/mosaic_run' "
                     r"\(FileNotFoundError"):
    run_lib.check_workdir("/proc/mosaic_run")


@pytest.fixture(scope="module")
def heldout():
  return tasks_lib.all_tasks("test")


@pytest.mark.parametrize("field,value,expected", [
    ("rollout.max_total_length", 20, "rollout.max_total_length=20 cannot "
     "hold a prompt plus one turn: task "),
    ("sft.max_len", 8, "sft.max_len=8 drops every demonstration"),
])
def test_lengths_that_leave_nothing_to_train_on_stop_the_run(
    tmp_path, heldout, field, value, expected):
  tok = load_tiny_tokenizer()
  config = _tiny(tmp_path / "run")
  assert validate.length_problems(
      config, *run_lib.measured_lengths(config, tok, heldout)) == []
  section, name = field.split(".")
  config[section][name] = value
  if field == "rollout.max_total_length":
    config.rollout.max_tokens_per_turn = 16
  with pytest.raises(validate.ConfigError) as e:
    validate.check_lengths(config,
                           *run_lib.measured_lengths(config, tok, heldout))
  assert expected in _one_line(e.value)
  assert "zero tokens" in str(e.value) or "nothing to train" in str(e.value)


def _cli(*args, timeout=180):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_type_error_in_a_config_file_is_one_line(tmp_path):
  config_file = tmp_path / "typed.py"
  config_file.write_text(
      "from configs import tiny\n\n\ndef get_config():\n"
      "  c = tiny.get_config()\n  c.rl.group_size = '8'\n  return c\n")
  out = _cli("experiments.train", f"--config={config_file}",
             f"--config.workdir={tmp_path / 'run'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: flag --config={config_file}: Error "
                         "whilst parsing config file (File "
                         f"\"{config_file}\", line 6): TypeError: Could not "
                         "override field 'group_size'"), line
  assert not os.path.exists(tmp_path / "run")


def test_cli_full_size_config_without_model_path_exits_2(tmp_path):
  out = _cli("experiments.train", "--config=configs/phi4.py",
             f"--config.workdir={tmp_path / 'run'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert ("error: the config cannot run (nothing was run): model.path: "
          "empty, so model.preset='phi4'") in out.stderr
  assert not os.path.exists(tmp_path / "run")


def test_cli_evaluate_of_an_empty_model_dir_exits_2(tmp_path):
  os.makedirs(tmp_path / "empty")
  out = _cli("experiments.evaluate", "--config=configs/eval/builtin.py",
             f"--config.checkpoint={tmp_path / 'empty'}",
             f"--config.output_dir={tmp_path / 'out'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'empty'}: no config.json (found: nothing); "
      "expected an HF safetensors or orbax model directory")


# ------------------------------------------------------- benchmark files --


def _agentharm(tmp_path):
  return fx.write_json(tmp_path / "harmful_behaviors_test_public.json",
                       {"behaviors": [fx.behavior("1-1"), fx.behavior("2-1")]})


def _atbench(tmp_path):
  return fx.write_json(tmp_path / "atbench.json",
                       [fx.trajectory_record("a", 0),
                        fx.trajectory_record("b", 1)])


def _privacylens(tmp_path):
  return fx.write_json(tmp_path / "privacylens.json",
                       [fx.privacy_item("main1"), fx.privacy_item("main2")])


LOADERS = {"agentharm": (_agentharm, agentharm_files.load_behaviors),
           "atbench": (_atbench, atbench_files.load_trajectories),
           "privacylens": (_privacylens, privacylens_files.load_items)}


def _latin1(path):
  text = path.read_text(encoding="utf-8").replace("Do the thing.", "Café")
  text = text.replace("Tidy my files.", "Café").replace("A story.", "Café")
  path.write_bytes(text.encode("latin-1"))
  return "not UTF-8: byte 0xe9 at offset"


def _deep(path):
  data = json.loads(path.read_text(encoding="utf-8"))
  records = data["behaviors"] if isinstance(data, dict) else data
  records[1]["extra"] = "@"
  depth = 100_000
  path.write_text(json.dumps(data).replace('"@"', "[" * depth + "]" * depth))
  return "nested deeper than 64 levels at line 1"


def _nan(path):
  data = json.loads(path.read_text(encoding="utf-8"))
  records = data["behaviors"] if isinstance(data, dict) else data
  records[1]["score"] = float("nan")
  path.write_text(json.dumps(data))  # Python writes the NaN literal
  return "non-finite number NaN at line 1"


@pytest.mark.parametrize("problem", ["latin1", "deep", "nan"])
@pytest.mark.parametrize("benchmark", sorted(LOADERS))
def test_benchmark_file_problems_name_file_and_record(tmp_path, benchmark,
                                                      problem):
  write, load = LOADERS[benchmark]
  path = write(tmp_path)
  expected = {"latin1": _latin1, "deep": _deep, "nan": _nan}[problem](path)
  with pytest.raises(DatasetError) as e:
    load(path)
  message = _one_line(e.value)
  assert message.startswith(f"{path}: "), message
  assert expected in message, message
  record = "behaviors[1]" if benchmark == "agentharm" else "[1]"
  if problem == "latin1":
    record = record.replace("1", "0")  # the first record holds the byte
  assert f"record {record}" in message, message
