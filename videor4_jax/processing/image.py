"""Images and frames into HF Qwen2.5-VL vision inputs: smart_resize, PIL bicubic resize, rescale, CLIP normalize,
patchify. Equal to `transformers`' `Qwen2VLImageProcessorPil` (tests/test_processing_image.py)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

# CLIP normalization (HF Qwen2-VL processor). numpy, not jnp: a jnp constant made at import would start the XLA
# backend, and `jax.distributed.initialize` (multi-process runs) must come before that.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)

PATCH, TEMPORAL, MERGE = 14, 2, 2
FACTOR = PATCH * MERGE
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 56 * 56, 28 * 28 * 1280         # HF Qwen2VLImageProcessor defaults
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28     # HF Qwen2VLVideoProcessor (= qwen-vl-utils)


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = IMAGE_MIN_PIXELS,
                 max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
  """(h, w) divisible by `factor`, with h*w in [min_pixels, max_pixels], aspect ratio kept as well as possible."""
  if min(height, width) < 1:
    raise ValueError(f"image of size {height}x{width} is empty")
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def to_rgb_uint8(image) -> np.ndarray:
  """HxW (grey), HxWx1, HxWx3 or HxWx4 (alpha dropped) of any integer/float dtype -> HxWx3 uint8."""
  x = np.asarray(image)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {x.shape}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  x = x[..., :3]
  if x.dtype != np.uint8:
    x = np.clip(np.rint(x * 255.0) if np.issubdtype(x.dtype, np.floating) and x.max() <= 1.0 else x, 0, 255)
    x = x.astype(np.uint8)
  return x


def resize_bicubic(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """PIL bicubic resize of an HxWx3 uint8 image (what the HF PIL processor does)."""
  return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BICUBIC))


def _normalize(frames_thw3: np.ndarray) -> np.ndarray:
  # HF: rescale in float64 then cast to float32; normalize in float32 (bit-exact equality needs the same order).
  x = (frames_thw3.astype(np.float64) * (1 / 255)).astype(np.float32)
  return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def patch_layout(x_thw3, *, patch: int = PATCH, temporal: int = TEMPORAL, merge: int = MERGE):
  """Normalized frames `[T, H, W, 3]` -> HF Qwen2-VL patch rows `[T/t * H/p * W/p, 3 * t * p * p]`: (groups,
  h-blocks, w-blocks, merge, merge) x (channel, temporal, patch, patch). The one home of the layout: numpy or jax
  arrays (the processor here, the rollout's pixel ops, the smoke test)."""
  t, h, w, _ = x_thw3.shape
  gt, gh, gw = t // temporal, h // patch, w // patch
  x = x_thw3.reshape(gt, temporal, gh // merge, merge, patch, gw // merge, merge, patch, 3)
  return x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7).reshape(gt * gh * gw, 3 * temporal * patch * patch)


def _patchify(x_thw3: np.ndarray) -> np.ndarray:
  return patch_layout(x_thw3)


def preprocess_image(image, *, min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS):
  """HxWx3 uint8 -> (pixel_values [N, 1176] float32, grid_thw [1, 3] int64), HF layout and values."""
  img = to_rgb_uint8(image)
  h, w = smart_resize(img.shape[0], img.shape[1], min_pixels=min_pixels, max_pixels=max_pixels)
  x = _normalize(resize_bicubic(img, (h, w))[None])
  x = np.concatenate([x] * TEMPORAL)
  return _patchify(x), np.array([[1, h // PATCH, w // PATCH]], np.int64)


def preprocess_video(frames, *, min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                     size: tuple[int, int] | None = None):
  """F x H x W x 3 uint8 frames -> (pixel_values_videos [N, 1176], grid_thw [1, 3]).

  Frames are resized to `size` (must be multiples of 28) or smart_resize(min/max pixels); an odd frame count
  repeats the last frame, as HF does, so that frames pair into temporal patches.
  """
  frames = [to_rgb_uint8(f) for f in frames]
  if not frames:
    raise ValueError("preprocess_video: no frames")
  h, w = size or smart_resize(frames[0].shape[0], frames[0].shape[1], min_pixels=min_pixels, max_pixels=max_pixels)
  if h % FACTOR or w % FACTOR:
    raise ValueError(f"video frame size {h}x{w} must be a multiple of {FACTOR}")
  x = np.stack([resize_bicubic(f, (h, w)) for f in frames])
  if len(x) % TEMPORAL:
    x = np.concatenate([x, x[-1:]])
  return _patchify(_normalize(x)), np.array([[len(x) // TEMPORAL, h // PATCH, w // PATCH]], np.int64)
