"""Qwen2.5-VL vision tower: patch embedding, 2-D rotary, window / full attention blocks, 2x2 patch merger.

Grids may be traced. HF permutes patches into window order and back; here every patch's (item, frame, row,
column) is computed arithmetically from `grid_thw` and attention is restricted by masks instead: full-attention
blocks attend within one frame group of one item (HF's `cu_seqlens`), window blocks within one window of it
(`cu_window_seqlens`). The 2x2 merge groups 4 consecutive patches in the HF layout, so no permutation is needed.
Patches beyond `sum(t*h*w)` are padding: they form a group of their own and never touch valid patches.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from videor4_jax.model.config import ModelConfig
from videor4_jax.model.layers import RMSNorm, SwiGLU, apply_rotary, dense, masked_attention
from videor4_jax.model.text import _remat


def patch_coordinates(grid_thw, num_patches: int, merge: int):
  """Per patch of the HF layout: (item, frame, hpos, wpos, valid), each `[N]` int32 (valid bool).

  Within an item, patches are ordered (t, h/merge, w/merge, merge, merge): block-major over merge blocks.
  """
  grid_thw = jnp.asarray(grid_thw, jnp.int32).reshape(-1, 3)
  t, h, w = grid_thw[:, 0], grid_thw[:, 1], grid_thw[:, 2]
  counts = t * h * w
  ends = jnp.cumsum(counts)
  p = jnp.arange(num_patches, dtype=jnp.int32)
  item = jnp.searchsorted(ends, p, side="right").astype(jnp.int32)
  valid = p < ends[-1]
  it = jnp.minimum(item, grid_thw.shape[0] - 1)
  local = p - (ends - counts)[it]
  hw = (h * w)[it]
  frame = local // jnp.maximum(hw, 1)
  r = local % jnp.maximum(hw, 1)
  blocks_w = w[it] // merge
  block, within = r // (merge * merge), r % (merge * merge)
  hpos = (block // jnp.maximum(blocks_w, 1)) * merge + within // merge
  wpos = (block % jnp.maximum(blocks_w, 1)) * merge + within % merge
  return item, frame, hpos, wpos, valid


def vision_masks(config: ModelConfig, grid_thw, num_patches: int):
  """(full_mask, window_mask) `[N, N]` bool and rotary (cos, sin) `[N, Dh]`."""
  v = config.vision
  item, frame, hpos, wpos, valid = patch_coordinates(grid_thw, num_patches, v.spatial_merge_size)
  item = jnp.where(valid, item, -1)
  same_frame = (item[:, None] == item[None, :]) & (frame[:, None] == frame[None, :])
  win = v.window_size // v.spatial_merge_size // v.patch_size
  wid_h = (hpos // v.spatial_merge_size) // win
  wid_w = (wpos // v.spatial_merge_size) // win
  same_window = same_frame & (wid_h[:, None] == wid_h[None, :]) & (wid_w[:, None] == wid_w[None, :])
  quarter = v.head_dim // 2
  inv_freq = 1.0 / (v.rope_theta ** (jnp.arange(0, quarter, 2, dtype=jnp.float32) / quarter))
  freqs = jnp.concatenate([hpos[:, None] * inv_freq, wpos[:, None] * inv_freq], axis=-1).astype(jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return same_frame, same_window, jnp.cos(emb), jnp.sin(emb)


class VisionBlock(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x_nd, is_full, consts):
    v = self.config.vision
    dtype, pdt = jnp.dtype(self.config.dtype), jnp.dtype(self.config.param_dtype)
    std = self.config.initializer_range
    full_mask, window_mask, cos, sin = consts
    n = x_nd.shape[0]
    h = RMSNorm(v.rms_norm_eps, axis_name="vis_embed", dtype=dtype, param_dtype=pdt, name="norm1")(x_nd)
    qkv = dense(3 * v.hidden_size, ("vis_embed", "vis_heads"), use_bias=True, dtype=dtype, param_dtype=pdt,
                init_std=std, name="qkv")(h).reshape(n, 3, v.num_heads, v.head_dim)
    q = apply_rotary(qkv[:, 0], cos[:, None], sin[:, None])
    k = apply_rotary(qkv[:, 1], cos[:, None], sin[:, None])
    mask = jnp.where(is_full, full_mask, window_mask)
    attn = masked_attention(q[None], k[None], qkv[None, :, 2], mask[None], scale=v.head_dim ** -0.5,
                            q_chunk=self.config.attention_q_chunk, batch_major=self.config.cpu_layouts)[0]
    x_nd = x_nd + dense(v.hidden_size, ("vis_heads", "vis_embed"), use_bias=True, dtype=dtype, param_dtype=pdt,
                        init_std=std, name="proj")(attn.reshape(n, v.hidden_size))
    h = RMSNorm(v.rms_norm_eps, axis_name="vis_embed", dtype=dtype, param_dtype=pdt, name="norm2")(x_nd)
    x_nd = x_nd + SwiGLU(v.hidden_size, v.intermediate_size, use_bias=True, dtype=dtype, param_dtype=pdt,
                         init_std=std, name="mlp")(h)
    return x_nd, None


class PatchMerger(nn.Module):
  """RMSNorm, then each 2x2 group of consecutive patches `[4 * C]` -> Linear -> GELU -> Linear -> `[D_text]`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_nc):
    v = self.config.vision
    dtype, pdt = jnp.dtype(self.config.dtype), jnp.dtype(self.config.param_dtype)
    std = self.config.initializer_range
    x_nc = RMSNorm(v.rms_norm_eps, axis_name="vis_embed", dtype=dtype, param_dtype=pdt, name="ln_q")(x_nc)
    unit = v.spatial_merge_size ** 2
    x = x_nc.reshape(x_nc.shape[0] // unit, unit * v.hidden_size)
    x = dense(unit * v.hidden_size, ("vis_mlp", "vis_mlp2"), use_bias=True, dtype=dtype, param_dtype=pdt,
              init_std=std, name="fc1")(x)
    x = jax.nn.gelu(x, approximate=False)
    return dense(v.out_hidden_size, ("vis_mlp2", "embed"), use_bias=True, dtype=dtype, param_dtype=pdt, init_std=std,
                 name="fc2")(x)


class VisionTower(nn.Module):
  """pixel_values `[N, C*tp*p*p]` (HF layout), grid_thw `[n, 3]` -> merged embeddings `[N / merge^2, D_text]`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, pixel_values, grid_thw):
    c, v = self.config, self.config.vision
    dtype, pdt, std = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype), c.initializer_range
    n = pixel_values.shape[0]
    x = dense(v.hidden_size, ("vis_patch", "vis_embed"), use_bias=False, dtype=dtype, param_dtype=pdt, init_std=std,
              name="patch_embed")(pixel_values.astype(dtype))
    consts = vision_masks(c, grid_thw, n)
    is_full = jnp.isin(jnp.arange(v.depth), jnp.asarray(v.fullatt_block_indexes, jnp.int32))
    # config.remat covers the vision blocks too: without it a train step keeps every block's [N, N] masked
    # attention for the backward pass (the 7B GRPO step needed ~180 GB per chip; bench/tpu_aot.py).
    block_cls = _remat(VisionBlock, c.remat)
    if c.scan_layers:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(0, nn.broadcast), length=v.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(c, name="blocks")(x, is_full, consts)
    else:
      for i in range(v.depth):
        x, _ = block_cls(c, name=f"blocks_{i}")(x, is_full[i], consts)
    return PatchMerger(c, name="merger")(x)
