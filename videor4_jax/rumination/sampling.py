"""Next-token sampling for the rollout: temperature, nucleus (top-p), greedy, and grammar constraints.

The recorded log-prob of a sampled token is always `log_softmax(logits / temperature)[token]` over the FULL
vocabulary, i.e. before the grammar mask and the top-p truncation. That is exactly what the trainer recomputes by
teacher forcing (`rl.logprobs.token_logprobs` with the same temperature), so rollout and trainer agree by
construction; the truncations only shape which token is drawn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def nucleus_mask(logits_bv: jax.Array, top_p: float) -> jax.Array:
  """Tokens inside the smallest set whose probability mass reaches `top_p` (the top-1 token always kept).

  Returns a bool mask `[B, V]`. A token is kept when the mass of the tokens ranked strictly above it is `< top_p`.
  """
  if top_p >= 1.0:
    return jnp.ones(logits_bv.shape, bool)
  probs_bv = jax.nn.softmax(logits_bv, axis=-1)
  order_bv = jnp.argsort(-logits_bv, axis=-1)                     # [B, V] rank -> token
  sorted_p_bv = jnp.take_along_axis(probs_bv, order_bv, axis=-1)
  mass_above_bv = jnp.cumsum(sorted_p_bv, axis=-1) - sorted_p_bv  # exclusive cumsum
  keep_sorted_bv = mass_above_bv < top_p
  keep_sorted_bv = keep_sorted_bv.at[:, 0].set(True)
  rank_bv = jnp.argsort(order_bv, axis=-1)                        # token -> rank
  return jnp.take_along_axis(keep_sorted_bv, rank_bv, axis=-1)


def sample_next(key: jax.Array, logits_bv: jax.Array, allowed_bv: jax.Array | None = None, *,
                temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False):
  """Draws one token per row. Returns `(tokens [B] int32, logp [B] float32)`.

  `allowed_bv` ([B, V] bool, optional) restricts the draw (grammar-constrained decoding); a row whose mask allows
  nothing falls back to the unconstrained draw instead of producing NaN.
  """
  logits_bv = logits_bv.astype(jnp.float32)
  scaled_bv = logits_bv / jnp.maximum(temperature, 1e-6) if not greedy else logits_bv
  logp_full_bv = jax.nn.log_softmax(logits_bv / (temperature if not greedy else 1.0), axis=-1)
  candidate_bv = jnp.ones(logits_bv.shape, bool)
  if allowed_bv is not None:
    any_allowed_b = jnp.any(allowed_bv, axis=-1, keepdims=True)
    candidate_bv = jnp.where(any_allowed_b, allowed_bv, True)
  if greedy:
    tokens_b = jnp.argmax(jnp.where(candidate_bv, logits_bv, NEG_INF), axis=-1)
  else:
    masked_bv = jnp.where(candidate_bv, scaled_bv, NEG_INF)
    masked_bv = jnp.where(nucleus_mask(masked_bv, top_p), masked_bv, NEG_INF)
    tokens_b = jax.random.categorical(key, masked_bv, axis=-1)
  tokens_b = tokens_b.astype(jnp.int32)
  logp_b = jnp.take_along_axis(logp_full_bv, tokens_b[:, None], axis=-1)[:, 0]
  return tokens_b, logp_b
