"""Hand-computed checks of mosaic_jax.losses."""
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------
# Rewards.


def test_pairwise_win_rewards_antisymmetric_with_ties():
  # P(i,j) + P(j,i) = 1; 0↔2 is a tie; the diagonal holds junk on purpose.
  p = jnp.array([[9.0, 1.0, 0.5],
                 [0.0, 9.0, 0.0],
                 [0.5, 1.0, 9.0]])
  np.testing.assert_allclose(losses.pairwise_win_rewards(p),
                             [1.5, 0.0, 1.5])
  # Total wins over a group of G always equal G(G−1)/2.
  assert float(jnp.sum(losses.pairwise_win_rewards(p))) == 3.0


def test_pairwise_win_rewards_mask_and_batch():
  p = jnp.array([[[0.0, 1.0, 1.0],
                  [0.0, 0.0, 0.5],
                  [0.0, 0.5, 0.0]]] * 2)
  mask = jnp.array([[True, True, True], [True, True, False]])
  np.testing.assert_allclose(losses.pairwise_win_rewards(p, mask),
                             [[2.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_length_penalty_and_mosaic_rewards():
  lengths = jnp.array([100, 400, 500, 1000])
  # max(0, (L − 400)/400): 0, 0, 0.25, 1.5.
  np.testing.assert_allclose(losses.length_penalty(lengths), [0, 0, .25, 1.5])
  np.testing.assert_allclose(losses.length_penalty(lengths, l0=200.0),
                             [0, 1.0, 1.5, 4.0])
  p = jnp.array([[0.0, 1.0, 0.5],
                 [0.0, 0.0, 0.0],
                 [0.5, 1.0, 0.0]])
  fmt = jnp.array([2.0, 1.0, 0.0])
  r = losses.mosaic_rewards(p, fmt, lengths[1:])
  # [1.5 + 2 − 0, 0 + 1 − 0.25, 1.5 + 0 − 1.5]
  np.testing.assert_allclose(r, [3.5, 0.75, 0.0])
  r = losses.mosaic_rewards(p, fmt, lengths[1:], mask=jnp.array([1, 1, 0]) > 0)
  # Member 2 is padding: member 0 loses its half win against it.
  np.testing.assert_allclose(r, [1.0 + 2.0, 0.75, 0.0])


def test_scalar_rewards():
  z = jnp.array([[1.0, 0.5, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
  w = jnp.array([2.0, 1.0, 0.5, 0.25])
  np.testing.assert_allclose(losses.scalar_rewards(z, w),
                             [2.0 + 0.5 + 0.5, 1.0 + 0.5 + 0.25])


# ----------------------------------------------------------------------------
# Advantages.


def test_group_advantages_ddof0_ddof1():
  r = jnp.array([[1.0, 2.0, 3.0, 6.0]])
  # mean 3; squared deviations 4, 1, 0, 9 → 14.
  std0, std1 = math.sqrt(14 / 4), math.sqrt(14 / 3)
  dev = np.array([-2.0, -1.0, 0.0, 3.0])
  np.testing.assert_allclose(losses.group_advantages(r, eps=0.0)[0],
                             dev / std0, rtol=1e-6)
  np.testing.assert_allclose(losses.group_advantages(r, ddof=1, eps=0.5)[0],
                             dev / (std1 + 0.5), rtol=1e-6)


def test_group_advantages_zero_variance_is_zero_not_nan():
  r = jnp.array([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
  adv = losses.group_advantages(r, eps=0.0)
  assert not np.any(np.isnan(adv))
  np.testing.assert_array_equal(adv[:2], 0.0)
  # Last group: mean 1/3, population std √2/3.
  s = math.sqrt(2) / 3
  np.testing.assert_allclose(adv[2], [(2 / 3) / s, (-1 / 3) / s,
                                      (-1 / 3) / s], rtol=1e-6)


def test_group_advantages_mask():
  r = jnp.array([[1.0, 3.0, 100.0], [5.0, 7.0, 7.0]])
  mask = jnp.array([[True, True, False], [True, False, False]])
  adv = losses.group_advantages(r, mask, ddof=1, eps=0.0)
  # Group 0 over {1, 3}: mean 2, sample std √2. Group 1 has n = 1 = ddof → 0.
  np.testing.assert_allclose(adv, [[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0],
                                   [0.0, 0.0, 0.0]], rtol=1e-6)


def test_advantage_registry():
  r = jnp.array([[1.0, 2.0, 6.0]])
  np.testing.assert_allclose(losses.ADVANTAGE_ESTIMATORS["dr_grpo"](r),
                             [[-2.0, -1.0, 3.0]])
  np.testing.assert_allclose(losses.ADVANTAGE_ESTIMATORS["grpo"](r, ddof=1),
                             losses.group_advantages(r, ddof=1))


# ----------------------------------------------------------------------------
# PPO clip, KL, aggregation.

# Ratios r = exp(logp − old): 0.5 (< 1 − ε), 1.1 (inside), 1.5 (> 1 + ε).
_RATIOS = np.array([0.5, 1.1, 1.5])


def _ppo_inputs(adv):
  logp = jnp.log(jnp.array([_RATIOS, _RATIOS], jnp.float32))
  return logp, jnp.zeros_like(logp), jnp.array(adv, jnp.float32)


def test_ppo_clip_values_both_signs():
  logp, old, adv = _ppo_inputs([2.0, -2.0])
  loss = losses.ppo_clip_token_loss(logp, old, adv, eps_lo=0.2, eps_hi=0.2)
  # A = 2: −min(rA, clip(r)A) = −min(1.0, 1.6), −min(2.2, 2.2), −min(3.0, 2.4).
  # A = −2: −min(−1.0, −1.6), −min(−2.2, −2.2), −min(−3.0, −2.4).
  np.testing.assert_allclose(loss, [[-1.0, -2.2, -2.4], [1.6, 2.2, 3.0]],
                             rtol=1e-6)


def test_ppo_clip_gradients_both_signs():
  logp, old, adv = _ppo_inputs([2.0, -2.0])
  grad = jax.grad(lambda lp: jnp.sum(
      losses.ppo_clip_token_loss(lp, old, adv, eps_lo=0.2, eps_hi=0.3)))(logp)
  # d(−rA)/dlogp = −rA where unclipped, 0 where the clipped branch is taken.
  # A > 0: clipped only above 1 + ε_hi = 1.3 (r = 1.5). A < 0: only below 0.8.
  np.testing.assert_allclose(grad, [[-1.0, -2.2, 0.0], [0.0, 2.2, 3.0]],
                             rtol=1e-6)


def test_ppo_dual_clip():
  logp, old, adv = _ppo_inputs([2.0, -2.0])
  logp = logp.at[1, 2].set(jnp.log(4.0))
  loss = losses.ppo_clip_token_loss(logp, old, adv, dual_clip=3.0)
  # A < 0 and r = 4 > c = 3: min(−(4·−2), −(3·−2)) = min(8, 6) = 6.
  np.testing.assert_allclose(loss, [[-1.0, -2.2, -2.4], [1.6, 2.2, 6.0]],
                             rtol=1e-6)


def test_kl_estimators():
  logp = jnp.array([-1.0, -2.0, -0.5])
  ref = jnp.array([-1.5, -1.0, -0.5])
  d = np.array([0.5, -1.0, 0.0])  # logp − ref
  np.testing.assert_allclose(losses.KL_ESTIMATORS["k1"](logp, ref), d)
  np.testing.assert_allclose(losses.KL_ESTIMATORS["k2"](logp, ref),
                             [0.125, 0.5, 0.0])
  # exp(−d) + d − 1.
  np.testing.assert_allclose(
      losses.KL_ESTIMATORS["k3"](logp, ref),
      [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1, 0.0], rtol=1e-6)


_PER_TOKEN = jnp.array([[1.0, 2.0, 3.0, 4.0],
                        [5.0, 6.0, 7.0, 8.0],
                        [9.0, 9.0, 9.0, 9.0]])
_MASK = jnp.array([[1, 1, 0, 0],
                   [1, 1, 1, 1],
                   [0, 0, 0, 0]], jnp.float32)


@pytest.mark.parametrize("mode, total, count", [
    ("token-mean", 1 + 2 + 5 + 6 + 7 + 8, 6),
    # Per-sequence means 1.5 and 6.5; the empty row counts for nothing.
    ("sequence-mean-token-mean", 1.5 + 6.5, 2),
    ("sequence-sum", (3 + 26) / 2, 2),
])
def test_aggregations(mode, total, count):
  out = losses.AGGREGATIONS[mode](_PER_TOKEN, _MASK, seq_norm=2.0)
  assert float(out.total) == pytest.approx(total)
  assert float(out.count) == count
  assert float(out.mean()) == pytest.approx(total / count)


def test_policy_loss_with_kl():
  logp, old, adv = _ppo_inputs([2.0, -2.0])
  ref = logp - 0.5  # d = 0.5 on every token: k2 = 0.125.
  mask = jnp.array([[1, 1, 0], [0, 1, 1]], jnp.float32)
  out = losses.policy_loss(logp, old, ref, adv, mask, kl_beta=0.1,
                           kl_estimator="k2", aggregation="token-mean")
  expected = (-1.0 - 2.2 + 2.2 + 3.0) + 4 * 0.1 * 0.125
  np.testing.assert_allclose(out.total, expected, rtol=1e-6)
  assert float(out.count) == 4


def test_sft_nll():
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.125, 1.0, 0.3]]))
  mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
  out = losses.sft_nll(logp, mask)
  # −(ln .5 + ln .25 + ln .125) = 6 ln 2 over 3 tokens.
  np.testing.assert_allclose(out.total, 6 * math.log(2), rtol=1e-6)
  assert float(out.count) == 3
  out = losses.sft_nll(logp, mask, aggregation="sequence-mean-token-mean")
  np.testing.assert_allclose(out.total, 1.5 * math.log(2) + 3 * math.log(2),
                             rtol=1e-6)


def test_dpo_loss():
  pc = jnp.array([-10.0, -5.0])
  pr = jnp.array([-12.0, -4.0])
  rc = jnp.array([-11.0, -5.0])
  rr = jnp.array([-11.0, -5.0])
  out = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
  # Margins ((−10+11) − (−12+11)) = 2 and (0 − 1) = −1.
  expected = -math.log(_sigmoid(0.5 * 2)) - math.log(_sigmoid(0.5 * -1))
  np.testing.assert_allclose(out.total, expected, rtol=1e-6)
  assert float(out.count) == 2
  out = losses.dpo_loss(pc, pr, rc, rr, beta=0.5, mask=jnp.array([True, False]))
  np.testing.assert_allclose(out.total, -math.log(_sigmoid(1.0)), rtol=1e-6)
  assert float(out.count) == 1


# ----------------------------------------------------------------------------
# Gradient accumulation invariance.


def _np_token_logprobs(logits, targets):
  lsm = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  return np.take_along_axis(lsm, targets[..., None], -1)[..., 0]


@jax.jit
def _grads_by_mode(x, batch):
  """{mode: (∇total, count, ∇mean)} of the policy loss on one batch."""
  tgt, old_lp, ref_lp, a, m = batch
  out = {}
  for mode in losses.AGGREGATIONS:
    loss = lambda x, mode=mode: losses.policy_loss(
        losses.token_logprobs(x, tgt), old_lp, ref_lp, a, m, kl_beta=0.05,
        aggregation=mode, seq_norm=5.0)
    out[mode] = (jax.grad(lambda x: loss(x).total)(x), loss(x).count,
                 jax.grad(lambda x: loss(x).mean())(x))
  return out


def test_grad_accumulation_invariance_every_mode():
  rng = np.random.default_rng(0)
  b, t, v = 8, 5, 7
  targets = rng.integers(0, v, (b, t))
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  old = _np_token_logprobs(logits + 0.3 * rng.normal(size=(b, t, v)), targets)
  ref = _np_token_logprobs(logits * 0.5, targets)
  adv = rng.normal(size=(b,))
  # Uneven token counts across micro-batches, so a mean of means would differ.
  lengths = np.array([1, 5, 2, 2, 5, 5, 3, 1])
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  batch = jax.tree.map(lambda a: jnp.asarray(
      a, jnp.int32 if a.dtype.kind == "i" else jnp.float32),
                       (targets, old, ref, adv, mask))
  full = _grads_by_mode(jnp.asarray(logits), batch)
  # Accumulation: Σ_k ∇total_k / Σ_k count_k over 4 micro-batches of 2.
  micro = [_grads_by_mode(*jax.tree.map(lambda a, k=k: a[2 * k:2 * k + 2],
                                        (jnp.asarray(logits), batch)))
           for k in range(4)]
  for mode in losses.AGGREGATIONS:
    _, full_count, full_grad = full[mode]
    grads = jnp.concatenate([mb[mode][0] for mb in micro])
    count = sum(float(mb[mode][1]) for mb in micro)
    assert count == float(full_count)
    np.testing.assert_allclose(grads / count, full_grad, atol=1e-6,
                               err_msg=mode)
    # Averaging per-micro-batch means is wrong when counts vary.
    if mode == "token-mean":
      mean_of_means = jnp.concatenate([mb[mode][2] for mb in micro]) / 4
      assert not np.allclose(mean_of_means, full_grad, atol=1e-4)


# ----------------------------------------------------------------------------
# Token log-probs.


def test_token_logprobs_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = rng.integers(0, 5, (2, 3))
  lsm = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
  expected = np.take_along_axis(lsm, targets[..., None], -1)[..., 0]
  out = losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16)
                              .astype(jnp.float32), jnp.asarray(targets))
  np.testing.assert_allclose(
      losses.token_logprobs(jnp.asarray(logits), jnp.asarray(targets)),
      expected, atol=1e-6)
  assert out.dtype == jnp.float32


def test_chunked_token_logprobs_equals_plain():
  rng = np.random.default_rng(2)
  b, t, d, v = 2, 13, 8, 33
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)))

  # Chunk 4 does not divide T = 13: the padded tail must not leak in.
  plain = lambda h, w: losses.token_logprobs(h @ w, targets)
  chunked = lambda h, w: losses.chunked_token_logprobs(h, w, targets,
                                                       chunk_size=4)

  @jax.jit
  def both(h, w):
    grad = lambda f: jax.grad(lambda h, w: jnp.sum(f(h, w) * h[..., 0]),
                              (0, 1))(h, w)
    return plain(h, w), chunked(h, w), grad(plain), grad(chunked)

  p, c, g_p, g_c = both(hidden, w)
  np.testing.assert_allclose(c, p, atol=1e-5)
  for a, e in zip(g_c, g_p):
    np.testing.assert_allclose(a, e, atol=1e-5)


def test_chunked_never_materialises_full_logits():
  b, t, d, v = 1, 64, 4, 1000
  jaxpr = jax.make_jaxpr(lambda h, w, y: losses.chunked_token_logprobs(
      h, w, y, chunk_size=8))(jnp.zeros((b, t, d)), jnp.zeros((d, v)),
                              jnp.zeros((b, t), jnp.int32))
  # No intermediate, in any sub-jaxpr, reaches [B, T, V]; the largest is one
  # chunk of logits [1, 8, 1000].
  assert _max_intermediate(jaxpr.jaxpr) == b * 8 * v


def _max_intermediate(jaxpr) -> int:
  """Largest output size of any equation in `jaxpr` or its sub-jaxprs."""
  best = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      best = max(best, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      sub = getattr(param, "jaxpr", param)
      if hasattr(sub, "eqns"):
        best = max(best, _max_intermediate(sub))
  return best


def test_losses_and_pareto_import_alone():
  # Users import the losses in their own code: no models, envs or Flax.
  code = ("import sys, mosaic_jax.losses, mosaic_jax.pareto; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('flax', 'optax', 'mosaic_jax')))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == str(["mosaic_jax", "mosaic_jax.losses",
                             "mosaic_jax.pareto"])


# ----------------------------------------------------------------------------
# The objective made exact (issue #24): ties, KL gradients, masking, variants.


def test_rloo_leave_one_out_baseline():
  r = jnp.array([[1.0, 2.0, 6.0], [1.0, 2.0, 6.0]])
  mask = jnp.array([[True, True, True], [True, True, False]])
  adv = losses.ADVANTAGE_ESTIMATORS["rloo"](r, mask)
  # Baselines (2+6)/2, (1+6)/2, (1+2)/2; second group over {1, 2} only.
  np.testing.assert_allclose(adv, [[1 - 4, 2 - 3.5, 6 - 1.5], [-1, 1, 0]])
  # One valid member: no baseline, A = 0.
  one = losses.leave_one_out_advantages(r[:1], jnp.array([[1, 0, 0]]) > 0)
  np.testing.assert_array_equal(one, 0.0)


def test_tied_verdicts_give_zero_advantage_not_length_noise():
  # Group 0: every comparison a tie (wins 1.5 each, equal format), lengths
  # 401 and 402 tokens above L0 = 400: the rewards differ by 1/400 only.
  wins = jnp.array([[1.5, 1.5, 1.5, 1.5], [3.0, 1.0, 1.0, 1.0]])
  fmt = jnp.full((2, 4), 2.0)
  pen = losses.length_penalty(jnp.array([[401, 402, 401, 402]] * 2))
  rewards = wins + fmt - pen
  adv = losses.group_advantages(rewards)
  # The flaw: normalisation turns a 1-token difference into A = ±1.
  np.testing.assert_allclose(adv[0], [1, -1, 1, -1], rtol=1e-3)
  signal = losses.group_has_signal((wins + fmt)[..., None])
  assert signal.tolist() == [False, True]
  fixed = losses.tie_advantages(adv, signal, "zero")
  np.testing.assert_array_equal(fixed[0], 0.0)
  np.testing.assert_array_equal(fixed[1], adv[1])
  np.testing.assert_array_equal(losses.tie_advantages(adv, signal, "keep"),
                                adv)
  # Vector verdicts (PFPO's z): equal rows tie, masked members are ignored.
  z = jnp.array([[[1., 0.], [1., 0.], [0., 1.]]])
  assert losses.group_has_signal(z).tolist() == [True]
  assert losses.group_has_signal(
      z, jnp.array([[True, True, False]])).tolist() == [False]
  with pytest.raises(ValueError, match="unknown tie mode"):
    losses.tie_advantages(adv, signal, "drop")


def _categorical():
  rng = np.random.default_rng(3)
  theta = jnp.asarray(rng.normal(size=5), jnp.float32)
  ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=5), jnp.float32))
  return theta, ref


def _expected_loss_grad(estimator, theta, ref):
  """∇_θ E_{y~π_old}[k(log π_θ(y), log π_ref(y))] at θ = θ_old, in closed
  form: the sampling distribution is held fixed, as in the loss."""
  p_old = jax.nn.softmax(theta)

  def expected(t):
    return jnp.sum(p_old * estimator(jax.nn.log_softmax(t), ref))

  return jax.grad(expected)(theta)


@jax.jit
def _kl_gradients(theta, ref):
  """Exact ∇KL(π‖π_ref), ∇KL(π_ref‖π) and each estimator's expected loss
  gradient, all at θ."""
  fwd = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * (
      jax.nn.log_softmax(t) - ref)))(theta)
  rev = jax.grad(lambda t: jnp.sum(jnp.exp(ref) * (
      ref - jax.nn.log_softmax(t))))(theta)
  return fwd, rev, {k: _expected_loss_grad(f, theta, ref)
                    for k, f in losses.KL_ESTIMATORS.items()}


def test_kl_estimator_gradients_exact_on_a_categorical():
  theta, ref = _categorical()
  fwd, rev, grads = _kl_gradients(theta, ref)
  assert float(jnp.max(jnp.abs(fwd - rev))) > 0.05   # They differ here.
  np.testing.assert_allclose(grads["k1"], 0.0, atol=1e-6)
  np.testing.assert_allclose(grads["k2"], fwd, atol=1e-6)
  np.testing.assert_allclose(grads["k3"], rev, atol=1e-6)
  assert losses.KL_GRADIENTS == {"k1": "none (0)", "k2": "KL(π‖π_ref)",
                                 "k3": "KL(π_ref‖π)"}
  # k1 as a reward penalty: the score-function gradient E[k1 ∇log π] is
  # exactly ∇KL(π‖π_ref).
  p_old = jax.nn.softmax(theta)
  k1 = jax.nn.log_softmax(theta) - ref
  reinforce = jax.grad(lambda t: jnp.sum(
      p_old * k1 * jax.nn.log_softmax(t)))(theta)
  np.testing.assert_allclose(reinforce, fwd, atol=1e-6)
  # Values: k1 and k3 are unbiased for KL(π‖π_ref), k2 is not.
  kl = float(jnp.sum(p_old * k1))
  value = lambda k: float(jnp.sum(p_old * losses.KL_ESTIMATORS[k](
      jax.nn.log_softmax(theta), ref)))
  assert value("k1") == pytest.approx(kl, rel=1e-5)
  assert value("k3") == pytest.approx(kl, rel=1e-5)
  assert value("k2") != pytest.approx(kl, rel=1e-2)


def test_kl_reward_advantages_leave_one_out():
  old = jnp.array([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
  ref = jnp.array([[-2.0, -2.0, -5.0], [-2.0, -3.0, -1.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
  k = losses.sequence_kl(old, ref, mask)
  np.testing.assert_allclose(k, [1.0, 1.0 + 2.0 + 0.0])  # masked 5 left out
  adv = losses.kl_reward_advantages(k[None], 0.1)
  # −β (K_i − K_j): K = (1, 3).
  np.testing.assert_allclose(adv, [[0.2, -0.2]], rtol=1e-6)


_MASKED = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)


@jax.jit
def _masked_losses(logp, old, ref):
  """{(ratio, kl, mode): (loss, ∇logp)} of policy_loss on the masked case."""
  adv = jnp.array([1.0, -2.0])
  out = {}
  for ratio in losses.POLICY_RATIOS:
    for kl in losses.KL_ESTIMATORS:
      for mode in losses.AGGREGATIONS:
        f = lambda lp, ratio=ratio, kl=kl, mode=mode: losses.policy_loss(
            lp, old, ref, adv, _MASKED, kl_beta=0.1, kl_estimator=kl,
            aggregation=mode, ratio=ratio).mean()
        out[ratio, kl, mode] = jax.value_and_grad(f)(logp)
  return out


def test_masked_infinite_log_ratio_gives_finite_loss_and_grads():
  logp = jnp.array([[-1.0, -0.5, -jnp.inf], [-2.0, -jnp.inf, 3.0]])
  old = jnp.array([[-1.1, -0.4, 0.0], [-1.5, 7.0, -jnp.inf]])
  ref = jnp.array([[-1.2, -0.7, jnp.inf], [-1.0, -jnp.inf, -jnp.inf]])
  clean = lambda x: jnp.where(_MASKED > 0, x, 0.0)
  got = _masked_losses(logp, old, ref)
  want = _masked_losses(clean(logp), clean(old), clean(ref))
  for key, (value, grad) in got.items():
    assert np.isfinite(float(value)), key
    assert np.all(np.isfinite(grad)), key
    assert float(value) == pytest.approx(float(want[key][0]), rel=1e-6), key
    np.testing.assert_allclose(grad, want[key][1], rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(np.asarray(grad)[np.asarray(_MASKED) == 0],
                                  0)
  # Multiplying by the mask, as before, turns inf · 0 into NaN.
  assert np.isnan(float(jnp.sum(jnp.exp(logp - old) * _MASKED)))


def test_gspo_sequence_ratio_value_and_gradient():
  # Sequence 0: log-ratios 0.1, 0.3 → s = e^0.2 ≈ 1.221 > 1.2 with A = +1:
  # clipped, loss −1.2, no gradient. Sequence 1: −0.1, 0.0 (third masked)
  # → s = e^−0.05, A = −1, unclipped: loss s, ∂/∂logp_t = s/2 per token.
  d = jnp.array([[0.1, 0.3, 0.0], [-0.1, 0.0, 5.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0]], jnp.float32)
  old = jnp.full(d.shape, -1.0)
  adv = jnp.array([1.0, -1.0])
  s1 = math.exp(-0.05)

  def loss(lp):
    return losses.policy_loss(lp, old, None, adv, mask, ratio="gspo",
                              aggregation="sequence-mean-token-mean")

  out = loss(old + d)
  assert float(out.total) == pytest.approx(-1.2 + s1, rel=1e-6)
  assert float(out.count) == 2
  grad = jax.grad(lambda lp: loss(lp).total)(old + d)
  np.testing.assert_allclose(grad, [[0, 0, 0], [s1 / 2, s1 / 2, 0]],
                             rtol=1e-6, atol=1e-7)
  # Token ratios clip nothing here (e^0.1, e^0.3 > 1.2 only for the second).
  r = losses.token_ratios(old + d, old, mask)
  np.testing.assert_allclose(r[0, :2], np.exp([0.1, 0.3]), rtol=1e-6)


def test_dapo_clip_higher_and_clip_masks():
  logp, old, adv = _ppo_inputs([2.0, -2.0])  # ratios 0.5, 1.1, 1.5
  r = jnp.exp(logp - old)
  low, high = losses.clip_masks(r, adv, eps_lo=0.2, eps_hi=0.28)
  # A > 0: only 1.5 > 1.28 is clipped; A < 0: only 0.5 < 0.8.
  assert np.asarray(high).tolist() == [[False, False, True]] + [[False] * 3]
  assert np.asarray(low).tolist() == [[False] * 3, [True, False, False]]
  loss = losses.clipped_surrogate(r, adv, eps_lo=0.2, eps_hi=0.28)
  np.testing.assert_allclose(loss[0], [-1.0, -2.2, -2.56], rtol=1e-6)
  assert losses.OBJECTIVE_PRESETS["dapo"]["clip_eps_hi"] == 0.28


def test_dr_grpo_constant_length_normaliser():
  rewards = jnp.array([[1.0, 2.0, 6.0]])
  adv = losses.ADVANTAGE_ESTIMATORS["dr_grpo"](rewards)[0]  # −2, −1, 3
  lengths = np.array([1, 2, 3])
  mask = jnp.asarray(np.arange(4)[None] < lengths[:, None], jnp.float32)
  logp = jnp.full((3, 4), -1.0)
  out = losses.policy_loss(logp, logp, None, adv, mask,
                           aggregation="sequence-sum", seq_norm=4.0)
  # Ratio 1: ℓ_t = −A; Σ_b len_b · (−A_b) / 4 = (2 + 2 − 9) / 4, 3 sequences.
  assert float(out.total) == pytest.approx(-5 / 4)
  assert float(out.mean()) == pytest.approx(-5 / 12)


def test_objective_presets_name_registered_pieces():
  for name, preset in losses.OBJECTIVE_PRESETS.items():
    assert preset["advantage"] in losses.ADVANTAGE_ESTIMATORS, name
    assert preset["policy_ratio"] in losses.POLICY_RATIOS, name
    assert preset["aggregation"] in losses.AGGREGATIONS, name
  assert set(losses.OBJECTIVE_PRESETS) == {"grpo", "dr_grpo", "dapo", "gspo",
                                           "rloo"}


def test_chunked_token_entropy_matches_numpy():
  rng = np.random.default_rng(4)
  hidden = rng.normal(size=(2, 5, 3)).astype(np.float32)
  w = rng.normal(size=(3, 11)).astype(np.float32)
  logits = hidden @ w
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = -np.sum(p * np.log(p), -1)
  out = losses.chunked_token_entropy(jnp.asarray(hidden), jnp.asarray(w),
                                     chunk_size=2)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
