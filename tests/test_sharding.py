"""Sharding on 8 simulated CPU devices: layouts, parity, optimizer, loading."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mosaic_jax import models, sharding
from mosaic_jax.models import convert

# Every dimension divides every test mesh axis it is sharded over (kv_heads=4
# on tensor=4, embed=64 on fsdp=8, batch=8 on data*fsdp), so the layouts below
# are the rules' own, with no replication fallback.
CFG = models.ModelConfig(
    family="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128,
    num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8, qkv_bias=True)
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
BATCH = (("data", "fsdp"),)

# What DEFAULT_RULES say for each parameter, written out by hand.
EXPECTED_SPECS = {
    "embed_vd": P("tensor", "fsdp"),
    "lm_head_dv": P("fsdp", "tensor"),
    "final_norm_d": P("fsdp"),
    "blocks/attn_norm_ld": P(None, "fsdp"),
    "blocks/mlp_norm_ld": P(None, "fsdp"),
    "blocks/wq_ldnh": P(None, "fsdp", "tensor", None),
    "blocks/wk_ldkh": P(None, "fsdp", "tensor", None),
    "blocks/wv_ldkh": P(None, "fsdp", "tensor", None),
    "blocks/wo_lnhd": P(None, "tensor", None, "fsdp"),
    "blocks/bq_lnh": P(None, "tensor", None),
    "blocks/bk_lkh": P(None, "tensor", None),
    "blocks/bv_lkh": P(None, "tensor", None),
    "blocks/w_gate_ldf": P(None, "fsdp", "tensor"),
    "blocks/w_up_ldf": P(None, "fsdp", "tensor"),
    "blocks/w_down_lfd": P(None, "tensor", "fsdp"),
}


def _mesh(shape):
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


def _flat_params(model):
  return {"/".join(map(str, path)): var.get_value()
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _tokens(batch, length, seed=0):
  return np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, length),
                                              dtype=np.int32)


@functools.partial(jax.jit, static_argnums=1)
def _forward(state, graphdef, ids):
  return nnx.merge(graphdef, state)(ids)


def _run(model, ids, mesh=None):
  """Logits [B, T, V] of a jitted forward (on `mesh` when given)."""
  graphdef, state = nnx.split(model)
  if mesh is None:
    return _forward(state, graphdef, jnp.asarray(ids))
  with sharding.use_mesh(mesh):
    return _forward(state, graphdef, sharding.shard_batch(ids, mesh))


@pytest.fixture(scope="module")
def model():
  return models.init_model(CFG, seed=0)


@pytest.fixture(scope="module")
def reference(model):
  return _run(model, _tokens(8, 6))


# ------------------------------------------------------------------- mesh --


def test_make_mesh_resolves_remaining_devices_with_auto_axes():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (AxisType.Auto,) * 3


@pytest.mark.parametrize("sizes, field", [
    ({"data": -1, "fsdp": 3, "tensor": 1}, "config.mesh.fsdp=3"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "set one of"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one may be -1"),
])
def test_make_mesh_errors_name_the_field(sizes, field):
  with pytest.raises(ValueError, match=field):
    sharding.make_mesh(sizes)


# ------------------------------------------------------------------ rules --


def test_nondivisible_dims_fall_back_to_replication():
  mesh = _mesh((2, 2, 2))
  names = ("batch", "length", "kv_heads", "head_dim")
  # Batch 2 keeps `data` and drops `fsdp`; 3 kv heads cannot split over 2.
  assert sharding.logical_to_spec(names, mesh=mesh, shape=(2, 5, 3, 8)) == P(
      "data", None, None, None)
  assert sharding.logical_to_spec(names, mesh=mesh, shape=(4, 5, 2, 8)) == P(
      ("data", "fsdp"), None, "tensor", None)
  # Without a shape the table applies as written.
  assert sharding.logical_to_spec(names) == P(("data", "fsdp"), None, "tensor", None)


def test_unmatched_or_missing_logical_axes_raise_naming_the_param():
  class Odd(nnx.Module):

    def __init__(self, axes):
      self.w_odd = nnx.Param(jnp.zeros((4, 4)), logical_axes=axes)

  mesh = _mesh((1, 2, 4))
  with pytest.raises(ValueError, match=r"w_odd.*'bogus' matches no sharding rule"):
    sharding.shard_params(Odd(("embed", "bogus")), mesh)

  class Bare(nnx.Module):

    def __init__(self):
      self.w_bare = nnx.Param(jnp.zeros((4,)))

  with pytest.raises(ValueError, match="w_bare: no logical_axes"):
    sharding.param_shardings(Bare(), mesh)


# ------------------------------------------------------- sharded forward --


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_matches_unsharded(model, reference, shape):
  mesh = _mesh(shape)
  sharded = sharding.shard_params(nnx.clone(model), mesh)
  params = _flat_params(sharded)
  assert set(params) == set(EXPECTED_SPECS)
  for name, value in params.items():
    assert value.sharding == NamedSharding(mesh, EXPECTED_SPECS[name]), name

  logits = _run(sharded, _tokens(8, 6), mesh)
  # The output keeps the layout the decoder constrains it to.
  assert logits.sharding.is_equivalent_to(
      NamedSharding(mesh, P(*BATCH, None, "tensor")), 3)
  err = float(jnp.max(jnp.abs(logits - reference)))
  assert err <= 1e-5, f"mesh {shape}: max abs error {err:.3g}"


LLAMA_CFG = models.ModelConfig(
    family="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
    num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8, qkv_bias=True,
    o_bias=True, mlp_bias=True, tie_embeddings=True,
    rope=models.RopeConfig(theta=1e5, rope_type="llama3", factor=8.0,
                           low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=16))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_llama_sharded_forward_matches_unsharded(shape):
  model = models.init_model(LLAMA_CFG, seed=1)
  # Non-zero biases, so a bias sharded wrongly would show.
  for name in ("bq_lnh", "bo_ld", "b_gate_lf", "b_up_lf", "b_down_ld"):
    param = getattr(model.blocks, name)
    param.set_value(param.get_value() + 0.1 * jax.random.normal(
        jax.random.key(len(name)), param.get_value().shape))
  reference = _run(model, _tokens(8, 6))
  mesh = _mesh(shape)
  sharded = sharding.shard_params(nnx.clone(model), mesh)
  specs = {n: v.sharding.spec for n, v in _flat_params(sharded).items()}
  assert specs["blocks/b_gate_lf"] == P(None, "tensor")
  assert specs["blocks/b_down_ld"] == P(None, "fsdp")
  err = float(jnp.max(jnp.abs(_run(sharded, _tokens(8, 6), mesh) - reference)))
  assert err <= 1e-5, f"mesh {shape}: max abs error {err:.3g}"


def test_constraints_are_lowered_on_cpu(model):
  """The CPU program carries the sharding constraints a TPU program would."""
  graphdef, state = nnx.split(model)
  ids = jnp.asarray(_tokens(8, 6))
  hidden = jax.jit(lambda s, i: nnx.merge(graphdef, s)(i, return_hidden=True))
  assert "sdy.sharding_constraint" not in hidden.lower(state, ids).as_text()
  mesh = _mesh((2, 2, 2))
  with sharding.use_mesh(mesh):
    lowered = hidden.lower(state, ids)
  # Embedding, 6 per block (q, k, v, attention out, mlp act, block out; the
  # scanned body is lowered once), final norm.
  assert lowered.as_text().count("sdy.sharding_constraint") >= 8
  # The residual stream leaves the model batch-sharded, embed whole.
  out = lowered.compile().output_shardings
  assert out.is_equivalent_to(NamedSharding(mesh, P(*BATCH, None, None)), 3)


def test_gqa_kv_heads_fewer_than_tensor_axis_runs_replicated():
  cfg = CFG.replace(num_kv_heads=2)
  model = models.init_model(cfg, seed=1)
  ids = _tokens(3, 5)  # 3 rows: not divisible by fsdp=2 either.
  ref = _run(model, ids)
  mesh = _mesh((1, 2, 4))
  sharded = sharding.shard_params(nnx.clone(model), mesh)
  assert sharded.blocks.wk_ldkh[...].sharding.spec == P(None, "fsdp", None, None)
  logits = _run(sharded, ids, mesh)
  assert float(jnp.max(jnp.abs(logits - ref))) <= 1e-5


# -------------------------------------------------------------- optimizer --


def test_one_adamw_step_sharded_equals_unsharded(model):
  # Adam's first step is lr*g/(|g|+eps): a gradient that rounds differently
  # under another reduction order (|dg| ~ 3e-8 here) moves a param by up to
  # lr*|dg|/eps, i.e. 3e-4 with the default eps=1e-8 on grads ~1e-9. eps=1e-3
  # bounds that by 3e-7, so the comparison tests the layout, not the rounding.
  tx = optax.adamw(1e-2, eps=1e-3, weight_decay=0.1)
  ids = _tokens(8, 7, seed=3)

  def loss_fn(params, graphdef, ids):
    logits = nnx.merge(graphdef, params)(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

  def step(params, opt_state, ids, graphdef):
    grads = jax.grad(loss_fn)(params, graphdef, ids)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  graphdef, params = nnx.split(model)
  want, _ = jax.jit(step, static_argnums=3)(params, tx.init(params),
                                            jnp.asarray(ids), graphdef)

  mesh = _mesh((2, 2, 2))
  graphdef, params = nnx.split(sharding.shard_params(nnx.clone(model), mesh))
  shardings = sharding.param_shardings(params, mesh)
  opt_state = sharding.shard_optimizer_state(tx.init(params), shardings, mesh)
  opt_shardings = sharding.opt_state_shardings(opt_state, shardings, mesh)
  adam = opt_state[0]
  assert adam.mu["blocks"]["wq_ldnh"].get_value().sharding.spec == P(
      None, "fsdp", "tensor", None)
  assert adam.nu["embed_vd"].get_value().sharding.spec == P("tensor", "fsdp")
  assert adam.count.sharding.spec == P()
  with sharding.use_mesh(mesh):
    got, new_state = jax.jit(step, static_argnums=3,
                             out_shardings=(shardings, opt_shardings))(
                                 params, opt_state, sharding.shard_batch(ids, mesh),
                                 graphdef)
  assert new_state[0].mu["blocks"]["w_down_lfd"].get_value().sharding.spec == P(
      None, "tensor", "fsdp")
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(want), jax.tree.leaves(params)))
  assert moved > 1e-3  # The step did move the params.
  err = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(want), jax.tree.leaves(got)))
  assert err <= 1e-6, f"max abs param difference {err:.3g}"


# ------------------------------------------------------------------ batch --


def test_shard_batch_splits_rows_over_data_and_fsdp():
  mesh = _mesh((2, 2, 2))
  batch = sharding.shard_batch({"ids": _tokens(8, 5), "mask": np.ones((8, 5))}, mesh)
  assert batch["ids"].sharding.spec == P(("data", "fsdp"), None)
  assert {s.data.shape for s in batch["mask"].addressable_shards} == {(2, 5)}
  np.testing.assert_array_equal(np.asarray(batch["ids"]), _tokens(8, 5))


# ---------------------------------------------------------------- loading --


def test_from_pretrained_with_mesh_reads_only_shards(model, tmp_path, monkeypatch):
  path = str(tmp_path / "ckpt")
  models.save_pretrained(model, path)
  reads = []
  original = convert._View.read

  def counting_read(self, tensor, index):
    block = original(self, tensor, index)
    reads.append((self.hf_name, block.size, np.prod(self.our_shape)))
    return block

  monkeypatch.setattr(convert._View, "read", counting_read)
  mesh = _mesh((1, 8, 1))
  loaded = models.from_pretrained(path, mesh=mesh)
  # Every weight has an embed dim sharded 8 ways: no read is a whole weight.
  # Biases have no embed dim and tensor=1: each device reads them whole.
  assert reads and all(size * (1 if name.endswith("bias") else 8) == full
                       for name, size, full in reads), reads
  for name, value in _flat_params(loaded).items():
    assert value.sharding == NamedSharding(mesh, EXPECTED_SPECS[name]), name
    np.testing.assert_array_equal(np.asarray(value), np.asarray(_flat_params(model)[name]))
