"""Video decoding: sampling, views, odd sizes, grayscale, VFR, and clear errors (never hangs) on bad files."""
import json
import subprocess
import sys

import av
import numpy as np
import pytest

from videor4_jax.data.video_bytes import encode_mp4
from videor4_jax.processing.video import VideoDecodeError, load_video, probe_timestamps, sample_indices


def _frames(n, h=64, w=96):
  x = np.zeros((n, h, w, 3), np.uint8)
  for i in range(n):
    x[i, :, :, 0] = i * 10          # frame index readable from the red channel
  return x


def test_load_video_samples_uniformly_and_makes_both_views(tmp_path):
  data = encode_mp4(_frames(20), fps=10)
  path = tmp_path / "v.mp4"
  path.write_bytes(data)
  for src in (str(path), data):
    v = load_video(src, num_frames=4, source_hw=(112, 112), global_hw=(28, 56))
    assert v["source_frames"].shape == (4, 112, 112, 3) and v["global_frames"].shape == (4, 28, 56, 3)
    assert v["indices"].tolist() == [0, 6, 13, 19]
    np.testing.assert_array_equal(v["source_frames"][:, 0, 0, 0], [0, 60, 130, 190])


def test_short_video_repeats_frames_and_odd_sizes_work():
  data = encode_mp4(_frames(3, 50, 70), fps=2)
  v = load_video(data, num_frames=8, source_hw=(56, 56), global_hw=(28, 28))
  assert v["source_frames"].shape == (8, 56, 56, 3)
  assert sorted(set(v["indices"].tolist())) == [0, 1, 2]


def test_fps_sampling_and_variable_frame_rate():
  times = np.array([0.0, 0.1, 0.2, 2.0, 2.1, 4.0, 6.0, 8.0])    # irregular gaps
  idx = sample_indices(times, fps=0.5, min_frames=2, max_frames=16)
  assert len(idx) == 4 and idx[0] == 0 and idx[-1] == 7
  assert idx.tolist() == [0, 4, 6, 7]                             # nearest in time to 0, 2.67, 5.33, 8


def test_grayscale_video_becomes_rgb_with_equal_channels_and_its_values(tmp_path):
  """A gray H.264 video (flat frames of luma 40, 90, 140, 190): both views are RGB with three equal channels, and the
  sampled frames 0 and 3 keep their values, read as the stream's (default, limited) range does: Y' 16..235 ->
  0..255, i.e. (y - 16) * 255 / 219 = 27.9 and 202.6 (measured 27 and 202: within one level)."""
  buf = tmp_path / "g.mp4"
  with av.open(str(buf), "w") as c:
    s = c.add_stream("libx264", rate=5)
    s.width, s.height, s.pix_fmt = 32, 32, "gray"
    for i in range(4):
      for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32), 40 + 50 * i, np.uint8), format="gray")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  v = load_video(str(buf), num_frames=2, source_hw=(28, 28), global_hw=(28, 28))
  assert v["indices"].tolist() == [0, 3]
  want = (np.array([40, 190]) - 16) * 255 / 219
  for view in ("source_frames", "global_frames"):
    x = v[view].astype(np.float64)
    assert x.shape == (2, 28, 28, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    np.testing.assert_allclose(x[..., 0], np.broadcast_to(want[:, None, None], (2, 28, 28)), atol=1.0,
                               err_msg=view)


@pytest.mark.parametrize("bad", ["garbage", "truncated", "empty"])
def test_corrupt_or_truncated_video_raises_an_error_naming_the_file(tmp_path, bad):
  data = encode_mp4(_frames(10))
  content = {"garbage": b"\x00not a video" * 50, "truncated": data[: len(data) // 3], "empty": b""}[bad]
  path = tmp_path / f"{bad}.mp4"
  path.write_bytes(content)
  with pytest.raises(VideoDecodeError, match=f"{bad}.mp4"):
    load_video(str(path), num_frames=4, source_hw=(56, 56), global_hw=(28, 28))


_LOAD_ALL = """
import json, sys
from videor4_jax.processing.video import VideoDecodeError, load_video
out = {}
for path in sys.argv[1:]:
  try:
    load_video(path, num_frames=4, source_hw=(56, 56), global_hw=(28, 28))
    out[path] = "decoded"
  except VideoDecodeError as e:
    out[path] = str(e)
print(json.dumps(out))
"""


def test_bad_videos_fail_fast_and_never_hang(tmp_path):
  """The bad files again, in a child process with a deadline: a decoder that hung would fail this test (killed at
  the timeout) instead of stalling the suite."""
  data = encode_mp4(_frames(10))
  contents = {"garbage": b"\x00not a video" * 50, "truncated": data[: len(data) // 3], "empty": b"",
              "header_only": data[:64], "zeros": bytes(4096)}
  paths = []
  for name, content in contents.items():
    (tmp_path / f"{name}.mp4").write_bytes(content)
    paths.append(str(tmp_path / f"{name}.mp4"))
  proc = subprocess.run([sys.executable, "-c", _LOAD_ALL, *paths], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  for path in paths:
    assert got[path].startswith(path + ": cannot decode video"), got[path]
