"""Qwen2 text decoder: GQA with q/k/v bias, M-RoPE, RMSNorm, SwiGLU; scanned layers; a slot-addressed KV cache.

Attention is defined by *slots*: query slot q attends key slot s iff `valid[s] and s <= q`. Without a cache the
slots of a chunk are `0..T-1`; with a cache the chunk of row b occupies slots `write_index[b] + t`. Positions
(M-RoPE, `[3, B, T]`) are explicit inputs and never derived from slots, so the rollout can append observation
turns whose positions continue from a per-row counter.

Cost of a cached call (issue 9: a decode token used to cost O(cache_len) copies). The stacked cache
`[L, B, S, Hkv, Dh]` is carried through the layer scan, not scanned over as xs/ys (a scan output is a fresh buffer,
so the whole cache was copied at every call); each layer writes its new keys/values into the carry in place and
attends over a bucketed prefix of the slots (`cached_attention`), because reading a layer's whole cache for the
attention dots meant a transposed copy of all S slots per layer and token.

Under `ModelConfig.cpu_layouts` the cache is head-major, `[L, B, Hkv, S, Dh]`: the layout the batch-major
attention dots read, so a decode token's keys and values come out of the cache as contiguous `[prefix, Dh]` runs
per (row, KV head) instead of through a transposing copy of every slot it reads (`cache_slot_axis`).
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from videor4_jax.model.config import ModelConfig
from videor4_jax.model.layers import (RMSNorm, SwiGLU, apply_rotary, attention_heads_major, constrain, dense,
                                      masked_attention)


@flax.struct.dataclass
class KVCache:
  k: jax.Array      # [L, B, S, Hkv, Dh]; [L, B, Hkv, S, Dh] under cpu_layouts (cache_slot_axis)
  v: jax.Array      # as k
  valid: jax.Array  # [B, S] bool: the slot holds a real token


def cache_slot_axis(config: ModelConfig) -> int:
  """The slot axis of `KVCache.k` / `.v`: 2 (`[L, B, S, Hkv, Dh]`), or 3 under `cpu_layouts` (head-major)."""
  return _slot_axis(config.cpu_layouts)


def _slot_axis(head_major: bool) -> int:
  return 3 if head_major else 2


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  t = config.text
  dtype = jnp.dtype(dtype or config.dtype)
  shape = [t.num_hidden_layers, batch, t.num_key_value_heads, t.head_dim]
  shape.insert(cache_slot_axis(config), max_len)
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


def _write_layer(buf, layer, upd_bthd, write_index, rows, head_major: bool):
  """Writes one layer's new keys (or values) `[B, T, Hkv, Dh]` into the stacked cache at `write_index`.

  `write_index` is `[B]` (each row at its own slot): T slots per row are scattered, in place on a loop carry (a
  slot shared by all rows, one dynamic_update_slice, measured the same). `rows` (`[B]`, optional) are the cache
  rows the chunk's rows write to (default: the same rows). `head_major`: `buf` is `[L, B, Hkv, S, Dh]`.
  """
  upd_bthd = upd_bthd.astype(buf.dtype)
  b, t, hkv = upd_bthd.shape[:3]
  slot_bt = write_index[:, None] + jnp.arange(t)[None]
  rows_b = jnp.arange(b) if rows is None else rows
  if head_major:
    return buf.at[layer, rows_b[:, None, None], jnp.arange(hkv)[None, :, None], slot_bt[:, None, :]].set(
        upd_bthd.transpose(0, 2, 1, 3), mode="promise_in_bounds")
  return buf.at[layer, rows_b[:, None], slot_bt].set(upd_bthd, mode="promise_in_bounds")


KEY_BUCKETS = 5


def key_buckets(cache_len: int) -> tuple[int, ...]:
  """Static key-prefix lengths attention over a cache may read: S/16, S/8, S/4, S/2, S (multiples of 8).

  Fractions of S rather than fixed sizes, so that the number of branches (and the program size) does not grow
  with the cache length, which grows with the rollout's step count.
  """
  sizes = {min(cache_len, -(-(cache_len >> i) // 8) * 8) for i in range(KEY_BUCKETS)}
  return tuple(sorted(sizes))


def cached_attention(q_bqhd, cache_kv, layer, mask_bqk, write_index, rows=None, *, scale, dtype,
                     head_major: bool = False):
  """Attention of the chunk's queries over `layer`'s cached keys, reading only a prefix of the slots.

  A query at slot q sees no key slot beyond q, so keys past `max(write_index) + T` cannot contribute. The prefix
  is rounded up to a static bucket (`key_buckets`, chosen by `lax.switch`), so a token at slot ~60 of a 1280-slot
  cache reads 80 slots of each layer, not 1280: the decode step costs O(used length), not O(cache_len). The keys
  dropped are masked ones (probability exactly 0), so the result is the full-cache attention up to float
  summation order. `rows` (optional `[B]`): the cache rows the queries' rows read (a gathered subset).
  `head_major`: the cache is `[L, B, Hkv, S, Dh]` (`cpu_layouts`), read by the batch-major attention dots as is.
  """
  k_all, v_all = cache_kv
  slot_axis = _slot_axis(head_major)
  s = k_all.shape[slot_axis]
  sizes = key_buckets(s)
  end = jnp.max(write_index) + q_bqhd.shape[1]
  bucket = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes), end), len(sizes) - 1)

  def branch(size):
    def attend(q, k_all, v_all, mask):
      def read(buf):
        rows_buf = buf[layer] if rows is None else jnp.take(buf[layer], rows, axis=0)   # rows before the prefix:
        return jax.lax.dynamic_slice_in_dim(rows_buf, 0, size, axis=slot_axis - 1)   # one copy, of those rows only
      k, v = read(k_all), read(v_all)
      if head_major:
        k = constrain(k, ("batch", "kv_heads_act", "cache_length", None))
        return attention_heads_major(q, k.astype(dtype), v.astype(dtype), mask[:, :, :size], scale)
      k = constrain(k, ("batch", "cache_length", "kv_heads_act", None))
      return masked_attention(q, k.astype(dtype), v.astype(dtype), mask[:, :, :size], scale=scale)
    return attend

  return jax.lax.switch(bucket, [branch(n) for n in sizes], q_bqhd, k_all, v_all, mask_bqk)


class DecoderLayer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, carry, layer, consts):
    """carry = (x [B, T, D], cache): cache is None or the stacked `(k, v)`, each `[L, B, S, Hkv, Dh]`; `layer` is
    this layer's index into it (traced under the layer scan)."""
    x_btd, cache_kv = carry
    c, t = self.config, self.config.text
    dtype, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    cos, sin, mask_bqk, write_index, rows = consts
    b, n, _ = x_btd.shape
    token_rows = (lambda a: a.reshape(b * n, a.shape[-1])) if c.cpu_layouts else (lambda a: a)  # cpu_layouts
    h = token_rows(RMSNorm(t.rms_norm_eps, dtype=dtype, param_dtype=pdt, name="input_layernorm")(x_btd))
    kw = dict(dtype=dtype, param_dtype=pdt, init_std=c.initializer_range)
    q = dense(t.num_attention_heads * t.head_dim, ("embed", "q_heads"), use_bias=True, name="q_proj", **kw)(h)
    k = dense(t.num_key_value_heads * t.head_dim, ("embed", "kv_heads"), use_bias=True, name="k_proj", **kw)(h)
    v = dense(t.num_key_value_heads * t.head_dim, ("embed", "kv_heads"), use_bias=True, name="v_proj", **kw)(h)
    q = constrain(q.reshape(b, n, t.num_attention_heads, t.head_dim), ("batch", "length", "q_heads", None))
    k = constrain(k.reshape(b, n, t.num_key_value_heads, t.head_dim), ("batch", "length", "kv_heads", None))
    v = constrain(v.reshape(b, n, t.num_key_value_heads, t.head_dim), ("batch", "length", "kv_heads", None))
    q = apply_rotary(q, cos[:, :, None], sin[:, :, None])
    k = apply_rotary(k, cos[:, :, None], sin[:, :, None])
    if cache_kv is not None:
      cache_kv = tuple(_write_layer(buf, layer, u, write_index, rows, c.cpu_layouts)
                       for buf, u in zip(cache_kv, (k, v)))
      attn = cached_attention(q, cache_kv, layer, mask_bqk, write_index, rows, scale=t.head_dim ** -0.5,
                              dtype=dtype, head_major=c.cpu_layouts)
    else:
      k = constrain(k, ("batch", "cache_length", "kv_heads_act", None))
      attn = masked_attention(q, k, v, mask_bqk, scale=t.head_dim ** -0.5, q_chunk=c.attention_q_chunk,
                              batch_major=c.cpu_layouts)
    attn = constrain(attn.reshape(b, n, t.num_attention_heads * t.head_dim), ("batch", "length", "q_heads"))
    o = dense(t.hidden_size, ("q_heads", "embed"), use_bias=False, name="o_proj", **kw)(token_rows(attn))
    x_btd = x_btd + o.reshape(x_btd.shape)
    h = RMSNorm(t.rms_norm_eps, dtype=dtype, param_dtype=pdt, name="post_attention_layernorm")(x_btd)
    mlp = SwiGLU(t.hidden_size, t.intermediate_size, use_bias=False, name="mlp", **kw)(token_rows(h))
    x_btd = x_btd + mlp.reshape(x_btd.shape)
    x_btd = constrain(x_btd, ("batch", "length", "embed"))
    return (x_btd, cache_kv), None


def _remat(cls, policy: str):
  if policy == "none":
    return cls
  pol = None if policy == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return nn.remat(cls, policy=pol, prevent_cse=False)


class TextDecoder(nn.Module):
  """Layers + final norm. `__call__(x, positions, mask, cache_kv, write_index, rows) -> (hidden, cache_kv)`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_btd, positions_3bt, mask_bqk, cache_kv=None, write_index=None, rows=None):
    c = self.config
    cos, sin = mrope_cos_sin(c, positions_3bt)
    consts = (cos, sin, mask_bqk, write_index, rows)
    layer_cls = _remat(DecoderLayer, c.remat)
    n_layers = c.text.num_hidden_layers
    if c.scan_layers:
      stack = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(0, nn.broadcast), length=n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      (x_btd, cache_kv), _ = stack(c, name="layers")((x_btd, cache_kv), jnp.arange(n_layers), consts)
    else:
      for i in range(n_layers):
        (x_btd, cache_kv), _ = layer_cls(c, name=f"layers_{i}")((x_btd, cache_kv), i, consts)
    x_btd = RMSNorm(c.text.rms_norm_eps, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                    name="norm")(x_btd)
    return x_btd, cache_kv
