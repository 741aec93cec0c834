"""Training options that trade memory or precision: remat policies change
neither values nor gradients, bf16 compute trains fp32 master weights, and
`donate` decides whether the old state survives the step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mosaic_jax import batches
from mosaic_jax import losses
from mosaic_jax.models import decoder, init_model, presets
from mosaic_jax.train import state as state_lib
from mosaic_jax.train import steps

B, T, V = 2, 16, 128
CFG = presets.TINY.replace(vocab_size=V, hidden_size=32, intermediate_size=64,
                           num_layers=2, head_dim=8, num_heads=4,
                           num_kv_heads=2)
OPT = state_lib.OptimizerConfig(lr=1e-2, warmup_steps=0, total_steps=10)


def _batch() -> batches.PGBatch:
  rng = np.random.default_rng(0)
  return batches.PGBatch(
      tokens=jnp.asarray(rng.integers(1, V, (B, T)), jnp.int32),
      loss_mask=jnp.ones((B, T), jnp.float32).at[:, :4].set(0),
      attention_mask=jnp.ones((B, T), jnp.int32),
      advantages=jnp.asarray([1.0, -0.5], jnp.float32),
      old_logp=jnp.full((B, T), -np.log(V), jnp.float32))


def _loss_and_grads(remat: str):
  graphdef, params = nnx.split(init_model(CFG.replace(remat=remat), seed=0),
                               nnx.Param)
  batch = _batch()

  def loss(params):
    model = nnx.merge(graphdef, params)
    logp = steps.model_logprobs(model, batch.tokens, batch.attention_mask,
                                chunk_size=8)
    return jnp.sum(logp * batch.loss_mask * batch.advantages[:, None])

  return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_policies_keep_loss_and_gradients():
  loss, grads = _loss_and_grads("none")
  for policy in ("full", "dots", "dots_no_batch"):
    other_loss, other_grads = _loss_and_grads(policy)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    # Recomputed activations fuse differently: float32 summation-order noise
    # (~1e-7 absolute on gradients of order 1e-2), nothing more.
    for got, want in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_compute_trains_fp32_master_weights():
  model = init_model(CFG.replace(dtype="bfloat16"), seed=0)
  state = state_lib.create_train_state(model, OPT)
  before = jax.tree.map(np.asarray, state.params)
  step = steps.make_pg_step(steps.PGConfig(chunk_size=8))
  for _ in range(2):
    state, metrics = step(state, _batch())
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["skipped"]) == 0.0
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state)
          if x.ndim} == {np.dtype(np.float32)}
  # Updates far below bf16's resolution of the weights still land in fp32.
  moved = [np.max(np.abs(a - b)) for a, b in
           zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
  assert min(moved) > 0


def test_bf16_params_train_and_stay_bf16():
  # Without fp32 master weights (memory-bound runs): the step must keep every
  # leaf's dtype, or the non-finite guard's two branches disagree.
  model = init_model(CFG.replace(param_dtype="bfloat16", dtype="bfloat16"), seed=0)
  state = state_lib.create_train_state(model, OPT)
  dtypes = [x.dtype for x in jax.tree.leaves((state.params, state.opt_state))]
  step = steps.make_pg_step(steps.PGConfig(chunk_size=8))
  state, metrics = step(state, _batch())
  assert np.isfinite(float(metrics["loss"]))
  assert float(metrics["skipped"]) == 0.0
  assert [x.dtype for x in jax.tree.leaves((state.params, state.opt_state))] == dtypes
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("donate", [True, False])
def test_donate_decides_whether_the_old_state_survives(donate):
  state = state_lib.create_train_state(init_model(CFG, seed=0), OPT)
  step = steps.make_pg_step(steps.PGConfig(chunk_size=8, donate=donate))
  new_state, _ = step(state, _batch())
  jax.block_until_ready(new_state)
  old_leaves = jax.tree.leaves(state.params)
  assert all(x.is_deleted() for x in old_leaves) == donate
  assert not any(x.is_deleted() for x in jax.tree.leaves(new_state.params))


def _logprob_grads(fn, hidden, unembed, weights):
  loss = lambda h, w: jnp.sum(fn(h, w) * weights)
  return jax.jit(jax.value_and_grad(loss, (0, 1)))


def test_vocab_tiled_logprob_gradients_equal_plain():
  # V = 37 in tiles of 8 leaves a last tile of 5, T = 13 in chunks of 4 a
  # padded tail: neither may leak into values or gradients.
  rng = np.random.default_rng(0)
  b, t, d, v = 2, 13, 6, 37
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  unembed = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(b, t)), jnp.float32)
  plain = lambda h, w: losses.token_logprobs(h @ w, targets)
  tiled = lambda h, w: losses.chunked_token_logprobs(
      h, w, targets, chunk_size=4, vocab_chunk_size=8)
  want, want_grads = _logprob_grads(plain, hidden, unembed, weights)(
      hidden, unembed)
  got, got_grads = _logprob_grads(tiled, hidden, unembed, weights)(
      hidden, unembed)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(jax.jit(tiled)(hidden, unembed),
                             jax.jit(plain)(hidden, unembed), atol=1e-5)
  for g, e in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, e, atol=1e-5)


def test_chunked_logprob_gradient_memory_shrinks_by_the_chunk_count():
  # XLA's temp buffers of value-and-grad, i.e. the memory beyond the inputs
  # and their gradients (the [D, V] unembedding gradient is an output).
  b, t, d, v, chunk = 2, 64, 16, 4096, 8
  hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
  unembed = jax.ShapeDtypeStruct((d, v), jnp.float32)
  targets = jnp.zeros((b, t), jnp.int32)
  weights = jnp.ones((b, t), jnp.float32)
  plain = lambda h, w: losses.token_logprobs(h @ w, targets)
  chunked = lambda h, w: losses.chunked_token_logprobs(
      h, w, targets, chunk_size=chunk, vocab_chunk_size=1024)
  temp = lambda fn: _logprob_grads(fn, hidden, unembed, weights).lower(
      hidden, unembed).compile().memory_analysis().temp_size_in_bytes
  assert temp(plain) >= (t // chunk) * temp(chunked)


def test_block_causal_attention_equals_masked_attention(monkeypatch):
  # Blocks of 4 over T = 13 (a short last block), left padding: the training
  # path (q_slot None) against the cache path's masked attention, on the
  # real positions where the loss can reach.
  monkeypatch.setattr(decoder, "_QUERY_BLOCK", 4)
  rng = np.random.default_rng(1)
  b, t, n, k, h = 2, 13, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  kv = [jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
        for _ in range(2)]
  valid = jnp.asarray(np.arange(t)[None, :] >= np.array([[0], [5]]))
  weights = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  weights = weights * valid[:, :, None, None]
  cfg = CFG.replace(num_heads=n, num_kv_heads=k, head_dim=h)

  def loss(slot):
    return lambda q, k, v: jnp.sum(
        decoder._attention(cfg, q, k, v, slot, valid) * weights)

  blocked, masked = (jax.jit(jax.value_and_grad(loss(slot), (0, 1, 2)))(
      q, *kv) for slot in (None, jnp.arange(t)))
  np.testing.assert_allclose(blocked[0], masked[0], rtol=1e-6)
  for got, want in zip(blocked[1], masked[1]):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_norm_and_swiglu_vjps_equal_autodiff():
  rng = np.random.default_rng(2)
  x, gate, up = (jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)
                 for _ in range(3))
  w = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)

  def plain_norm(x, w):
    inv = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    return w * (x * inv)

  for ours, plain, args in (
      (lambda x, w: decoder.rms_norm(x, w, 1e-6), plain_norm, (x, w)),
      (decoder._swiglu, lambda a, u: jax.nn.silu(a) * u, (gate, up))):
    np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-6)
    got = jax.vjp(ours, *args)[1](g)
    want = jax.vjp(plain, *args)[1](g)
    for a, e in zip(got, want):
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
