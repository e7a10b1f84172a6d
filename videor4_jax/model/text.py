"""Qwen2 text decoder: GQA with q/k/v bias, M-RoPE, RMSNorm, SwiGLU; scanned layers; a slot-addressed KV cache.

Attention is defined by *slots*: query slot q attends key slot s iff `valid[s] and s <= q`. Without a cache the
slots of a chunk are `0..T-1`; with a cache the chunk of row b occupies slots `write_index[b] + t`. Positions
(M-RoPE, `[3, B, T]`) are explicit inputs and never derived from slots, so the rollout can append observation
turns whose positions continue from a per-row counter.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from videor4_jax.model.config import ModelConfig
from videor4_jax.model.layers import RMSNorm, SwiGLU, apply_rotary, dense, masked_attention


@flax.struct.dataclass
class KVCache:
  k: jax.Array      # [L, B, S, Hkv, Dh]
  v: jax.Array      # [L, B, S, Hkv, Dh]
  valid: jax.Array  # [B, S] bool: the slot holds a real token


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  t = config.text
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (t.num_hidden_layers, batch, max_len, t.num_key_value_heads, t.head_dim)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), bool))


def mrope_cos_sin(config: ModelConfig, positions_3bt):
  """cos, sin `[B, T, Dh]` for M-RoPE: frequency band i of `mrope_section` rotates by position row i (t, h, w)."""
  t = config.text
  dh = t.head_dim
  inv_freq = 1.0 / (t.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))      # [Dh/2]
  freqs = positions_3bt.astype(jnp.float32)[..., None] * inv_freq                        # [3, B, T, Dh/2]
  bands, start = [], 0
  for i, width in enumerate(t.mrope_section):
    bands.append(freqs[i % 3, ..., start:start + width])
    start += width
  freqs = jnp.concatenate(bands, axis=-1)                                               # [B, T, Dh/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def _write_rows(buf_bs, upd_bt, offset_b):
  return jax.vmap(lambda b, u, o: jax.lax.dynamic_update_slice_in_dim(b, u, o, axis=0))(buf_bs, upd_bt, offset_b)


class DecoderLayer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_btd, layer_cache, consts):
    c, t = self.config, self.config.text
    dtype, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    cos, sin, mask_bqk, write_index = consts
    h = RMSNorm(t.rms_norm_eps, dtype=dtype, param_dtype=pdt, name="input_layernorm")(x_btd)
    b, n, _ = x_btd.shape
    kw = dict(dtype=dtype, param_dtype=pdt, init_std=c.initializer_range)
    q = dense(t.num_attention_heads * t.head_dim, ("embed", "q_heads"), use_bias=True, name="q_proj", **kw)(h)
    k = dense(t.num_key_value_heads * t.head_dim, ("embed", "kv_heads"), use_bias=True, name="k_proj", **kw)(h)
    v = dense(t.num_key_value_heads * t.head_dim, ("embed", "kv_heads"), use_bias=True, name="v_proj", **kw)(h)
    q = q.reshape(b, n, t.num_attention_heads, t.head_dim)
    k = k.reshape(b, n, t.num_key_value_heads, t.head_dim)
    v = v.reshape(b, n, t.num_key_value_heads, t.head_dim)
    q = apply_rotary(q, cos[:, :, None], sin[:, :, None])
    k = apply_rotary(k, cos[:, :, None], sin[:, :, None])
    if layer_cache is not None:
      k_all = _write_rows(layer_cache[0], k.astype(layer_cache[0].dtype), write_index)
      v_all = _write_rows(layer_cache[1], v.astype(layer_cache[1].dtype), write_index)
      new_cache = (k_all, v_all)
    else:
      k_all, v_all, new_cache = k, v, None
    k_all = nn.with_logical_constraint(k_all, ("batch", "cache_length", "kv_heads_act", None))
    attn = masked_attention(q, k_all.astype(dtype), v_all.astype(dtype), mask_bqk, scale=t.head_dim ** -0.5)
    attn = attn.reshape(b, n, t.num_attention_heads * t.head_dim)
    x_btd = x_btd + dense(t.hidden_size, ("q_heads", "embed"), use_bias=False, name="o_proj", **kw)(attn)
    h = RMSNorm(t.rms_norm_eps, dtype=dtype, param_dtype=pdt, name="post_attention_layernorm")(x_btd)
    x_btd = x_btd + SwiGLU(t.hidden_size, t.intermediate_size, use_bias=False, name="mlp", **kw)(h)
    x_btd = nn.with_logical_constraint(x_btd, ("batch", "length", "embed"))
    return x_btd, new_cache


def _remat(cls, policy: str):
  if policy == "none":
    return cls
  pol = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return nn.remat(cls, policy=pol, prevent_cse=False)


class TextDecoder(nn.Module):
  """Layers + final norm. `__call__(x, positions, mask, cache_kv, write_index) -> (hidden, cache_kv)`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_btd, positions_3bt, mask_bqk, cache_kv=None, write_index=None):
    c = self.config
    cos, sin = mrope_cos_sin(c, positions_3bt)
    consts = (cos, sin, mask_bqk, write_index)
    layer_cls = _remat(DecoderLayer, c.remat)
    if c.scan_layers:
      stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(0, nn.broadcast), length=c.text.num_hidden_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_btd, cache_kv = stack(c, name="layers")(x_btd, cache_kv, consts)
    else:
      outs = []
      for i in range(c.text.num_hidden_layers):
        lc = None if cache_kv is None else (cache_kv[0][i], cache_kv[1][i])
        x_btd, nc = layer_cls(c, name=f"layers_{i}")(x_btd, lc, consts)
        outs.append(nc)
      if cache_kv is not None:
        cache_kv = (jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))
    x_btd = RMSNorm(c.text.rms_norm_eps, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                    name="norm")(x_btd)
    return x_btd, cache_kv
