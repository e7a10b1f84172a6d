"""Sampling matches the (temperature-scaled, nucleus-truncated, grammar-masked) softmax in a chi-square test."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from videor4_jax.rumination.sampling import nucleus_mask, sample_next


def _expected(logits, temperature, top_p, allowed=None):
  z = logits / temperature
  if allowed is not None:
    z = np.where(allowed, z, -np.inf)
  p = np.exp(z - z[np.isfinite(z)].max())
  p = p / p.sum()
  order = np.argsort(-p)
  kept = np.zeros_like(p, bool)
  mass = 0.0
  for tok in order:          # smallest prefix of the sorted list whose mass reaches top_p
    if p[tok] == 0:
      break
    kept[tok] = True
    mass += p[tok]
    if mass >= top_p:
      break
  q = np.where(kept, p, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_p,constrained", [(1.0, 1.0, False), (0.7, 0.9, False),
                                                           (1.3, 0.75, True)])
def test_sampling_matches_softmax(temperature, top_p, constrained):
  rng = np.random.default_rng(0)
  vocab, draws = 12, 40000
  logits = rng.normal(size=vocab).astype(np.float32) * 1.5
  allowed = rng.random(vocab) < 0.6 if constrained else None
  if allowed is not None:
    allowed[0] = True
  expected = _expected(logits.astype(np.float64), temperature, top_p, allowed)
  logits_bv = jnp.broadcast_to(jnp.asarray(logits), (draws, vocab))
  allowed_bv = None if allowed is None else jnp.broadcast_to(jnp.asarray(allowed), (draws, vocab))
  tokens, logp = jax.jit(lambda k, l, a: sample_next(k, l, a, temperature=temperature, top_p=top_p))(
      jax.random.key(1), logits_bv, allowed_bv)
  counts = np.bincount(np.asarray(tokens), minlength=vocab)
  assert counts[expected == 0].sum() == 0, "drew a token outside the nucleus / grammar mask"
  support = expected > 0
  chi2, pval = stats.chisquare(counts[support], expected[support] * draws)
  assert pval > 1e-3, (chi2, pval, counts, expected * draws)
  # The recorded log-prob is that of the full tempered softmax, whatever the truncation.
  full = jax.nn.log_softmax(jnp.asarray(logits) / temperature)
  np.testing.assert_allclose(np.asarray(logp), np.asarray(full)[np.asarray(tokens)], rtol=1e-6, atol=1e-6)


def test_greedy_respects_mask_and_never_nan():
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
  allowed = jnp.array([[False, True, True], [False, False, False]])  # row 2 allows nothing: unconstrained fallback
  tokens, logp = sample_next(jax.random.key(0), logits, allowed, greedy=True)
  assert tokens.tolist() == [2, 2]
  assert np.all(np.isfinite(np.asarray(logp)))


def test_nucleus_keeps_top1_even_for_tiny_p():
  logits = jnp.array([[0.0, 2.0, 1.0]])
  assert nucleus_mask(logits, 1e-9).tolist() == [[False, True, False]]
