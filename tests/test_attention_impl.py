"""`ModelConfig.attention`: jax.nn.dot_product_attention (here its XLA
implementation, the CPU stand-in for cuDNN) against the reference
block-causal einsums: values and gradients, fp32 and bf16, with the left
padding and causal mask training and prefill use."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mosaic_jax import losses, sampling
from mosaic_jax.models import decoder
from mosaic_jax.models.config import ModelConfig, RopeConfig

CFG = ModelConfig(family="qwen3", vocab_size=128, hidden_size=32,
                  intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, rope=RopeConfig(theta=1e4),
                  qk_norm=True, tie_embeddings=True)
# Left padding of 0 and 5 tokens over T = 13.
B, T = 2, 13
VALID = np.arange(T)[None, :] >= np.array([[0], [5]])


def test_config_rejects_unknown_attention():
  with pytest.raises(ValueError, match="attention 'flash'"):
    CFG.replace(attention="flash")


@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 1e-5, 1e-6),
                                             ("bfloat16", 2e-2, 2e-2)])
def test_attention_values_and_grads_match_reference(dtype, rtol, atol):
  rng = np.random.default_rng(0)
  dt = jnp.dtype(dtype)
  q = jnp.asarray(rng.normal(size=(B, T, 4, 8)), dt)
  k, v = (jnp.asarray(rng.normal(size=(B, T, 2, 8)), dt) for _ in range(2))
  valid = jnp.asarray(VALID)
  # Only real query rows count (a pad row sees no key; nothing reads it).
  weights = jnp.asarray(rng.normal(size=(B, T, 4, 8)), jnp.float32) * valid[
      :, :, None, None]

  def run(impl, slot):
    cfg = CFG.replace(attention=impl)
    loss = lambda q, k, v: jnp.sum(decoder._attention(
        cfg, q, k, v, slot, valid).astype(jnp.float32) * weights)
    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)

  for slot in (None, jnp.arange(T)):  # training and prefill-with-cache paths
    (want, dwant), (got, dgot) = run("reference", slot), run("xla", slot)
    np.testing.assert_allclose(float(got), float(want), rtol=rtol, atol=atol * 10)
    for a, e in zip(dgot, dwant):
      np.testing.assert_allclose(np.asarray(a, np.float32),
                                 np.asarray(e, np.float32), rtol=rtol, atol=atol)


def _loss_and_grads(cfg, tokens, mask):
  model = decoder.init_model(cfg, seed=3)
  graphdef, state = nnx.split(model, nnx.Param)

  def loss(state):
    m = nnx.merge(graphdef, state)
    logp = losses.token_logprobs(m(tokens[:, :-1], mask=mask[:, :-1]),
                                 tokens[:, 1:])
    # Real inputs predicting real targets (a pad input row's output differs
    # by implementation and no training loss reads it).
    weights = mask[:, :-1] * mask[:, 1:]
    return jnp.sum(logp * weights) / jnp.sum(weights)

  return jax.jit(jax.value_and_grad(loss))(state)


def test_model_loss_and_param_grads_match_reference():
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (B, T + 1)), jnp.int32)
  mask = jnp.asarray(np.pad(VALID, ((0, 0), (0, 1)), constant_values=True),
                     jnp.float32)
  want, dwant = _loss_and_grads(CFG, tokens, mask)
  got, dgot = _loss_and_grads(CFG.replace(attention="xla"), tokens, mask)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  for a, e in zip(jax.tree.leaves(dgot), jax.tree.leaves(dwant)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-6)


def test_prefill_and_greedy_tokens_match_reference():
  rng = np.random.default_rng(2)
  ids = jnp.asarray(rng.integers(1, CFG.vocab_size, (B, T)) * VALID, jnp.int32)
  mask = jnp.asarray(VALID, jnp.int32)
  config = sampling.SamplingConfig(max_new_tokens=6)
  outs = []
  for impl in ("reference", "xla"):
    model = decoder.init_model(CFG.replace(attention=impl), seed=3)
    cache = sampling.init_cache(model, B, T + 6)
    outs.append(sampling.sample(model, ids, mask, cache, jax.random.key(0), config))
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_allclose(outs[0].logprobs, outs[1].logprobs, atol=1e-5)
