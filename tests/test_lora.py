"""LoRA adapters on a tiny random model: exact no-op at init, gradients and
optimizer state on the adapters only, merging (also into HF safetensors),
adapter-only checkpoints that resume, sharded = unsharded, config checks."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import base
from mosaic_jax import batches
from mosaic_jax import sharding
from mosaic_jax.models import convert, init_model, lora, presets
from mosaic_jax.models.decoder import KVCache
from mosaic_jax.train import checkpoint, validate
from mosaic_jax.train import state as state_lib
from mosaic_jax.train import steps

B, T, V = 4, 16, 128
# A Llama-style block with every bias (q/k/v, o and MLP), so each adapted
# projection is checked beside its bias.
CFG = presets.TINY.replace(
    family="llama", vocab_size=V, hidden_size=32, intermediate_size=64,
    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=False,
    qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=False)
LORA = lora.LoRAConfig(rank=4, alpha=8.0)
OPT = state_lib.OptimizerConfig(lr=1e-2, warmup_steps=0, total_steps=100,
                                clip_norm=1.0)
SFT = steps.SFTConfig(microbatch=2, chunk_size=8, donate=False)
# One jitted step for the module (each make_sft_step compiles anew).
SFT_STEP = steps.make_sft_step(SFT)


_BASE = []


def _base():
  """The tiny base model, drawn with NumPy once (random init through
  jax.random compiles for seconds), then new modules on the same arrays
  (nothing here writes them in place). Biases are non-zero, so a bias lost
  on the LoRA path would show."""
  if not _BASE:
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: init_model(CFG)))
    rng = np.random.default_rng(0)

    def draw(path, x):
      name = str(path[-2].key if "value" in str(path[-1]) else path[-1].key)
      if "norm" in name:
        return jnp.asarray(1 + 0.1 * rng.standard_normal(x.shape), x.dtype)
      std = 0.1 if name.startswith("b") else 0.05
      return jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)

    _BASE.append((graphdef, jax.tree_util.tree_map_with_path(draw, abstract)))
  return nnx.merge(*_BASE[0])


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, V, (B, T)).astype(np.int32)
  attention = np.ones((B, T), np.int32)
  attention[1, -3:] = 0
  loss_mask = np.zeros((B, T), np.int32)
  loss_mask[:, 4:] = 1
  loss_mask *= attention
  return batches.SFTBatch(jnp.asarray(tokens), jnp.asarray(loss_mask),
                        jnp.asarray(attention))


def _names(tree):
  """`blocks/wq_lora_a_ldr` per leaf (nnx's trailing value key dropped)."""
  return sorted("/".join(str(getattr(k, "key", k)) for k in path
                         if "value" not in str(k))
                for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


@jax.jit
def _run(graphdef, state, tokens):
  return nnx.merge(graphdef, state)(tokens)


@jax.jit
def _run_both(graphdef, state, tokens):
  """Logits without a cache; with a KV cache, of a prefill and of one more
  decode step (the sampler's path)."""
  model = nnx.merge(graphdef, state)
  cache = KVCache.init(CFG, tokens.shape[0], tokens.shape[1] + 1)
  logits, cache = model(tokens, cache=cache)
  return model(tokens), logits, model(tokens[:, :1], cache=cache)[0]


def _logits(model, tokens, cached=False):
  """A jitted forward pass (eager would dispatch op by op)."""
  return jax.device_get((_run_both if cached else _run)(
      *nnx.split(model), tokens))


@pytest.fixture(scope="module")
def trained():
  """(state before, state after 3 SFT steps, metrics) of a LoRA model."""
  model = lora.apply(_base(), LORA, seed=1)
  state = state_lib.create_train_state(model, OPT, seed=0)
  step = SFT_STEP
  before = jax.tree.map(jnp.copy, state)
  losses = []
  for _ in range(3):
    state, metrics = step(state, _batch())
    losses.append(float(metrics["loss"]))
  return before, state, losses


def test_zero_adapters_give_base_logits_exactly():
  tokens = _batch().tokens
  base = _base()
  adapted = lora.apply(_base(), LORA, seed=1)
  # Without a cache (training), and with one (sampling: a prefill, then
  # one decode step).
  want, got = _logits(base, tokens, True), _logits(adapted, tokens, True)
  for w, g in zip(want, got):
    np.testing.assert_array_equal(g, w)


def test_factors_carry_the_base_axes():
  blocks = lora.apply(_base(), LORA).blocks
  a, b = lora.factor_names("wq_ldnh")
  assert (a, b) == ("wq_lora_a_ldr", "wq_lora_b_lrnh")
  assert getattr(blocks, a).get_value().shape == (2, 32, 4)
  assert getattr(blocks, b).get_value().shape == (2, 4, 4, 8)
  assert getattr(blocks, a).get_metadata()["logical_axes"] == (
      "layers", "embed", None)
  assert getattr(blocks, b).get_metadata()["logical_axes"] == (
      "layers", None, "heads", "head_dim")
  a, b = lora.factor_names("wo_lnhd")
  assert getattr(blocks, a).get_metadata()["logical_axes"] == (
      "layers", "heads", "head_dim", None)
  assert getattr(blocks, b).get_metadata()["logical_axes"] == (
      "layers", None, "embed")
  only_q = lora.apply(_base(), lora.LoRAConfig(rank=2, targets=("q",)))
  assert _names(nnx.state(only_q, lora.LoRAParam)) == [
      "blocks/wq_lora_a_ldr", "blocks/wq_lora_b_lrnh"]


def test_only_adapters_are_trained(trained):
  before, after, losses = trained
  adapters = _names(nnx.state(lora.apply(_base(), LORA), lora.LoRAParam))
  assert len(adapters) == 14
  assert _names(after.params) == adapters
  # Every moment of AdamW is adapter-sized: no base-sized leaf anywhere.
  sizes = {x.size for x in jax.tree.leaves(after.params)}
  assert {x.size for x in jax.tree.leaves(after.opt_state) if x.ndim} <= sizes
  total = sum(x.size for x in jax.tree.leaves(after.params))
  assert sum(x.size for x in jax.tree.leaves(after.opt_state)) <= 2 * total + 8
  # The base is bit for bit unchanged; the B factors moved off zero.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(before.frozen),
               jax.device_get(after.frozen))
  b_name = lora.factor_names("w_down_lfd")[1]
  assert not np.all(np.asarray(before.params["blocks"][b_name].get_value())
                    == np.asarray(after.params["blocks"][b_name].get_value()))
  assert losses[-1] < losses[0]


def test_policy_gradient_step_trains_adapters_only(trained):
  _, state, _ = trained
  batch = _batch()
  with pytest.raises(ValueError):  # The adapters alone are not a model.
    nnx.merge(state.graphdef, state.params)
  logp = steps.model_logprobs(state.model(), batch.tokens,
                              batch.attention_mask)
  pg = batches.PGBatch(batch.tokens, batch.loss_mask, batch.attention_mask,
                     advantages=jnp.asarray([1.0, -1.0, 0.5, -0.5]),
                     old_logp=logp)
  new, metrics = steps.make_pg_step(steps.PGConfig(donate=False))(state, pg)
  assert float(metrics["skipped"]) == 0.0 and float(metrics["grad_norm"]) > 0
  assert _names(new.params) == _names(state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen),
               jax.device_get(new.frozen))


def test_merged_equals_unmerged_also_through_hf_files(trained, tmp_path):
  _, state, _ = trained
  tokens = _batch().tokens
  model = state.model()
  unmerged = _logits(model, tokens)
  merged = lora.merged(model)
  assert not lora.has_adapters(merged) and lora.has_adapters(model)
  np.testing.assert_allclose(_logits(merged, tokens), unmerged, atol=1e-5)
  # Merging left the train state's weights alone.
  np.testing.assert_array_equal(_logits(state.model(), tokens), unmerged)
  convert.save_pretrained(model, tmp_path / "hf")
  loaded = convert.from_pretrained(tmp_path / "hf")
  np.testing.assert_allclose(_logits(loaded, tokens), unmerged, atol=1e-5)
  # The adapters really changed the model (or the above would be vacuous).
  assert np.max(np.abs(unmerged - _logits(_base(), tokens))) > 1e-3


def test_checkpoint_holds_adapters_only_and_resumes(trained, tmp_path):
  _, state, _ = trained
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", every=1)
  assert ckpt.save(state)
  saved = sorted(ckpt._param_shapes(int(state.step)))  # pylint: disable=protected-access
  assert saved and all("_lora_" in name for name in saved)
  # A fresh template (other adapter seed) resumes to the saved adapters.
  template = state_lib.create_train_state(
      lora.apply(_base(), LORA, seed=7), OPT, seed=0)
  ckpt.check_params(template.params, "test")
  restored, _ = ckpt.restore(template)
  ckpt.close()
  # Adapters, moments, step and key back bit for bit (the step is a pure
  # function of them and the frozen base, which the template holds).
  for part in ("params", "opt_state", "step", "rng"):
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get(getattr(restored, part)),
                 jax.device_get(getattr(state, part)))
  assert restored.frozen is template.frozen
  # Evaluating it alone says why it cannot, in one line.
  with pytest.raises(ValueError, match="LoRA training checkpoint"):
    convert.load_model(str(tmp_path / "ckpt"), preset="tiny")
  # A full fine-tuning checkpoint is told apart from an adapter one.
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  with pytest.raises(checkpoint.IncompatibleCheckpoint, match="absent"):
    ckpt.check_params(nnx.state(_base(), nnx.Param), "test")
  ckpt.close()


def test_sharded_equals_unsharded():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = _batch()
  step = SFT_STEP
  # Three targets cover every layout: in (embed), out (heads, head_dim);
  # in (heads, head_dim), out (embed); in (mlp), out (embed).
  cfg = lora.LoRAConfig(rank=4, alpha=8.0, targets=("q", "o", "down"))
  plain = state_lib.create_train_state(lora.apply(_base(), cfg, seed=1), OPT)
  placed = state_lib.create_train_state(lora.apply(_base(), cfg, seed=1), OPT,
                                        mesh=mesh)
  a = placed.params["blocks"]["wq_lora_a_ldr"].get_value()
  b = placed.params["blocks"]["wq_lora_b_lrnh"].get_value()
  assert a.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert b.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor",
                                                       None)
  with sharding.use_mesh(mesh):
    placed, m_sh = step(placed, sharding.shard_batch(batch, mesh))
  plain, m = step(plain, batch)
  np.testing.assert_allclose(float(m_sh["loss"]), float(m["loss"]), rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
               jax.device_get(placed.params), jax.device_get(plain.params))


def _lora_section(**kw):
  return ml_collections.ConfigDict(dict(dict(rank=8, alpha=16.0,
                                             targets=("q", "v")), **kw))


@pytest.mark.parametrize("kw, field", [
    (dict(rank=-1), "model.lora.rank"),
    (dict(alpha=0.0), "model.lora.alpha"),
    (dict(targets=("q", "qkv")), "model.lora.targets"),
    (dict(targets=()), "model.lora.targets"),
    (dict(targets="q"), "model.lora.targets"),
])
def test_bad_lora_config_is_one_line(kw, field):
  problems = lora.LoRAConfig.section_problems(_lora_section(**kw))
  assert len(problems) == 1 and problems[0].startswith(field + ":")
  assert "\n" not in problems[0]
  # The dataclass refuses the same values with the same line, and the
  # config check reports it.
  with pytest.raises(ValueError) as e:
    lora.LoRAConfig.from_config(_lora_section(**kw))
  assert str(e.value) == problems[0]
  config = base.base_config("tiny")
  config.model.lora = _lora_section(**kw)
  assert problems[0] in validate.value_problems(config)


def test_default_config_has_lora_off():
  section = base.base_config("tiny").model.lora
  assert section.rank == 0 and not lora.LoRAConfig.section_problems(section)
  assert not lora.LoRAConfig.from_config(section).enabled
  assert not lora.LoRAConfig.section_problems(_lora_section())
  assert lora.LoRAConfig.from_config(_lora_section()).scale == 2.0


def test_rl_phase_trains_fresh_adapters_on_the_merged_sft_model(trained):
  """`run_lib.second_phase_state`: starting, the policy is exactly the merged
  SFT reference with fresh adapters; resuming, the frozen base is the
  reference again (not the pre-SFT base the template was built from)."""
  import types  # pylint: disable=import-outside-toplevel
  from configs import base  # pylint: disable=import-outside-toplevel
  from mosaic_jax.train import run as run_lib  # pylint: disable=import-outside-toplevel
  before, sft_state, _ = trained
  config = base.base_config("tiny")
  config.model.lora.rank, config.model.lora.alpha = LORA.rank, LORA.alpha
  reference = lora.merge(run_lib.copy_model(sft_state.model()))
  assert not lora.has_adapters(reference)
  ws = types.SimpleNamespace(run=types.SimpleNamespace(config=config,
                                                       mesh=None),
                             extra={}, reference=reference, state=before)
  fresh = run_lib.second_phase_state(ws, "rl", OPT)
  assert _names(fresh.params) == _names(sft_state.params)
  assert int(fresh.step) == config.sft.steps
  tokens = _batch().tokens
  np.testing.assert_array_equal(_logits(fresh.model(), tokens),
                                _logits(reference, tokens))
  ws.extra = {"phase": "rl"}
  resumed = run_lib.second_phase_state(ws, "rl", OPT)
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(resumed.frozen),
               jax.device_get(nnx.state(reference, nnx.Param)))
  assert _names(resumed.params) == _names(before.params)
