"""Reliability (issue #11): non-finite updates, bad configuration, tokenizers
and checkpoints that cannot run, SIGTERM, and loading that never executes
code found in a model or checkpoint directory.

Crash and preemption tests of whole runs are in tests/test_train_loop.py;
the model-output fuzz is tests/test_fuzz.py.
"""
import json
import os
import pickle
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base, fate_settings, fate_tiny, tiny
from mosaic_jax import batches
from mosaic_jax import data as data_lib
from mosaic_jax.agent.tokenizer import load_tiny_tokenizer
from mosaic_jax.models import convert, init_model, presets
from mosaic_jax.methods import mosaic
from mosaic_jax.train import checkpoint, faults, run as run_lib
from mosaic_jax.train import state as state_lib, steps, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = presets.TINY.replace(vocab_size=256, hidden_size=32,
                           intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16)


def _reference(config):
  """configs/base.py's fields (plus `fate`), as experiments/train.py builds
  them."""
  reference = base.base_config(config.model.preset)
  if "fate" in config:
    fate_settings.add_fate(reference)
  return reference


def _tiny(workdir="/tmp/unused"):
  config = tiny.get_config()
  config.workdir = workdir
  config.model.path = ""
  return config


# ------------------------------------------------------- non-finite updates --


def test_non_finite_result_of_a_finite_gradient_is_not_applied(tmp_path):
  # An infinite learning rate: loss and gradient are finite, the updated
  # params are not. The step keeps the old params and says so.
  model = init_model(CFG, seed=0)
  # The config refuses it (`OptimizerConfig.field_problems`), so the fault
  # is set past that check, on purpose.
  with pytest.raises(ValueError, match=r"^optimizer.lr: must be a finite "
                     r"number > 0, got inf$"):
    state_lib.OptimizerConfig(lr=float("inf"))
  opt = state_lib.OptimizerConfig(lr=1.0, warmup_steps=0, total_steps=10)
  object.__setattr__(opt, "lr", float("inf"))
  state = state_lib.create_train_state(model, opt, seed=0)
  before = jax.tree.map(np.asarray, state.params)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 16)), jnp.int32)
  batch = batches.SFTBatch(tokens, jnp.ones_like(tokens), jnp.ones_like(tokens))
  step = steps.make_sft_step(steps.SFTConfig(donate=False))
  state, metrics = step(state, batch)
  assert float(metrics["skipped"]) == 1.0
  assert np.isfinite(float(metrics["loss"]))
  assert np.isfinite(float(metrics["grad_norm"]))
  assert int(state.step) == 1
  for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(old, np.asarray(new))
  assert bool(steps.all_finite(state.opt_state))
  # The checkpointer refuses NaN params outright and writes nothing.
  poisoned = state.replace(params=jax.tree.map(
      lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.params))
  ckpt = checkpoint.Checkpointer(tmp_path, every=1)
  with pytest.raises(ValueError, match="refusing to checkpoint non-finite"):
    ckpt.save(poisoned, force=True)
  assert ckpt.all_steps() == [] and os.listdir(tmp_path) == []
  ckpt.close()


def test_guard_reports_step_and_tasks_and_stops_after_the_limit(tmp_path,
                                                                capsys):
  path = str(tmp_path / faults.NONFINITE_FILE)
  guard = faults.NonFiniteGuard(2, path)
  bad = {"skipped": 1.0, "loss": float("nan"), "grad_norm": float("inf")}
  good = {"skipped": 0.0, "loss": 1.0, "grad_norm": 1.0}
  guard.update("rl", 7, bad, ["banking/harmful/3"])
  guard.update("rl", 8, good, ["drive/benign/1"])  # resets the count
  guard.update("rl", 9, bad, ["a", "b"])
  with pytest.raises(faults.NonFiniteError,
                     match=r"rl step 10: 2 non-finite updates in a row "
                     r"\(config.max_nonfinite_steps=2\)") as e:
    guard.update("rl", 10, bad, ["c"])
  assert path in str(e.value) and "learning rate" in str(e.value)
  records = [json.loads(line) for line in open(path, encoding="utf-8")]
  assert [(r["step"], r["in_a_row"], r["task_ids"]) for r in records] == [
      (7, 1, ["banking/harmful/3"]), (9, 1, ["a", "b"]), (10, 2, ["c"])]
  assert records[0]["loss"] == "nan" and records[0]["grad_norm"] == "inf"
  assert "rl step 7: non-finite update skipped" in capsys.readouterr().err
  never = faults.NonFiniteGuard(0)
  for step in range(10):
    never.update("sft", step, bad, [])
  assert never.in_a_row == 10


# ---------------------------------------------------------- configuration --


def test_unknown_mistyped_and_missing_fields_name_the_fix():
  config = _tiny()
  config.rl.kl_bta = 0.1
  config.sft = ml_collections.ConfigDict({**config.sft.to_dict(),
                                          "steps": "30"})
  config.optimizer = ml_collections.ConfigDict({**config.optimizer.to_dict(),
                                                "lr": True})
  del config.rl["l0"]
  config.evaluation = ml_collections.ConfigDict({"every": 1})
  problems = validate.structure_problems(config, _reference(config))
  new_field = " (a new field is declared in configs/base.py)"
  assert sorted(problems) == sorted([
      "rl.kl_bta: unknown field; did you mean rl.kl_beta?" + new_field,
      "sft.steps: expected int (like 100), got str '30'",
      "optimizer.lr: expected float (like 1e-06), got bool True",
      "rl.l0: missing; the reference value is 400.0",
      "evaluation: unknown field; did you mean eval?" + new_field])
  # Every shipped config matches; an int where a float is expected is fine.
  for module in (tiny, fate_tiny):
    shipped = module.get_config()
    shipped.optimizer.lr = 1
    assert validate.structure_problems(shipped, _reference(shipped)) == []
  with pytest.raises(validate.ConfigError, match="5 problem"):
    validate.check_structure(config, _reference(config))


def test_values_that_cannot_run_name_the_field():
  config = _tiny()
  config.mesh.data = 3  # 8 simulated devices
  config.rl.judge = "oracle"
  config.sft.microbatch = 3
  config.rl.group_size = 1
  config.sft.mix = {"experts": 1.0}
  config.rollout.strategy = "beam"
  problems = validate.value_problems(config)
  text = "\n".join(problems)
  assert len(problems) == 7, text
  assert "mesh: 8 devices cannot be split by config.mesh.data=3" in text
  assert ("rl.judge: 'oracle' is not one of 'hybrid', 'llm', "
          "'verifier_rank'") in text
  assert "sft.microbatch=3 does not divide sft.batch per process=8" in text
  assert "rl.group_size=1" in text and "set it >= 2" in text
  assert "sft.mix.experts: 'experts' is not one of" in text
  assert "rl.microbatch=8 does not divide" in text  # 2 tasks x G=1
  assert "rollout.strategy: 'beam'" in text


def test_run_fails_before_any_compute(tmp_path):
  # Impossible mesh: nothing is built, no workdir appears.
  config = _tiny(str(tmp_path / "run"))
  config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(validate.ConfigError, match=r"config.mesh.data=3"):
    mosaic.run(config)
  assert not os.path.exists(tmp_path / "run")
  # A tokenizer without a chat template or a protocol end-of-turn token.
  tok = load_tiny_tokenizer()
  tok.chat_template = None
  tok.save_pretrained(tmp_path / "tok")
  config = _tiny(str(tmp_path / "run"))
  config.tokenizer = str(tmp_path / "tok")
  with pytest.raises(validate.ConfigError, match="no chat template"):
    mosaic.run(config)
  assert not os.path.exists(tmp_path / "run")
  tok = load_tiny_tokenizer()
  problems = validate.tokenizer_problems(tok, 2048, "x")
  assert problems == []
  tok.eos_token = "<|im_start|>"
  tok.pad_token = None
  problems = validate.tokenizer_problems(tok, 1024, "here")
  assert len(problems) == 3, problems
  assert "no pad token" in problems[0]
  assert "eos token '<|im_start|>' is not an end-of-turn token" in problems[1]
  assert "2048 token ids but the model has 1024 embedding rows" in problems[2]
  assert all("this one is from here" in p for p in problems)


def test_checkpoint_of_another_model_is_refused_before_restore(tmp_path):
  # A workdir whose checkpoint holds a model unlike configs/tiny.py's.
  other = state_lib.create_train_state(init_model(CFG, seed=0),
                                       state_lib.OptimizerConfig(), seed=0)
  ckpt = checkpoint.Checkpointer(tmp_path / "run" / "checkpoints")
  assert ckpt.save(other, {"phase": "sft"}, force=True)
  ckpt.close()
  config = _tiny(str(tmp_path / "run"))
  with pytest.raises(checkpoint.IncompatibleCheckpoint) as e:
    mosaic.run(config)
  message = str(e.value)
  assert str(tmp_path / "run" / "checkpoints" / "0") in message
  assert "model.preset='tiny'" in message and "--config.workdir" in message
  assert "parameter 'blocks/" in message or "parameter 'embed" in message


def test_empty_task_split_names_the_directory(monkeypatch, tmp_path):
  data = ml_collections.ConfigDict(dict(data_dir=str(tmp_path)))
  monkeypatch.setattr(data_lib, "source",
                      lambda data, name, split: [] if split == "train"
                      else [object()])
  with pytest.raises(validate.ConfigError,
                     match=r"split 'train' has 0 tasks.*delete that "
                     "directory") as e:
    run_lib.check_task_splits(data)
  assert str(tmp_path) in str(e.value)


def test_cli_rejects_a_config_file_typo_before_any_compute(tmp_path):
  config_file = tmp_path / "typo.py"
  config_file.write_text(
      "from configs import tiny\n\n\ndef get_config():\n"
      "  c = tiny.get_config()\n  c.rl.group_sise = 8\n  return c\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  # Tiny step counts bound the cost should the check ever let it through.
  out = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--config={config_file}",
       f"--config.workdir={tmp_path / 'run'}", "--config.sft.steps=0",
       "--config.rl.steps=0", "--config.eval.max_tasks=4"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert ("rl.group_sise: unknown field; did you mean rl.group_size?"
          in out.stderr)
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("module,config,flag,expected", [
    ("experiments.evaluate", "configs/eval/builtin.py", "--config.workdir=/x",
     "error: --config.workdir: the config has no field 'workdir'"),
    ("experiments.train", "configs/tiny.py", "--config.rl.group_sise=8",
     "error: --config.rl.group_sise: the config has no field 'group_sise'; "
     'Did you mean "group_size"'),
    ("experiments.train", "configs/tiny.py", "--config.rl.steps=abc",
     "error: flag --config.rl.steps=abc: invalid literal for int()"),
])
def test_cli_names_a_bad_override_in_one_line(module, config, flag,
                                              expected):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", module, f"--config={config}",
                        flag], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert expected in out.stderr
  assert "Traceback" not in out.stderr


# ------------------------------------------------------------- preemption --


def test_resuming_with_a_changed_config_names_each_change(tmp_path):
  config = tiny.get_config()
  path = str(tmp_path / run_lib.RUN_CONFIG_FILE)
  assert run_lib.config_changes(path, config) == []  # a fresh workdir
  with open(path, "w", encoding="utf-8") as f:
    json.dump(run_lib.flat_config(config), f)
  assert run_lib.config_changes(path, config) == []
  config.seed = 1
  config.rl.reward = "scalar"
  config.sft.mix = dict(expert=1.0)
  changes = run_lib.config_changes(path, config)
  assert changes == ["rl.reward: 'pairwise' -> 'scalar'", "seed: 0 -> 1",
                     "sft.mix.expert: 0.1 -> 1.0",
                     "sft.mix.follow_injection: 0.25 -> '<absent>'",
                     "sft.mix.reckless: 0.65 -> '<absent>'"]


def test_sigterm_becomes_a_flag_and_the_handler_is_restored():
  previous = signal.getsignal(signal.SIGTERM)
  preemption = faults.Preemption()
  assert not preemption.requested()
  os.kill(os.getpid(), signal.SIGTERM)
  assert preemption.requested()
  preemption.close()
  assert signal.getsignal(signal.SIGTERM) == previous


def test_fault_spec_is_checked(monkeypatch):
  assert faults.parse_fault("kill@checkpoint-write:4") == (
      signal.SIGKILL, "checkpoint-write", 4)
  for spec in ("kill:4", "stop@update:4", "kill@evaluate:4", "kill@update:x"):
    with pytest.raises(ValueError, match=faults.FAULT_ENV):
      faults.parse_fault(spec)
  monkeypatch.setenv(faults.FAULT_ENV, "kill@update:4")
  faults.fault_point("update", 3)  # another step: nothing happens
  faults.fault_point("rollout", 4)


# --------------------------------------------------------------- security --


class _Payload:
  """Unpickling this creates `path`: proof that a pickle was loaded."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def _plant(directory, marker):
  """Pickles and remote-code hooks that would create `marker` if run."""
  blob = pickle.dumps(_Payload(marker))
  for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt",
               "evil.pkl"):
    with open(os.path.join(directory, name), "wb") as f:
      f.write(blob)
  code = f"open({marker!r}, 'w').close()\n"
  for name in ("modeling_evil.py", "tokenization_evil.py", "__init__.py"):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      f.write(code)
  auto_map = {"AutoModelForCausalLM": "modeling_evil.Evil",
              "AutoTokenizer": ["tokenization_evil.Evil", None]}
  for name in ("config.json", "tokenizer_config.json"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
      data["auto_map"] = auto_map
      with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def test_loading_never_runs_code_from_a_checkpoint_directory(tmp_path):
  marker = str(tmp_path / "pwned")
  model_dir = str(tmp_path / "model")
  model = init_model(CFG, seed=0)
  convert.save_orbax(model, model_dir, tokenizer=load_tiny_tokenizer())
  _plant(model_dir, marker)
  convert.load_model(model_dir)
  try:
    convert.load_tokenizer(model_dir)
  except (ValueError, OSError):
    pass  # refusing the remote-code tokenizer is fine; running it is not
  # Without safetensors, an HF directory is refused, never unpickled.
  hf_dir = str(tmp_path / "hf")
  os.makedirs(hf_dir)
  with open(os.path.join(hf_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(CFG.to_hf(), f)
  _plant(hf_dir, marker)
  with pytest.raises(FileNotFoundError, match="safetensors only"):
    convert.from_pretrained(hf_dir)
  # Train checkpoints: pickles beside orbax's files are never read.
  state = state_lib.create_train_state(model, state_lib.OptimizerConfig(),
                                       seed=0)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(state, {"phase": "sft"}, force=True)
  for item in ("", "state", "extra"):
    _plant(os.path.join(ckpt.directory, "0", item), marker)
  restored, extra = ckpt.restore(state)
  assert extra == {"phase": "sft"} and int(restored.step) == 0
  ckpt.close()
  assert not os.path.exists(marker)


# Orbax's failed read leaves an asyncio loop to be collected, harmlessly.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_checkpoint_names_the_step_and_the_fallback(tmp_path):
  state = state_lib.create_train_state(init_model(CFG, seed=0),
                                       state_lib.OptimizerConfig(), seed=0)
  ckpt = checkpoint.Checkpointer(tmp_path, every=1)
  for step in (1, 2):
    ckpt.save(state.replace(step=jnp.asarray(step, jnp.int32)))
  for folder, _, files in os.walk(tmp_path / "2" / "state"):
    for name in files:
      if os.path.basename(folder) == "d":
        with open(os.path.join(folder, name), "r+b") as f:
          f.truncate(4)
  with pytest.raises(checkpoint.UnreadableCheckpoint,
                     match=rf"{tmp_path / '2'} is unreadable .*delete it to "
                     "resume from step 1"):
    ckpt.restore(state)
  _, extra = ckpt.restore(state, step=1)
  assert extra == {}
  ckpt.close()
