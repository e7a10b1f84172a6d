"""Pixel operations of rumination, in JAX: crop (zoom into a region of one frame) and clip (select frames).

Jittable with traced arguments, and the same functions build SFT observations on the host (called eagerly), so an
action yields identical pixels in training data and in the rollout. Invalid arguments never raise and never give
NaN: the result is zeros plus an `ActionError` code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from videor4_jax.processing.grammar import ActionError

from videor4_jax.processing.image import MEAN, STD, patch_layout   # the one home of CLIP constants and the patch layout


def crop(src_fhw3, frame, box, *, out_hw, margin: float = 0.0, min_px: int = 8):
  """Zooms the normalized `box = (x1, y1, x2, y2)` of 1-based `frame` to `out_hw` (antialiased resample).

  The box is padded by `margin` (normalized) on each side and clamped to [0, 1]; a box narrower or shorter than
  `min_px` source pixels is BOX_TOO_SMALL. Returns `(pixels [h, w, 3] float32 in [0, 255], error int32)`.
  """
  f, hs, ws, _ = src_fhw3.shape
  oh, ow = out_hw
  box = jnp.asarray(box, jnp.float32)
  finite = jnp.all(jnp.isfinite(box))
  b = jnp.where(finite, box, 0.0)
  frame = jnp.asarray(frame, jnp.int32)
  err = jnp.where(~((frame >= 1) & (frame <= f)), ActionError.FRAME_OUT_OF_RANGE,
                  jnp.where(~finite | (b[0] >= b[2]) | (b[1] >= b[3]) | jnp.any(b < 0) | jnp.any(b > 1),
                            ActionError.BOX_INVALID, ActionError.OK))
  # The padded box snapped to whole source pixels (as a PIL crop would be): every later quantity is then an
  # integer or one IEEE division of integers, so no compiler's fusion or FMA choice can change the pixels (with
  # unsnapped fractional coordinates the rollout graph and the host crop differed by one level on a few pixels).
  x1, y1 = jnp.round(jnp.clip(b[0] - margin, 0.0, 1.0) * ws), jnp.round(jnp.clip(b[1] - margin, 0.0, 1.0) * hs)
  x2, y2 = jnp.round(jnp.clip(b[2] + margin, 0.0, 1.0) * ws), jnp.round(jnp.clip(b[3] + margin, 0.0, 1.0) * hs)
  wpx, hpx = x2 - x1, y2 - y1
  err = jnp.where((err == 0) & ((wpx < min_px) | (hpx < min_px)), ActionError.BOX_TOO_SMALL, err)
  img = jax.lax.dynamic_index_in_dim(src_fhw3, jnp.clip(frame - 1, 0, f - 1), keepdims=False).astype(jnp.float32)
  # Output pixel centre i maps to source y1*H + (i + 0.5) * hpx / oh - 0.5 (scale_and_translate's convention).
  safe_h, safe_w = jnp.maximum(hpx, 1.0), jnp.maximum(wpx, 1.0)
  scale = jnp.stack([oh / safe_h, ow / safe_w])
  translation = -jnp.stack([y1, x1]) * scale
  out = jax.image.scale_and_translate(img, (oh, ow, 3), (0, 1), scale, translation, method="linear",
                                      antialias=True)
  out = jnp.round(jnp.clip(out, 0.0, 255.0))   # an image again: integer levels, identical on host and in-graph
  return jnp.where(err == 0, out, 0.0), err.astype(jnp.int32)


def resize_frames(frames_fhw3, out_hw):
  """Antialiased resize of whole frames to `out_hw`, float32 in [0, 255]."""
  f = frames_fhw3.shape[0]
  out = jax.image.resize(frames_fhw3.astype(jnp.float32), (f, *out_hw, 3), method="linear", antialias=True)
  return jnp.round(jnp.clip(out, 0.0, 255.0))


def clip(src_fhw3, frames, num_frames, *, out_hw):
  """Selects up to K 1-based `frames` (the first `num_frames` of them), resized to `out_hw`.

  An odd count repeats the last selected frame so that frames pair into temporal patches (as HF does for videos).
  Returns `(pixels [K', h, w, 3] float32, mask [K'] bool, groups int32, error int32)` with K' = K rounded up to even;
  `mask` marks the frames that are real or the repeated last one, `groups` = ceil(num_frames / 2).
  """
  f = src_fhw3.shape[0]
  frames = jnp.asarray(frames, jnp.int32)
  k = frames.shape[0]
  k2 = k + (k % 2)
  n = jnp.asarray(num_frames, jnp.int32)
  idx = jnp.arange(k2)
  in_list = idx < n
  sel = jnp.concatenate([frames, frames[-1:]])[:k2] if k % 2 else frames
  last = jnp.take(frames, jnp.clip(n - 1, 0, k - 1))
  sel = jnp.where(in_list, sel, last)                           # pad with the last selected frame
  ok = jnp.all(jnp.where(idx < jnp.minimum(n, k), (sel >= 1) & (sel <= f), True))
  err = jnp.where(n <= 0, ActionError.NO_FRAMES, jnp.where(n > k, ActionError.TOO_MANY_FRAMES,
                                                          jnp.where(~ok, ActionError.FRAME_OUT_OF_RANGE, 0)))
  groups = (jnp.minimum(n, k) + 1) // 2
  chosen = jnp.take(src_fhw3, jnp.clip(sel - 1, 0, f - 1), axis=0)
  pixels = resize_frames(chosen, out_hw)
  mask = idx < 2 * groups
  pixels = jnp.where((err == 0) & mask[:, None, None, None], pixels, 0.0)
  return pixels, mask & (err == 0), jnp.where(err == 0, groups, 0).astype(jnp.int32), err.astype(jnp.int32)


def to_patches(frames_thw3, *, patch: int = 14, temporal: int = 2, merge: int = 2, xp=jnp):
  """Frames `[T, H, W, 3]` in [0, 255] -> HF Qwen2-VL patches `[T/t * H/p * W/p, 3 * t * p * p]`.

  Rescale to [0, 1], CLIP-normalize, then the HF layout: (groups, h-blocks, w-blocks, merge, merge) x (channel,
  temporal, patch, patch). T must be a multiple of `temporal` (repeat the last frame before calling).
  """
  mean, std = xp.asarray(MEAN), xp.asarray(STD)
  x = (frames_thw3.astype(xp.float32) / 255.0 - mean) / std
  return patch_layout(x, patch=patch, temporal=temporal, merge=merge)


# Host-side entry points (SFT data, eval traces): the same computation, compiled. Eager op-by-op execution rounds
# differently from a compiled graph (an interpolated 127.5 may land on either side), so the host always calls the
# compiled form; the rollout inlines the same functions into its graph.
crop_host = jax.jit(crop, static_argnames=("out_hw", "margin", "min_px"))
clip_host = jax.jit(clip, static_argnames=("out_hw",))
to_patches_host = jax.jit(to_patches, static_argnames=("patch", "temporal", "merge", "xp"))
