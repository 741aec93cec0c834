"""The PPO inner loop (`steps.ppo_updates`) on a logit table, by hand:
several epochs and minibatches, clip ratios low and high, the schedule
across a skipped update, dynamic sampling and the k1 reward penalty."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mosaic_jax import batches
from mosaic_jax.train import steps


def _table_loss(cfg):
  """The PG micro-batch loss of a policy that is a logit table: row b of
  the batch uses context `tokens[b, 0]`, and its one loss token is
  `tokens[b, 1]`."""

  def loss_fn(params, mb):
    logp_all = jax.nn.log_softmax(params["logits"][mb.tokens[:, 0]])
    logp = jnp.take_along_axis(logp_all, mb.tokens[:, 1:], axis=-1)
    return steps.pg_objective(logp, mb, cfg)

  return loss_fn


def _batch(contexts, targets, advantages, old_logp):
  n = len(contexts)
  return batches.PGBatch(
      tokens=jnp.stack([jnp.asarray(contexts), jnp.asarray(targets)], 1),
      loss_mask=jnp.ones((n, 1), jnp.float32),
      attention_mask=jnp.ones((n, 2), jnp.int32),
      advantages=jnp.asarray(advantages, jnp.float32),
      old_logp=jnp.asarray(old_logp, jnp.float32)[:, None])


def _run(batch, *, epochs, minibatches, contexts=1, lr=1.0,
         schedule=None, params=None):
  cfg = steps.PGConfig(clip_eps_lo=0.2, clip_eps_hi=0.2, epochs=epochs,
                       minibatches=minibatches)
  tx = optax.sgd(schedule or lr)
  params = params or {"logits": jnp.zeros((contexts, 2))}
  run = jax.jit(lambda p, s, b: steps.ppo_updates(
      tx, p, s, b, _table_loss(cfg), epochs=epochs, minibatches=minibatches,
      schedule=schedule))
  return run(params, tx.init(params), batch)


def test_negative_advantage_is_clipped_low_from_the_second_epoch():
  # π = (½, ½), token 0, A = −1, SGD lr 1. Epoch 1 (r = 1): ℓ = −A·r, whose
  # gradient is r·(1 − p0, −p1) = (½, −½); θ → (−½, ½), so p0 = σ(−1) and
  # r = 2σ(−1) ≈ 0.538 < 1 − ε = 0.8. Epochs 2 and 3: clipped low, ℓ = 0.8,
  # no gradient, θ stays.
  batch = _batch([0], [0], [-1.0], [math.log(0.5)])
  params, _, per = _run(batch, epochs=3, minibatches=1)
  np.testing.assert_allclose(params["logits"], [[-0.5, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(per["loss"], [1.0, 0.8, 0.8], rtol=1e-6)
  np.testing.assert_allclose(per["clip_low_sum"], [0, 1, 1])
  np.testing.assert_allclose(per["clip_high_sum"], [0, 0, 0])
  m = steps.pg_metrics(per, epochs=3)
  assert float(m["clip_ratio/low_mean"]) == pytest.approx(2 / 3)
  assert float(m["clip_ratio/high_mean"]) == 0.0
  assert float(m["clip_ratio/region_mean"]) == pytest.approx(2 / 3)
  assert float(m["tokens"]) == 1.0
  r = 2 * (1 / (1 + math.e))
  assert float(m["ratio_mean"]) == pytest.approx((1 + 2 * r) / 3, rel=1e-5)


def test_minibatches_update_in_order_and_clip_both_sides():
  # Two contexts, one row each; minibatches of one row: updates run row 0,
  # row 1, row 0, row 1. Row 0 (A = −1, token 0) falls to r ≈ 0.538 and is
  # clipped low on its second visit; row 1 (A = +1, token 1) rises to
  # r = 2σ(1) ≈ 1.462 > 1.2 and is clipped high on its second visit.
  batch = _batch([0, 1], [0, 1], [-1.0, 1.0], [math.log(0.5)] * 2)
  params, _, per = _run(batch, epochs=2, minibatches=2, contexts=2)
  np.testing.assert_allclose(params["logits"], [[-0.5, 0.5], [-0.5, 0.5]],
                             rtol=1e-6)
  np.testing.assert_allclose(per["clip_low_sum"], [0, 0, 1, 0])
  np.testing.assert_allclose(per["clip_high_sum"], [0, 0, 0, 1])
  np.testing.assert_allclose(per["tokens"], [1, 1, 1, 1])
  m = steps.pg_metrics(per, epochs=2)
  assert float(m["clip_ratio/low_mean"]) == 0.25
  assert float(m["clip_ratio/high_mean"]) == 0.25
  with pytest.raises(ValueError, match="3 minibatches"):
    _run(batch, epochs=1, minibatches=3)


def test_a_skipped_update_does_not_advance_the_schedule():
  schedule = lambda count: 1.0 / (1.0 + count)  # lr 1, ½, ⅓, ...
  bad = _batch([0], [0], [jnp.nan], [math.log(0.5)])
  good = _batch([0], [0], [-1.0], [math.log(0.5)])
  cfg = steps.PGConfig()
  tx = optax.chain(optax.scale_by_schedule(lambda c: -schedule(c)))
  params = {"logits": jnp.zeros((1, 2))}
  run = jax.jit(lambda p, s, b: steps.ppo_updates(
      tx, p, s, b, _table_loss(cfg), schedule=schedule))
  opt_state = tx.init(params)
  params, opt_state, per = run(params, opt_state, bad)
  assert float(per["skipped"][0]) == 1.0
  assert int(steps.optimizer_count(opt_state)) == 0
  np.testing.assert_array_equal(params["logits"], 0.0)
  # The next update still gets the first learning rate, 1, not ½.
  params, opt_state, per = run(params, opt_state, good)
  assert float(per["skipped"][0]) == 0.0
  assert float(per["learning_rate"][0]) == 1.0
  assert int(steps.optimizer_count(opt_state)) == 1
  np.testing.assert_allclose(params["logits"], [[-0.5, 0.5]], rtol=1e-6)


def test_dynamic_sampling_and_kl_in_reward_shape_the_batch():
  # Groups of 2: group 0 without signal (A = 0, 0) is dropped; group 1 keeps
  # its rows and gets −β (K_i − K_j) with sequence k1 K = (1, 3).
  batch = batches.PGBatch(
      tokens=jnp.zeros((4, 3), jnp.int32),
      loss_mask=jnp.array([[0, 1, 1]] * 4, jnp.float32),
      attention_mask=jnp.ones((4, 3), jnp.int32),
      advantages=jnp.array([0.0, 0.0, 1.0, -1.0]),
      old_logp=jnp.array([[0, -1, -1], [0, -1, -1], [0, -1, -1],
                          [0, -1, -1]], jnp.float32),
      ref_logp=jnp.array([[0, -2, -2], [0, -5, -5], [0, -2, -1.0],
                          [0, -3, -2]], jnp.float32))
  cfg = steps.PGConfig(group_size=2, dynamic_sampling=True, kl_beta=0.1,
                       kl_estimator="k1", kl_in_reward=True)
  out = steps.shape_batch(batch, cfg)
  np.testing.assert_array_equal(out.loss_mask[:2], 0.0)
  np.testing.assert_array_equal(out.loss_mask[2:], batch.loss_mask[2:])
  np.testing.assert_allclose(out.advantages, [0, 0, 1 + 0.2, -1 - 0.2],
                             rtol=1e-6)
  assert cfg.loss_kl_beta == 0.0
  with pytest.raises(ValueError, match="kl_estimator='k1'"):
    steps.PGConfig(kl_in_reward=True, kl_estimator="k3", group_size=2)
  with pytest.raises(ValueError, match="group_size"):
    steps.PGConfig(dynamic_sampling=True)


def test_loop_advantages_metrics_and_settings():
  import ml_collections  # pylint: disable=import-outside-toplevel
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from mosaic_jax import rewards  # pylint: disable=import-outside-toplevel
  from mosaic_jax.methods import mosaic  # pylint: disable=import-outside-toplevel
  from mosaic_jax.train import pg, validate  # pylint: disable=import-outside-toplevel
  rl = ml_collections.ConfigDict(dict(
      reward="pairwise", advantage="grpo", adv_ddof=0, adv_eps=1e-6,
      tie_advantage="zero"))
  # Group 0: all ties, lengths differ; group 1: the first member wins.
  components = {
      "pairwise": np.array([[0.5, 0.5], [1.0, 0.0]], np.float32),
      "format": np.array([[2.0, 2.0], [1.0, 1.0]], np.float32),
      "length_penalty": np.array([[0.0025, 0.005], [0.0, 0.0]], np.float32)}
  adv, signal = rewards.task_advantages(components, rl)
  assert signal.tolist() == [False, True]
  np.testing.assert_array_equal(adv[0], 0.0)
  np.testing.assert_allclose(adv[1], [1.0, -1.0], rtol=1e-5)
  rl.tie_advantage = "keep"
  np.testing.assert_allclose(rewards.task_advantages(components, rl)[0][0],
                             [1.0, -1.0], rtol=1e-3)
  step_rewards = rewards.total_reward(components, "pairwise")
  m = rewards.reward_metrics(components, step_rewards, signal, adv)
  assert m["reward"] == pytest.approx(np.mean([2.4975, 2.495, 2.0, 1.0]))
  assert m["reward_std"] == pytest.approx((0.00125 + 0.5) / 2, rel=1e-4)
  assert m["frac_reward_zero_std"] == 0.0 and m["frac_tied_groups"] == 0.5
  assert m["rewards/pairwise/mean"] == pytest.approx(0.5)
  assert m["rewards/format/std"] == pytest.approx(0.5)
  # The tiny config samples at 0.7: the PG log-probs follow.
  c = tiny.get_config()
  cfg = pg.pg_config(c)
  assert cfg.temperature == 0.7 and cfg.seq_norm == c.rollout.max_total_length
  assert cfg.group_size == c.rl.group_size and cfg.updates == 1
  c.rl.temper_logprobs = False
  assert pg.pg_config(c).temperature == 1.0
  c.rl.update(epochs=2, minibatches=4)
  assert mosaic.rl_optimizer(c, 70).total_steps == 70 * 8
  c.workdir = "/tmp/unused_workdir_check"
  c.rl.update(kl_in_reward=True, minibatches=3, tie_advantage="drop",
              policy_ratio="seq")
  problems = "\n".join(validate.value_problems(c, process_count=1))
  for field in ("rl.kl_in_reward", "rl.minibatches=3", "rl.tie_advantage",
                "rl.policy_ratio"):
    assert field in problems, (field, problems)
