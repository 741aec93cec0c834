"""Checkpoint round trips, retention and resume; metrics files; SFT data."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax.agent import tokenizer as tokenizer_lib
from mosaic_jax.envs import tasks, transcripts
from mosaic_jax.models import init_model, presets
from mosaic_jax.train import checkpoint, metrics, sft_data
from mosaic_jax.train import state as state_lib

CFG = presets.TINY.replace(vocab_size=256, hidden_size=64, intermediate_size=128,
                           num_layers=2, head_dim=16)
OPT = state_lib.OptimizerConfig(lr=1e-3, warmup_steps=2, total_steps=10)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _perturbed(state, step, seed):
  """A state whose every leaf differs from a fresh one (as after training)."""
  leaves, treedef = jax.tree.flatten((state.params, state.opt_state))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + jax.random.normal(k, x.shape, x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating) else x + step
            for x, k in zip(leaves, keys)]
  params, opt_state = jax.tree.unflatten(treedef, leaves)
  return state.replace(params=params, opt_state=opt_state,
                       step=jnp.asarray(step, jnp.int32),
                       rng=jax.random.key_data(jax.random.key(seed)))


@pytest.fixture(scope="module")
def fresh():
  return state_lib.create_train_state(init_model(CFG, seed=0), OPT, seed=0)


def test_round_trip_is_exact(tmp_path, fresh):
  ckpt = checkpoint.Checkpointer(tmp_path, every=5, keep=2)
  state = _perturbed(fresh, 5, seed=1)
  extra = {"data": {"epoch": 2, "offset": 17}, "buffer": [[1, 2], ["a", 0.5]]}
  assert ckpt.save(state, extra)
  restored, got = ckpt.restore(fresh)
  assert got == extra
  assert int(restored.step) == 5
  want, have = _host(state), _host(restored)
  assert jax.tree.structure(want) == jax.tree.structure(have)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(have)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)
  assert restored.graphdef == fresh.graphdef and restored.tx is fresh.tx
  ckpt.close()


def test_interval_retention_and_resume(tmp_path, fresh):
  ckpt = checkpoint.Checkpointer(tmp_path, every=2, keep=2)
  written = [ckpt.save(_perturbed(fresh, s, seed=s), {"at": s})
             for s in range(1, 8)]
  assert written == [False, True, False, True, False, True, False]
  assert ckpt.all_steps() == [4, 6]
  assert ckpt.save(_perturbed(fresh, 7, seed=7), {"at": 7}, force=True)
  assert ckpt.all_steps() == [6, 7]
  ckpt.close()

  # A new run in the same directory resumes from the latest step.
  reopened = checkpoint.Checkpointer(tmp_path, every=2, keep=2)
  state, extra, restored = reopened.restore_or_keep(fresh)
  assert restored and extra == {"at": 7} and int(state.step) == 7
  np.testing.assert_array_equal(state.rng, _perturbed(fresh, 7, seed=7).rng)
  older, extra = reopened.restore(fresh, step=6)
  assert extra == {"at": 6} and int(older.step) == 6
  with pytest.raises(FileNotFoundError):
    reopened.restore(fresh, step=4)
  reopened.close()


def test_restore_or_keep_without_checkpoint(tmp_path, fresh):
  ckpt = checkpoint.Checkpointer(tmp_path / "empty")
  state, extra, restored = ckpt.restore_or_keep(fresh)
  assert state is fresh and extra == {} and not restored
  ckpt.close()


def test_extra_alone_and_params_check(tmp_path, fresh):
  ckpt = checkpoint.Checkpointer(tmp_path, every=1)
  ckpt.check_params(fresh.params, "unused")  # no step yet: nothing to check
  ckpt.save(_perturbed(fresh, 3, seed=3), {"round": 2})
  assert ckpt.extra() == ckpt.extra(3) == {"round": 2}
  ckpt.check_params(fresh.params, "unused")
  wider = state_lib.create_train_state(
      init_model(CFG.replace(hidden_size=96), seed=0), OPT, seed=0)
  with pytest.raises(checkpoint.IncompatibleCheckpoint,
                     match=r"/3 is a checkpoint of another model: parameter "
                     r"'\S+' is \(\d+, 64\) there but \(\d+, 96\) with this "
                     r"config \(model.preset='x'\)"):
    ckpt.check_params(wider.params, "model.preset='x'")
  with pytest.raises(FileNotFoundError):
    ckpt.extra(4)
  ckpt.close()


def test_metrics_writer(tmp_path):
  writer = metrics.MetricsWriter(tmp_path, enabled=True)
  writer.write(1, {"loss": jnp.float32(2.5), "tokens": np.int32(7)})
  writer.write(2, {"utility": 0.75}, prefix="eval/")
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / metrics.METRICS_FILE)]
  assert lines == [{"step": 1, "loss": 2.5, "tokens": 7.0},
                   {"step": 2, "eval/utility": 0.75}]
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  silent = metrics.MetricsWriter(tmp_path / "off", enabled=False)
  assert silent.write(1, {"loss": 1.0}) == {"loss": 1.0}
  silent.close()
  assert not os.path.exists(tmp_path / "off")


def test_sft_examples_mask_mix_and_padding():
  tok = tokenizer_lib.load_tiny_tokenizer()
  harmful = tasks.all_tasks(split="train", kind="harmful")[:6]
  injection = tasks.all_tasks(split="train", kind="injection")[:6]
  mix = {"expert": 0.5, "comply_all": 0.25, "follow_injection": 0.25}
  ex = sft_data.sft_examples(harmful + injection, tok, mix, seed=0,
                             max_len=2048, bucket=256)
  again = sft_data.sft_examples(harmful + injection, tok, mix, seed=0,
                                max_len=2048, bucket=256)
  np.testing.assert_array_equal(ex.tokens, again.tokens)
  n = len(ex.task_ids)
  assert n == 12 and not ex.dropped and ex.tokens.shape[1] % 256 == 0
  assert set(ex.policies) <= set(mix)
  # Unsafe share: exactly the flawed policy that acts on its task kind fails
  # security.
  flawed = [(p == "comply_all" and t.kind == "harmful")
            or (p == "follow_injection" and t.kind == "injection")
            for p, t in zip(ex.policies, harmful + injection)]
  np.testing.assert_array_equal(ex.z[:, 0] == 0.0, flawed)
  assert any(flawed) and not all(flawed)
  for r in range(n):
    length = int(ex.attention_mask[r].sum())
    assert np.all(ex.tokens[r, length:] == tok.pad_token_id)
    assert not np.any(ex.loss_mask[r, length:])
    assert not np.any(ex.loss_mask[r] & (1 - ex.attention_mask[r]))
    # The loss covers each assistant turn and its <|im_end|>, and no
    # system, user or tool text.
    trained = tok.decode(ex.tokens[r][ex.loss_mask[r] == 1])
    assert trained.count("<|im_end|>") == trained.count("<think>") >= 1
    assert "<tool_response>" not in trained and "<|im_start|>" not in trained
  messages, env, _ = transcripts.play(harmful[0], "expert")
  ids, mask = sft_data.tokenize_episode(tok, messages, env.tools)
  assert tok.decode([i for i, m in zip(ids, mask) if m]).startswith("<think>")
  short = sft_data.sft_examples(harmful[:2], tok, {"expert": 1.0}, max_len=64)
  assert short.dropped == tuple(t.task_id for t in harmful[:2])
  assert short.tokens.shape == (0, 0)
  with pytest.raises(ValueError, match="unknown scripted policies"):
    sft_data.sft_examples(harmful[:1], tok, {"oracle": 1.0})
