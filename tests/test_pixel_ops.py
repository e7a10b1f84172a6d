"""Crop and clip: the right pixels, the same on the host and under jit, error codes instead of NaN or exceptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.processing.grammar import ActionError
from videor4_jax.rumination.pixel_ops import clip, clip_host, crop, crop_host, to_patches


def pattern(f=4, h=64, w=128):
  """Frame i: black, with a white square at rows 16..31, cols 64..95 and the frame index in the red channel."""
  x = np.zeros((f, h, w, 3), np.uint8)
  x[:, 16:32, 64:96] = 255
  x[..., 0] = np.arange(f, dtype=np.uint8)[:, None, None] * 40
  return x


def test_crop_lands_on_the_box():
  src = pattern()
  # The white square is exactly the normalized box (0.5, 0.25)-(0.75, 0.5).
  px, err = crop(src, 3, [0.5, 0.25, 0.75, 0.5], out_hw=(16, 16))
  assert int(err) == 0
  assert np.asarray(px)[2:-2, 2:-2, 1].min() > 250            # green channel: all white inside
  assert np.abs(np.asarray(px)[..., 0] - 80).max() < 1e-3     # red channel = frame 3's index code
  px2, _ = crop(src, 3, [0.0, 0.0, 0.25, 0.25], out_hw=(16, 16))  # a black corner of frame 3
  assert np.asarray(px2)[..., 1].max() < 1e-3 and np.allclose(np.asarray(px2)[..., 0], 80.0)


def test_host_and_rollout_graph_give_identical_pixels():
  """The host entry point (SFT data) and the ops inlined in a batched graph (the rollout) agree bit for bit."""
  src = pattern()
  boxes = jnp.array([[0.1, 0.2, 0.73, 0.9], [0.3, 0.1, 0.9, 0.6]])
  frames = jnp.array([2, 4])
  graph = jax.jit(jax.vmap(lambda s, f, b: crop(s, f, b, out_hw=(28, 56), margin=0.05)))(
      jnp.stack([src, src]), frames, boxes)
  for i in range(2):
    host = crop_host(src, frames[i], boxes[i], out_hw=(28, 56), margin=0.05)
    np.testing.assert_array_equal(np.asarray(host[0]), np.asarray(graph[0][i]))
  h = clip_host(src, jnp.array([4, 1, 2]), 3, out_hw=(28, 28))
  j = jax.jit(jax.vmap(lambda s, fr, n: clip(s, fr, n, out_hw=(28, 28))))(
      src[None], jnp.array([[4, 1, 2]]), jnp.array([3]))
  j = jax.tree.map(lambda x: x[0], j)
  for a, b in zip(h, j):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("frame,box,err", [
    (0, [0.1, 0.1, 0.5, 0.5], ActionError.FRAME_OUT_OF_RANGE),
    (5, [0.1, 0.1, 0.5, 0.5], ActionError.FRAME_OUT_OF_RANGE),
    (1, [0.5, 0.1, 0.1, 0.5], ActionError.BOX_INVALID),       # inverted
    (1, [0.3, 0.3, 0.3, 0.6], ActionError.BOX_INVALID),       # empty
    (1, [np.nan, 0.1, 0.5, 0.5], ActionError.BOX_INVALID),
    (1, [0.1, 0.1, 1.5, 0.5], ActionError.BOX_INVALID),
    (1, [0.1, 0.1, 0.12, 0.5], ActionError.BOX_TOO_SMALL),    # 2.6 px wide at W=128
])
def test_crop_errors_are_codes_not_nan(frame, box, err):
  px, e = jax.jit(lambda f, b: crop(pattern(), f, b, out_hw=(16, 16), min_px=8))(frame, jnp.array(box, jnp.float32))
  assert int(e) == err
  assert np.all(np.asarray(px) == 0)


def test_clip_selects_frames_pads_odd_counts_and_flags_errors():
  src = pattern()
  px, mask, groups, err = clip(src, jnp.array([4, 2, 3, 1]), 3, out_hw=(16, 32))
  assert int(err) == 0 and int(groups) == 2 and np.asarray(mask).tolist() == [True] * 4
  red = np.asarray(px)[:, 0, 0, 0]
  np.testing.assert_allclose(red, [120, 40, 80, 80], atol=1e-3)   # the odd third frame is repeated
  for frames, n, e in (([1, 9, 2, 3], 2, ActionError.FRAME_OUT_OF_RANGE), ([1, 2, 3, 4], 0, ActionError.NO_FRAMES),
                       ([1, 2, 3, 4], 5, ActionError.TOO_MANY_FRAMES)):
    px, mask, groups, err = clip(src, jnp.array(frames), n, out_hw=(16, 32))
    assert int(err) == e and int(groups) == 0 and not np.asarray(mask).any()
    assert np.all(np.isfinite(np.asarray(px)))


def test_to_patches_matches_hf_image_processor():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  img = np.random.default_rng(0).integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
  proc = Qwen2VLImageProcessorPil(min_pixels=56 * 84, max_pixels=56 * 84)
  ref = proc(images=[img], return_tensors="np")
  ours = to_patches(np.stack([img, img]).astype(np.float32), xp=np)
  np.testing.assert_allclose(ours, ref["pixel_values"], atol=1e-5)
  assert ref["image_grid_thw"].tolist() == [[1, 4, 6]]
