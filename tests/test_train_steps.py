"""SFT and policy-gradient steps on a tiny random model: learning, direction,
exact gradient accumulation, the non-finite guard, and sharded state."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mosaic_jax import batches
from mosaic_jax import losses, sharding
from mosaic_jax.models import init_model, presets
from mosaic_jax.train import state as state_lib
from mosaic_jax.train import steps

B, T, V = 8, 16, 256
CFG = presets.TINY.replace(vocab_size=V, hidden_size=64, intermediate_size=128,
                           num_layers=2, head_dim=16, num_heads=4,
                           num_kv_heads=2)
OPT = state_lib.OptimizerConfig(lr=3e-3, warmup_steps=0, total_steps=100,
                                weight_decay=0.01, clip_norm=1.0)
# Adam's first update is g / (|g| + ε): with ε = 1e-8 it is a sign for all but
# the tiniest entries, and summation-order noise (~1e-8) on a near-zero
# gradient entry would move that weight by up to lr. ε = 1e-3 makes the update
# a smooth function of the gradient (slope ≤ lr/ε), so comparing new params at
# 1e-6 tests the accumulated gradient, not where float noise lands.
PG_OPT = dataclasses.replace(OPT, eps=1e-3)
CHUNK = 8  # Two logits chunks per sequence: the chunked path is exercised.
AGGREGATIONS = sorted(losses.AGGREGATIONS)


def _copy(state):
  # Steps donate their state: hand them copies so the template survives.
  return jax.tree.map(jnp.copy, state)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def template():
  return state_lib.create_train_state(init_model(CFG, seed=0), PG_OPT, seed=1)


@pytest.fixture(scope="module")
def pg_batch(template):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, V, (B, T)), jnp.int32)
  # Row-dependent prompt lengths and right padding: uneven token counts per
  # row, so the aggregation modes really differ.
  loss_mask = np.zeros((B, T), np.float32)
  attention = np.ones((B, T), np.int32)
  for r in range(B):
    loss_mask[r, 3 + r % 4:T - r % 3] = 1
    attention[r, T - r % 3:] = 0
  old = steps.compute_logprobs(template.graphdef, template.params, tokens,
                               jnp.asarray(attention), microbatch=2,
                               chunk_size=CHUNK)
  return batches.PGBatch(
      tokens=tokens, loss_mask=jnp.asarray(loss_mask),
      attention_mask=jnp.asarray(attention),
      advantages=jnp.asarray(rng.normal(size=B), jnp.float32),
      old_logp=old + 0.05 * jnp.asarray(rng.normal(size=(B, T)), jnp.float32),
      ref_logp=old + 0.1 * jnp.asarray(rng.normal(size=(B, T)), jnp.float32))


def _pg_cfg(aggregation="token-mean", microbatch=0):
  return steps.PGConfig(kl_beta=0.05, kl_estimator="k3",
                        aggregation=aggregation, seq_norm=float(T),
                        microbatch=microbatch, chunk_size=CHUNK)


_PG_STEPS = {}


def _pg_step(aggregation="token-mean", microbatch=0):
  # One jitted function (one compile) per configuration for the whole module.
  key = (aggregation, microbatch)
  if key not in _PG_STEPS:
    _PG_STEPS[key] = steps.make_pg_step(_pg_cfg(aggregation, microbatch))
  return _PG_STEPS[key]


def test_compute_logprobs_matches_full_logits(template, pg_batch):
  model = template.model()
  logits = model(pg_batch.tokens, mask=pg_batch.attention_mask)
  full = losses.token_logprobs(logits[:, :-1], pg_batch.tokens[:, 1:])
  chunked = steps.compute_logprobs(
      template.graphdef, template.params, pg_batch.tokens,
      pg_batch.attention_mask, microbatch=2, chunk_size=CHUNK)
  np.testing.assert_array_equal(chunked[:, 0], np.zeros(B))
  np.testing.assert_allclose(chunked[:, 1:], full, atol=2e-5)


def test_sft_overfits_small_batch(template, pg_batch):
  batch = batches.SFTBatch(pg_batch.tokens, pg_batch.loss_mask,
                         pg_batch.attention_mask)
  step = steps.make_sft_step(steps.SFTConfig(chunk_size=CHUNK))
  state = _copy(state_lib.create_train_state(template.model(), OPT))
  curve = []
  for _ in range(30):
    state, metrics = step(state, batch)
    curve.append(float(metrics["loss"]))
  assert curve[0] == pytest.approx(np.log(V), rel=0.02)  # Random init.
  assert curve[-1] < 0.35 * curve[0], curve
  assert float(metrics["tokens"]) == float(jnp.sum(batch.loss_mask))
  assert int(state.step) == 30 and float(metrics["skipped"]) == 0.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pg_advantage_sign_moves_logprob(template, pg_batch, sign):
  old = steps.compute_logprobs(template.graphdef, template.params,
                               pg_batch.tokens, pg_batch.attention_mask,
                               microbatch=2, chunk_size=CHUNK)
  batch = pg_batch._replace(advantages=jnp.full((B,), sign), old_logp=old,
                            ref_logp=old)
  state, metrics = _pg_step()(_copy(template), batch)
  # At π = π_old = π_ref: ratio 1, nothing clipped, KL 0.
  assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics["clip_ratio/region_mean"]) == 0.0
  assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-6)
  new = steps.compute_logprobs(state.graphdef, state.params, pg_batch.tokens,
                               pg_batch.attention_mask, microbatch=2,
                               chunk_size=CHUNK)
  m = np.asarray(pg_batch.loss_mask)
  change = float(np.sum((np.asarray(new) - np.asarray(old)) * m) / m.sum())
  assert sign * change > 0.01, change


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gradient_accumulation_is_exact(template, pg_batch, aggregation):
  whole, m_whole = _pg_step(aggregation, 0)(_copy(template), pg_batch)
  split, m_split = _pg_step(aggregation, 2)(_copy(template), pg_batch)
  for key in ("loss", "grad_norm", "kl", "clip_ratio/region_mean", "tokens"):
    np.testing.assert_allclose(m_split[key], m_whole[key], rtol=1e-5,
                               atol=1e-7, err_msg=key)
  before = jax.tree.leaves(_host(template.params))
  a, b = jax.tree.leaves(_host(whole.params)), jax.tree.leaves(_host(split.params))
  # The update is real (about lr per weight), and identical either way.
  assert max(np.max(np.abs(x - y)) for x, y in zip(a, before)) > 1e-3
  assert max(np.max(np.abs(x - y)) for x, y in zip(a, b)) <= 1e-6
  # Moments equal up to fp32 summation order: bounded relative to each
  # array's scale (an element near zero is a cancellation of microbatch sums,
  # where an element-wise rtol measures only the order; on AVX-512 hosts one
  # of 16,384 first-moment entries differed by 9e-4 relative, 1.4e-9 absolute,
  # against a largest entry of ~5e-4).
  for x, y in zip(jax.tree.leaves(_host(whole.opt_state)),
                  jax.tree.leaves(_host(split.opt_state))):
    scale = float(np.max(np.abs(y))) if np.size(y) else 0.0
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale + 1e-12)


def test_non_finite_update_is_skipped(template, pg_batch):
  bad = pg_batch._replace(advantages=pg_batch.advantages.at[3].set(jnp.nan))
  before = _host((template.params, template.opt_state))
  state, metrics = _pg_step()(_copy(template), bad)
  assert float(metrics["skipped"]) == 1.0
  assert not np.isfinite(float(metrics["loss"]))
  assert int(state.step) == int(template.step) + 1
  # The loop's step advances; the schedule's count (optax's) does not.
  assert (int(steps.optimizer_count(state.opt_state))
          == int(steps.optimizer_count(template.opt_state)))
  after = _host((state.params, state.opt_state))
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)
  # The same compiled step then trains normally on a finite batch.
  state, metrics = _pg_step()(state, pg_batch)
  assert float(metrics["skipped"]) == 0.0


def test_kl_without_reference_is_an_error(template, pg_batch):
  with pytest.raises(ValueError, match="ref_logp"):
    _pg_step()(_copy(template), pg_batch._replace(ref_logp=None))


def test_microbatch_must_divide_batch(template, pg_batch):
  with pytest.raises(ValueError, match="micro-batches of 3"):
    steps.make_pg_step(_pg_cfg(microbatch=3))(_copy(template), pg_batch)


def test_sharded_state_layout():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state = state_lib.create_train_state(init_model(CFG, seed=0), OPT, mesh=mesh)
  expected = sharding.param_shardings(state.params, mesh)
  adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw -> ScaleByAdam
  for moments in (adam.mu, adam.nu):
    for got, want, p in zip(jax.tree.leaves(moments), jax.tree.leaves(expected),
                            jax.tree.leaves(state.params)):
      assert got.sharding == want == p.sharding
  embed = state.params["embed_vd"][...]
  # vocab over tensor, embed over fsdp: each device holds a quarter.
  assert embed.addressable_shards[0].data.shape == (V // 2, 64 // 2)
  assert state.step.sharding.is_fully_replicated


def test_optimizer_schedule_and_decay_mask():
  cfg = state_lib.OptimizerConfig(lr=1.0, warmup_steps=10, total_steps=110,
                                  final_lr_ratio=0.1)
  schedule = state_lib.learning_rate_schedule(cfg)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10),
                              schedule(60), schedule(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], rtol=1e-6)
  _, params = nnx.split(init_model(CFG.replace(qkv_bias=True)), nnx.Param)
  mask = state_lib._decay_mask(params)
  value = lambda v: bool(v.get_value())
  assert value(mask["blocks"]["wq_ldnh"]) and value(mask["embed_vd"])
  assert not value(mask["blocks"]["bq_lnh"])
  assert not value(mask["blocks"]["attn_norm_ld"])
  assert not value(mask["final_norm_d"])


def test_tempered_old_logprobs_make_the_ratio_on_policy(template, pg_batch):
  temp = 0.7
  cfg = dataclasses.replace(_pg_cfg(microbatch=2), temperature=temp)
  batch, entropy = steps.old_logprobs(template, pg_batch, cfg)
  logits = template.model()(pg_batch.tokens,
                            mask=pg_batch.attention_mask)[:, :-1] / temp
  np.testing.assert_allclose(
      batch.old_logp[:, 1:], losses.token_logprobs(logits,
                                                   pg_batch.tokens[:, 1:]),
      atol=2e-5)
  lsm = np.asarray(jax.nn.log_softmax(logits))
  ent = -np.sum(np.exp(lsm) * lsm, -1)
  m = np.asarray(pg_batch.loss_mask)[:, 1:]
  assert float(entropy) == pytest.approx(float((ent * m).sum() / m.sum()),
                                         rel=1e-5)
  # The sampler's unscaled log-probs are not the sampling distribution's.
  unscaled = steps.compute_logprobs(template.graphdef, template.params,
                                    pg_batch.tokens, pg_batch.attention_mask,
                                    chunk_size=CHUNK)
  mask = np.asarray(pg_batch.loss_mask) > 0
  gap = np.asarray(unscaled - batch.old_logp)[mask]
  assert np.abs(gap).mean() > 0.02

  @functools.partial(jax.jit, static_argnums=2)
  def first_update_sums(params, batch, temperature):
    loss_fn = steps.pg_loss_fn(template.merge, dataclasses.replace(
        cfg, temperature=temperature))
    return loss_fn(params, batch)[1][1]

  # The first update's ratio is 1 on every token at the sampling
  # temperature, and not at T = 1.
  sums = first_update_sums(template.params, batch, temp)
  tokens = float(sums["tokens"])
  assert float(sums["ratio_sum"]) / tokens == pytest.approx(1.0, abs=1e-6)
  assert float(sums["clip_low_sum"] + sums["clip_high_sum"]) == 0.0
  # At T = 1 against the tempered π_old, the ratio is exp(unscaled − old).
  sums = first_update_sums(template.params, batch, 1.0)
  assert float(sums["ratio_sum"]) / tokens == pytest.approx(
      float(np.exp(gap).mean()), rel=1e-5)
  assert abs(float(np.exp(gap).mean()) - 1.0) > 1e-3


def test_epochs_and_minibatches_make_several_updates(template, pg_batch):
  cfg = dataclasses.replace(_pg_cfg(microbatch=2), epochs=2, minibatches=2)
  schedule = state_lib.learning_rate_schedule(PG_OPT)
  state, metrics = steps.make_pg_step(cfg, schedule)(_copy(template),
                                                     pg_batch)
  # One loop step, four optimizer updates (the schedule counts updates).
  assert int(state.step) == int(template.step) + 1
  assert int(steps.optimizer_count(state.opt_state)) == 4
  assert float(metrics["skipped"]) == 0.0
  assert float(metrics["learning_rate"]) == pytest.approx(
      float(np.mean([schedule(k) for k in range(4)])))
  assert float(metrics["tokens"]) == float(jnp.sum(pg_batch.loss_mask))
  # Later updates see π ≠ π_old: the ratio moves off 1.
  assert float(metrics["ratio_mean"]) != pytest.approx(1.0, abs=1e-4)
