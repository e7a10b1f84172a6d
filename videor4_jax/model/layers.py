"""Building blocks shared by the vision tower and the text decoder: RMSNorm, dense layers with logical axes,
rotary helpers and masked softmax attention."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype


def constrain(x, logical_axes: tuple):
  """`x` constrained to the mesh layout its logical axes map to under the active rules
  (`parallel.sharding.use_mesh`); unchanged outside a mesh, without rules, or when a sharded dimension does not
  divide evenly (a decode batch narrowed to 3 rows on 8 devices). Activations need it: left to itself XLA laid
  the 7B GRPO step's MLP activations out whole on every chip, sharded like the FSDP weights instead of by row."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = nn.logical_to_mesh_axes(logical_axes, rules)
  for size, axes in zip(x.shape, spec):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    if any(a not in mesh.shape for a in names) or size % int(np.prod([mesh.shape[a] for a in names])):
      return x
  return jax.lax.with_sharding_constraint(x, spec)


def dense(features: int, axes: tuple[str, str], *, use_bias: bool, dtype, param_dtype, name: str,
          init_std: float = 0.02) -> nn.Dense:
  """nn.Dense whose kernel `[in, out]` (init N(0, init_std^2)) and bias `[out]` (zeros) carry logical axis names
  for the sharding rules."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class RMSNorm(nn.Module):
  """y = scale * x / sqrt(mean(x^2) + eps), statistics in float32 (as HF)."""
  eps: float = 1e-6
  axis_name: str = "embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * y.astype(self.dtype)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x))."""
  hidden: int
  intermediate: int
  use_bias: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, init_std=self.init_std)
    gate = dense(self.intermediate, ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = dense(self.intermediate, ("embed", "mlp"), name="up_proj", **kw)(x)
    h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp")) if x.ndim == 3 else jax.nn.silu(gate) * up
    return dense(self.hidden, ("mlp", "embed"), name="down_proj", **kw)(h)


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
  """x * cos + rotate_half(x) * sin, computed in float32 (cos/sin broadcast over the head axis)."""
  x32 = x.astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def masked_attention(q_bqhd, k_bkhd, v_bkhd, mask_bqk, *, scale: float, q_chunk: int = 0, batch_major: bool = False):
  """Softmax attention with grouped KV heads. q: [B, Q, H, D]; k, v: [B, K, Hkv, D]; mask: [B, Q, K] bool.

  Scores and softmax in float32; masked scores take the dtype minimum (not -inf) so that a fully masked query
  row (padding) yields a finite, unused output instead of NaN.

  q_chunk > 0 (and < Q): queries are processed `q_chunk` at a time under `lax.map`, each chunk rematerialized
  in the backward pass, so the `[B, H, Q, K]` float32 scores exist one `[B, H, q_chunk, K]` slice at a time. Every
  query row still sees all of its keys, so the softmax is the same row-wise computation (no online rescaling);
  only the peak memory changes. At the 7B recipe's GRPO shape (8 rows of 5120 slots per chip, 28 heads) the
  whole-sequence scores and their gradient did not fit a 95 GB v5p chip (train/aot.py report).

  batch_major (`ModelConfig.cpu_layouts`): both dots with their batch axes (row, KV head) leading and the
  contracted axis last, which XLA:CPU runs as canonical batched GEMMs: 1.3-2.2x faster forward + backward than the
  einsum form (docs/BENCHMARKS.md). The same math in another summation order, so off by default: the default
  config's numbers (and the learning runs measured with them) stay bit for bit.
  """
  attend = _attention_batch_major if batch_major else _attention
  q_len = q_bqhd.shape[1]
  if not q_chunk or q_chunk >= q_len:
    return attend(q_bqhd, k_bkhd, v_bkhd, mask_bqk, scale)
  pad = -q_len % q_chunk                  # padded query rows are fully masked: finite outputs, sliced off
  q = jnp.pad(q_bqhd, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(mask_bqk, ((0, 0), (0, pad), (0, 0)))
  b, n_chunks = q.shape[0], q.shape[1] // q_chunk
  q_nbchd = q.reshape(b, n_chunks, q_chunk, *q.shape[2:]).swapaxes(0, 1)
  mask_nbck = mask.reshape(b, n_chunks, q_chunk, mask.shape[-1]).swapaxes(0, 1)
  chunk = jax.checkpoint(lambda qm: attend(qm[0], k_bkhd, v_bkhd, qm[1], scale))
  out_nbchd = jax.lax.map(chunk, (q_nbchd, mask_nbck))
  return out_nbchd.swapaxes(0, 1).reshape(b, n_chunks * q_chunk, *q.shape[2:])[:, :q_len]


def _attention(q_bqhd, k_bkhd, v_bkhd, mask_bqk, scale):
  b, q_len, h, d = q_bqhd.shape
  hkv = k_bkhd.shape[2]
  q = q_bqhd.reshape(b, q_len, hkv, h // hkv, d)
  scores = jnp.einsum("bqgrd,bkgd->bgrqk", q, k_bkhd, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask_bqk[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bkhd.dtype)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v_bkhd)
  return out.reshape(b, q_len, h, d)


def _attention_batch_major(q_bqhd, k_bkhd, v_bkhd, mask_bqk, scale):
  """`_attention` in the batch-major form: K and V transposed to `[B, Hkv, K, D]` for `attention_heads_major`."""
  return attention_heads_major(q_bqhd, k_bkhd.transpose(0, 2, 1, 3), v_bkhd.transpose(0, 2, 1, 3), mask_bqk, scale)


def attention_heads_major(q_bqhd, k_bgkd, v_bgkd, mask_bqk, scale):
  """`_attention` with K and V given as `[B, Hkv, K, D]` (a head-major KV cache reads as such) and the query heads
  of one KV group stacked along M: both dots are batched GEMMs with the batch axes leading."""
  b, q_len, h, d = q_bqhd.shape
  hkv, k_len = k_bgkd.shape[1], k_bgkd.shape[2]
  r = h // hkv
  q_bgmd = q_bqhd.reshape(b, q_len, hkv, r, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, r * q_len, d)
  scores = jnp.einsum("bgmd,bgkd->bgmk", q_bgmd, k_bgkd, preferred_element_type=jnp.float32) * scale
  scores = scores.reshape(b, hkv, r, q_len, k_len)
  scores = jnp.where(mask_bqk[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bgkd.dtype).reshape(b, hkv, r * q_len, k_len)
  out_bgmd = jnp.einsum("bgmk,bgkd->bgmd", probs, v_bgkd)
  return out_bgmd.reshape(b, hkv, r, q_len, d).transpose(0, 3, 1, 2, 4).reshape(b, q_len, h, d)
