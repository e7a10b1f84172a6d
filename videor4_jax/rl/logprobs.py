"""Token log-probs from hidden states and the LM head, in sequence and vocabulary chunks.

    logp[b, t] = (h[b, t] . W[:, y[b, t]]) / tau - logsumexp_v (h[b, t] . W[:, v]) / tau

computed chunk by chunk: a scan over sequence chunks of `seq_chunk` tokens, and inside it an online logsumexp
over vocabulary chunks of `vocab_chunk` columns (running max m and sum s: s <- s * exp(m - m') + sum exp(z - m')).
The chunk body is rematerialized (`jax.checkpoint`), so neither the forward nor the backward pass ever holds a
`[B, T, V]` logits array: at most `[B, seq_chunk, vocab_chunk]`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _pad_to(x, axis, multiple, value=0):
  n = x.shape[axis]
  pad = (-n) % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def token_logprobs(hidden_btd, head_dv, targets_bt, *, seq_chunk: int = 256, vocab_chunk: int = 8192,
                   temperature: float = 1.0, return_entropy: bool = False):
  """log p(targets) `[B, T]` (and optionally the entropy `[B, T]`) without materializing `[B, T, V]`."""
  b, t, d = hidden_btd.shape
  v = head_dv.shape[1]
  seq_chunk, vocab_chunk = min(seq_chunk, t), min(vocab_chunk, v)
  h = _pad_to(hidden_btd, 1, seq_chunk)
  y = _pad_to(targets_bt, 1, seq_chunk)
  n_s = h.shape[1] // seq_chunk
  w = _pad_to(head_dv, 1, vocab_chunk)
  n_v = w.shape[1] // vocab_chunk
  w_chunks = w.reshape(d, n_v, vocab_chunk).transpose(1, 0, 2)                           # [nV, D, vc]
  col_valid = (jnp.arange(n_v * vocab_chunk) < v).reshape(n_v, vocab_chunk)
  inv_tau = 1.0 / temperature

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk(h_bcd, y_bc):
    def over_vocab(carry, xs):
      m, s, zs = carry
      w_dc, ok = xs
      z = jnp.einsum("bcd,dv->bcv", h_bcd, w_dc.astype(h_bcd.dtype),
                     preferred_element_type=jnp.float32) * inv_tau
      z = jnp.where(ok, z, -jnp.inf)
      m_new = jnp.maximum(m, z.max(-1))
      p = jnp.exp(z - m_new[..., None])
      scale = jnp.exp(m - m_new)
      s = s * scale + p.sum(-1)
      zs = zs * scale + (p * jnp.where(ok, z, 0.0)).sum(-1)      # running sum of p * z for the entropy
      return (m_new, s, zs), None

    init = (jnp.full(y_bc.shape, -jnp.inf, jnp.float32), jnp.zeros(y_bc.shape, jnp.float32),
            jnp.zeros(y_bc.shape, jnp.float32))
    (m, s, zs), _ = jax.lax.scan(over_vocab, init, (w_chunks, col_valid))
    lse = m + jnp.log(s)
    w_y = jnp.take(head_dv, y_bc, axis=1)                                              # [D, B, c]
    z_y = jnp.einsum("bcd,dbc->bc", h_bcd, w_y.astype(h_bcd.dtype), preferred_element_type=jnp.float32) * inv_tau
    entropy = lse - zs / s
    return z_y - lse, entropy

  hs = h.reshape(b, n_s, seq_chunk, d).transpose(1, 0, 2, 3)
  ys = y.reshape(b, n_s, seq_chunk).transpose(1, 0, 2)
  logp, ent = jax.lax.map(lambda xs: chunk(*xs), (hs, ys))
  logp = logp.transpose(1, 0, 2).reshape(b, -1)[:, :t]
  if return_entropy:
    return logp, ent.transpose(1, 0, 2).reshape(b, -1)[:, :t]
  return logp
