"""preprocess_image equals HF Qwen2VLImageProcessorPil exactly; video patches follow HF's video layout."""
import ast
import os

import numpy as np
import pytest
import torch
import transformers.models.qwen2_vl as hf_qwen2_vl
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from videor4_jax.processing import preprocess_image, preprocess_video
from videor4_jax.rumination.pixel_ops import to_patches


@pytest.mark.parametrize("seed", range(12))
def test_preprocess_image_equals_hf(seed):
  rng = np.random.default_rng(seed)
  h, w = int(rng.integers(20, 400)), int(rng.integers(20, 400))
  lo = int(rng.choice([56 * 56, 4 * 28 * 28, 64 * 28 * 28]))
  hi = int(rng.choice([lo * 2, 256 * 28 * 28, 1024 * 28 * 28]))
  img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  ref = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)(images=[img], return_tensors="np")
  pv, grid = preprocess_image(img, min_pixels=lo, max_pixels=hi)
  assert grid.tolist() == ref["image_grid_thw"].tolist()
  np.testing.assert_array_equal(pv, ref["pixel_values"])


def _hf_video_patchify():
  """`Qwen2VLVideoProcessor.patchify` of the installed transformers, compiled from its own source file: the module
  imports torchvision at the top (no CPU wheel here, ENV_NOTES), but the method itself needs only torch."""
  path = os.path.join(os.path.dirname(hf_qwen2_vl.__file__), "video_processing_qwen2_vl.py")
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
  fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
  ns = {"torch": torch}
  exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), ns)   # noqa: S102 (HF's own code)
  return ns["patchify"]


def test_video_patches_follow_hf_layout():
  """preprocess_video's patches equal HF's video patchify on distinct frames (so a swapped temporal order inside a
  pair, or swapped groups, would fail), and equal the in-graph to_patches of each frame pair."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, size=(5, 56, 84, 3), dtype=np.uint8)      # odd: the last frame is repeated
  pv, grid = preprocess_video(frames, size=(56, 84))
  assert grid.tolist() == [[3, 4, 6]]
  # HF: normalized frames [B, F, C, H, W] -> patchify (it pads the odd frame count by repeating the last frame).
  # PIL resize to the same size is a copy, so the normalized frames are _normalize(frames) exactly.
  from videor4_jax.processing.image import _normalize
  x = torch.from_numpy(_normalize(frames)).permute(0, 3, 1, 2)[None]
  ref, gt, gh, gw = _hf_video_patchify()(None, x, patch_size=14, merge_size=2, temporal_patch_size=2)
  assert [gt, gh, gw] == [3, 4, 6]
  np.testing.assert_array_equal(pv, ref[0].numpy())
  swapped = preprocess_video(frames[[1, 0, 2, 3, 4]], size=(56, 84))[0]
  assert not np.array_equal(swapped, pv)                                   # the order inside a pair matters
  per = 4 * 6
  for g, (a, b) in enumerate([(0, 1), (2, 3), (4, 4)]):
    ref = np.asarray(to_patches(np.stack([frames[a], frames[b]]).astype(np.float32), xp=np))
    np.testing.assert_allclose(pv[g * per:(g + 1) * per], ref, atol=1e-6)
  # A still frame pair is exactly HF's image patches (HF duplicates an image temporally).
  img = frames[0]
  ref = Qwen2VLImageProcessorPil(min_pixels=56 * 84, max_pixels=56 * 84)(images=[img], return_tensors="np")
  pv2, _ = preprocess_video(np.stack([img, img]), size=(56, 84))
  np.testing.assert_array_equal(pv2, ref["pixel_values"])


def test_grayscale_and_alpha_become_rgb():
  g = np.full((56, 56), 128, np.uint8)
  a = np.dstack([np.full((56, 56, 3), 128, np.uint8), np.zeros((56, 56), np.uint8)])
  np.testing.assert_array_equal(preprocess_image(g)[0], preprocess_image(a)[0])
