"""GRPO loss vs an independent NumPy implementation of the published formula; advantages; k3 KL; chunked logp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.rl import grpo
from videor4_jax.rl.logprobs import token_logprobs


def numpy_grpo(logp, old, adv, mask, ref, beta, eps_lo, eps_hi, agg, max_len=0):
  """DeepSeekMath GRPO objective written out loop by loop (negated: a loss)."""
  b, t = logp.shape
  per = np.zeros((b, t))
  for i in range(b):
    for j in range(t):
      rho = np.exp(logp[i, j] - old[i, j])
      surr = min(rho * adv[i], np.clip(rho, 1 - eps_lo, 1 + eps_hi) * adv[i])
      kl = np.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1 if beta else 0.0
      per[i, j] = -(surr - beta * kl)
  if agg == "token_mean":
    return (per * mask).sum() / mask.sum()
  if agg == "seq_mean_token_mean":
    return np.mean([(per[i] * mask[i]).sum() / mask[i].sum() for i in range(b)])
  return (per * mask).sum() / (b * (max_len or t))


@pytest.mark.parametrize("agg", grpo.AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_numpy_formula(agg, beta):
  rng = np.random.default_rng(0)
  b, t = 6, 9
  logp = -rng.random((b, t)) * 3
  old = logp + rng.normal(size=(b, t)) * 0.3       # ratios well outside [0.8, 1.2] too
  ref = logp + rng.normal(size=(b, t)) * 0.2
  adv = rng.normal(size=b)
  mask = (rng.random((b, t)) < 0.7).astype(np.float64)
  mask[:, 0] = 1
  want = numpy_grpo(logp, old, adv, mask, ref, beta, 0.2, 0.28, agg)
  got, metrics = grpo.grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                jnp.asarray(adv, jnp.float32), jnp.asarray(mask), ref_logp_bt=jnp.asarray(ref),
                                beta=beta, eps_low=0.2, eps_high=0.28, aggregation=agg)
  assert abs(float(got) - want) <= 1e-6 * max(1.0, abs(want))
  assert 0 < float(metrics["clip_frac"]) < 1


def _random_case(seed=0, b=6, t=9):
  rng = np.random.default_rng(seed)
  logp = -rng.random((b, t)) * 3
  old = logp + rng.normal(size=(b, t)) * 0.3
  ref = logp + rng.normal(size=(b, t)) * 0.2
  mask = (rng.random((b, t)) < 0.7).astype(np.float64)
  mask[:, 0] = 1
  return logp, old, ref, rng.normal(size=b), mask


def test_dr_grpo_constant_normalizer_max_len():
  """Dr. GRPO divides by B * max_len (a constant, here longer than the batch's T=9), not by B * T."""
  logp, old, ref, adv, mask = _random_case(3)
  for max_len in (0, 20):
    want = numpy_grpo(logp, old, adv, mask, ref, 0.04, 0.2, 0.28, "dr_grpo", max_len)
    got, _ = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                            ref_logp_bt=jnp.asarray(ref), beta=0.04, eps_low=0.2, eps_high=0.28,
                            aggregation="dr_grpo", max_len=max_len)
    assert abs(float(got) - want) <= 1e-6 * max(1.0, abs(want)), max_len


@pytest.mark.parametrize("agg", grpo.AGGREGATIONS)
def test_zero_variance_filter_equals_deleting_the_groups(agg):
  """Rows of zero-variance groups get zero loss weight: the loss equals the NumPy loss of the batch with those
  rows deleted (normalizers included), and their log-probs get exactly zero gradient."""
  G = 2
  logp, old, ref, _, mask = _random_case(4)
  rewards = jnp.array([1.0, 0.0, 0.7, 0.7, 0.2, 0.5])          # group 1 has zero variance
  keep = ~grpo.zero_variance_groups(rewards, G)
  assert np.asarray(keep).tolist() == [True, True, False, False, True, True]
  adv = np.asarray(grpo.group_advantages(rewards, G), np.float64)
  rows = np.asarray(keep)
  want = numpy_grpo(logp[rows], old[rows], adv[rows], mask[rows], ref[rows], 0.04, 0.2, 0.28, agg, 12)

  def loss(lp):
    return grpo.grpo_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), ref_logp_bt=jnp.asarray(ref),
                          beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=agg, max_len=12, keep_b=keep)[0]

  got, grad = jax.value_and_grad(loss)(jnp.asarray(logp))
  assert abs(float(got) - want) <= 1e-6 * max(1.0, abs(want))
  assert np.all(np.asarray(grad)[~rows] == 0) and np.any(np.asarray(grad)[rows] != 0)
  # Without the filter the zero-variance rows still count (KL term, normalizers): a different loss.
  unfiltered = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                              ref_logp_bt=jnp.asarray(ref), beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=agg,
                              max_len=12)[0]
  assert abs(float(unfiltered) - want) > 1e-4


def test_group_advantages_hand_computed():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
  a = grpo.group_advantages(r, 4)
  np.testing.assert_allclose(np.asarray(a[:4]), [1, -1, -1, 1], atol=1e-5)     # mean 0.5, std 0.5
  np.testing.assert_allclose(np.asarray(a[4:]), 0, atol=1e-6)                   # zero variance -> 0, not NaN
  np.testing.assert_allclose(np.asarray(grpo.group_advantages(r, 4, std_normalize=False))[:4], [.5, -.5, -.5, .5])
  assert np.asarray(grpo.zero_variance_groups(r, 4)).tolist() == [False] * 4 + [True] * 4


def test_k3_kl_hand_computed():
  logp, ref = jnp.array([np.log(0.5), np.log(0.2)]), jnp.array([np.log(0.25), np.log(0.2)])
  # ratio ref/pi = 0.5: 0.5 - log 0.5 - 1 = 0.19315; equal probs -> 0.
  np.testing.assert_allclose(np.asarray(grpo.kl_k3(logp, ref)), [0.5 - np.log(0.5) - 1, 0.0], atol=1e-6)


def test_config_validates():
  with pytest.raises(ValueError, match="num_generations >= 2"):
    grpo.GRPOConfig(num_generations=1)
  with pytest.raises(ValueError, match="aggregation"):
    grpo.GRPOConfig(aggregation="mean")
  with pytest.raises(ValueError, match="max_len"):
    grpo.GRPOConfig(max_len=-1)
  with pytest.raises(ValueError, match="adv_eps"):
    grpo.GRPOConfig(adv_eps=0.0)


@pytest.mark.parametrize("seq_chunk,vocab_chunk", [(4, 16), (5, 7), (64, 1000)])
def test_chunked_logprobs_equal_dense_values_and_gradients(seq_chunk, vocab_chunk):
  rng = np.random.default_rng(1)
  b, t, d, v = 2, 11, 8, 50
  h = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  y = jnp.asarray(rng.integers(0, v, size=(b, t)))

  def dense(h, w):
    lp = jax.nn.log_softmax(h @ w / 0.7, -1)
    return jnp.take_along_axis(lp, y[..., None], -1)[..., 0]

  chunked = lambda h, w: token_logprobs(h, w, y, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk, temperature=0.7)
  np.testing.assert_allclose(np.asarray(chunked(h, w)), np.asarray(dense(h, w)), atol=1e-5)
  gc = jax.grad(lambda h, w: chunked(h, w).sum(), argnums=(0, 1))(h, w)
  gd = jax.grad(lambda h, w: dense(h, w).sum(), argnums=(0, 1))(h, w)
  for a, bb in zip(gc, gd):
    np.testing.assert_allclose(np.asarray(a), np.asarray(bb), atol=1e-4)
  _, ent = token_logprobs(h, w, y, seq_chunk=seq_chunk, vocab_chunk=vocab_chunk, temperature=0.7,
                          return_entropy=True)
  p = jax.nn.softmax(h @ w / 0.7, -1)
  np.testing.assert_allclose(np.asarray(ent), np.asarray(-(p * jnp.log(p)).sum(-1)), atol=1e-4)


def test_trl_normalization_equals_hand_computed_sample_std():
  """adv_std_ddof=1, adv_eps=1e-4 (TRL's GRPOTrainer): A = (R - mean) / (sample std + 1e-4), written out by hand;
  the default (population std) is larger by exactly sqrt(G / (G - 1)) before eps."""
  r = jnp.array([1.0, 0.0, 0.0, 0.0, 0.2, 0.6, 1.0, 0.2])
  got = np.asarray(grpo.group_advantages(r, 4, eps=1e-4, ddof=1))
  # group 1: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
  np.testing.assert_allclose(got[:4], [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001], rtol=1e-6)
  # group 2: mean 0.5, deviations (-0.3, 0.1, 0.5, -0.3), sample std sqrt(0.44 / 3)
  s = np.sqrt((0.09 + 0.01 + 0.25 + 0.09) / 3)
  np.testing.assert_allclose(got[4:], np.array([-0.3, 0.1, 0.5, -0.3]) / (s + 1e-4), rtol=1e-5)
  pop = np.asarray(grpo.group_advantages(r, 4, eps=1e-12))
  samp = np.asarray(grpo.group_advantages(r, 4, eps=1e-12, ddof=1))
  np.testing.assert_allclose(pop / samp, np.sqrt(4 / 3), rtol=1e-5)
  cfg = grpo.GRPOConfig(adv_std_ddof=1, adv_eps=1e-4)
  assert (cfg.adv_std_ddof, cfg.adv_eps) == (1, 1e-4) and grpo.GRPOConfig().adv_std_ddof == 0


def test_zero_variance_groups_get_exactly_zero_advantage():
  """Equal rewards whose float mean is not exact (0.1 x 3) still give A = 0 exactly, for either std convention:
  grpo_step (train/steps.py) tells an uninformative batch by its advantages when no `keep` is given."""
  r = jnp.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])
  for ddof in (0, 1):
    assert np.all(np.asarray(grpo.group_advantages(r, 3, ddof=ddof)) == 0.0)


def _fake_draws(informative_rows):
  """draw(d) returning the d-th row of `informative_rows`; records the calls."""
  calls = []

  def draw(d):
    calls.append(d)
    return np.asarray(informative_rows[d], bool)
  return draw, calls


def test_dynamic_sampling_fills_the_batch_with_informative_groups():
  draw, calls = _fake_draws([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
  picked, st = grpo.dynamic_sample(draw, 4, max_draws=4)
  assert calls == [0, 1, 2]                              # stops as soon as 4 informative groups are held
  assert picked == [(0, 0), (1, 1), (1, 2), (2, 0)]      # informative groups in draw order, the surplus dropped
  assert st == dict(draws=3, drawn_groups=12, informative_groups=7, filled=4, capped=False)


def test_dynamic_sampling_stops_at_its_cap_and_says_so():
  draw, calls = _fake_draws([[0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  picked, st = grpo.dynamic_sample(draw, 4, max_draws=2)
  assert calls == [0, 1]                                 # the cap: two rollout batches, the third never drawn
  assert st == dict(draws=2, drawn_groups=8, informative_groups=1, filled=1, capped=True)
  assert picked[0] == (0, 2) and picked[1:] == [(0, 0), (0, 1), (0, 3)]   # completed with zero-variance groups
  one, st1 = grpo.dynamic_sample(_fake_draws([[0, 1, 0, 0]])[0], 4, max_draws=1)   # off: one draw, as is
  assert st1["draws"] == 1 and st1["capped"] and sorted(one) == [(0, g) for g in range(4)]


def test_new_options_validate():
  with pytest.raises(ValueError, match="adv_std_ddof"):
    grpo.GRPOConfig(adv_std_ddof=2)
  with pytest.raises(ValueError, match="max_draws"):
    grpo.GRPOConfig(max_draws=0)
