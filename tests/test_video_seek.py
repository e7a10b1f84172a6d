"""The seeking decoder (processing/video_seek.py) gives bitwise the frames of the decode-everything reference
(`decode_frames_exact`, `probe_timestamps_exact`) at the same indices: H.264 with B-frames (closed and open GOP),
variable frame rate, containers without a duration, raw Annex-B H.264 (no pts: decode fallback), broken tails."""
import fractions
import io

import av
import numpy as np
import pytest

from videor4_jax.processing import video as V
from videor4_jax.processing import video_seek


def encode(n, fmt="mp4", *, w=64, h=48, fps=10, pts_ms=None, opts=None, fmt_opts=None, path=None):
  """n moving-pattern frames as libx264 yuv420p with B-frames forced (b_strategy 0: x264 would otherwise pick
  few on such clips); `pts_ms` gives each frame's time (variable frame rate)."""
  target = path or io.BytesIO()
  with av.open(target, "w", format=fmt, options=fmt_opts or {}) as c:
    s = c.add_stream("libx264", rate=None if pts_ms is not None else fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if pts_ms is not None:
      s.codec_context.time_base = fractions.Fraction(1, 1000)
    s.options = {"bf": "2", "b_strategy": "0", "g": "12", **(opts or {})}
    rng = np.random.default_rng(n)
    base = rng.integers(0, 255, (h // 4, w // 4, 3), np.uint8).repeat(4, 0).repeat(4, 1)
    for i in range(n):
      img = np.roll(base, 2 * i, axis=1) ^ rng.integers(0, 8, (h, w, 3), np.uint8)
      f = av.VideoFrame.from_ndarray(img, format="rgb24")
      if pts_ms is not None:
        f.pts, f.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
      for p in s.encode(f):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return open(path, "rb").read() if path else target.getvalue()


def reference(data):
  times = V.probe_timestamps_exact(data)
  return times, V.decode_frames_exact(data, np.arange(len(times)))


def assert_same_frames(data, monkeypatch=None, *, fast=True):
  times, full = reference(data)
  if fast:
    def boom(*a, **k):
      raise AssertionError("fell back to the decode-everything path")
    monkeypatch.setattr(V, "probe_timestamps_exact", boom)
    monkeypatch.setattr(V, "decode_frames_exact", boom)
  np.testing.assert_array_equal(V.probe_timestamps(data), times)
  sets = [V.sample_indices(times, num_frames=k) for k in (2, 6, 16)]
  sets += [V.sample_indices(times, fps=2.0), np.arange(len(times))[::-1], np.array([len(times) - 1, 0, 3, 3])]
  for idx in sets:
    got = V.decode_frames(data, idx)
    assert got.dtype == np.uint8 and got.shape == full[idx].shape
    assert np.array_equal(got, full[idx]), f"frames differ at indices {idx.tolist()}"
  v = V.load_video(data, num_frames=8, source_hw=(40, 40), global_hw=(28, 28))
  assert v["indices"].tolist() == V.sample_indices(times, num_frames=8).tolist()
  if fast:
    monkeypatch.undo()
  w = V.load_video(data, num_frames=8, source_hw=(40, 40), global_hw=(28, 28), exact=True)
  for k in ("indices", "timestamps", "source_frames", "global_frames"):
    np.testing.assert_array_equal(v[k], w[k])
  return times


@pytest.mark.parametrize("opts", [{"bf": "2"}, {"bf": "3", "x264-params": "b-pyramid=normal"},
                                  {"bf": "2", "x264-params": "open-gop=1"}],
                         ids=["bf2", "bf3_pyramid", "bf2_open_gop"])
def test_h264_with_b_frames_matches_full_decode(monkeypatch, opts):
  data = encode(90, opts=opts)
  with av.open(io.BytesIO(data)) as c:   # the clip really has B-frames: pts out of decode order
    packets = [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]
  assert [p for p, _ in packets] != sorted(p for p, _ in packets)
  # open GOP: a keyframe followed (decode order) by frames shown before it, which reference the previous GOP
  leading = any(k and packets[i + 1][0] < p for i, (p, k) in enumerate(packets[:-1]))
  assert leading == ("open-gop" in opts.get("x264-params", ""))
  assert_same_frames(data, monkeypatch)


@pytest.mark.parametrize("fmt", ["mp4", "matroska", "mpegts"])
def test_variable_frame_rate_matches_full_decode(monkeypatch, fmt):
  gaps = np.random.default_rng(0).integers(10, 400, 80)      # 10-400 ms between frames
  data = encode(80, fmt, pts_ms=np.cumsum(gaps))
  times = assert_same_frames(data, monkeypatch)
  assert np.ptp(np.diff(times)) > 0.2                        # really variable


def test_container_without_duration_uses_packet_timestamps(monkeypatch, tmp_path):
  data = encode(60, "matroska", fmt_opts={"live": "1"}, path=str(tmp_path / "live.mkv"))
  with av.open(io.BytesIO(data)) as c:
    assert c.duration is None and c.streams.video[0].duration is None and c.streams.video[0].frames == 0
  assert_same_frames(data, monkeypatch)


def test_raw_annexb_h264_without_pts_falls_back_to_decoding(monkeypatch):
  data = encode(40, "h264")
  with av.open(io.BytesIO(data)) as c:
    assert c.duration is None
    with pytest.raises(video_seek.NeedsFullDecode, match="no pts"):
      video_seek.read_packet_table(c, c.streams.video[0])
  times = assert_same_frames(data, fast=False)
  assert len(times) == 40


@pytest.mark.parametrize("fmt", ["mp4_faststart", "matroska", "mpegts"])
@pytest.mark.parametrize("cut", ["last_keyframe", "80%"])
def test_broken_tail_gives_the_decodable_frames_or_the_same_error(tmp_path, fmt, cut):
  """A cut file: the same frames as the reference (or its error). Cutting inside the last keyframe's packet leaves
  a damaged last frame (mpegts: decoded with concealment, flagged corrupt; mp4: a decode error)."""
  if fmt == "mp4_faststart":   # index first, so the cut removes media data, not the index
    data = encode(60, "mp4", fmt_opts={"movflags": "faststart"}, path=str(tmp_path / "fs.mp4"))
  else:
    data = encode(60, fmt)
  with av.open(io.BytesIO(data)) as c:
    pos, size = max((p.pos, p.size) for p in c.demux(video=0) if p.size and p.is_keyframe)
  path = tmp_path / f"cut_{fmt}.bin"
  path.write_bytes(data[:pos + size // 2] if cut == "last_keyframe" else data[:int(len(data) * 0.8)])
  if fmt == "mpegts" and cut == "last_keyframe":
    with av.open(str(path)) as c:
      assert [f.is_corrupt for f in c.decode(video=0)][-1]
  outcome = []
  for exact in (False, True):
    try:
      outcome.append(V.load_video(str(path), num_frames=8, source_hw=(40, 40), global_hw=(28, 28), exact=exact))
    except V.VideoDecodeError as e:
      assert str(path) in str(e)
      outcome.append(str(e))
  fast, ref = outcome
  assert type(fast) is type(ref)
  if isinstance(ref, dict):
    assert len(set(ref["indices"].tolist())) > 1
    for k in ("indices", "timestamps", "source_frames"):
      np.testing.assert_array_equal(fast[k], ref[k])
  else:
    assert fast == ref


def test_truncated_mp4_without_index_is_a_clear_error(tmp_path):
  data = encode(30)
  path = tmp_path / "cut.mp4"
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(V.VideoDecodeError, match="cut.mp4: cannot decode video"):
    V.load_video(str(path), num_frames=4, source_hw=(40, 40), global_hw=(28, 28))


def test_seeking_decodes_a_bounded_number_of_packets():
  """The work is set by the GOP length and the number of frames sampled, not by the video's length."""
  counts = {}
  for n in (60, 600):
    data = encode(n, opts={"g": "10", "bf": "2"})
    with av.open(io.BytesIO(data)) as c:
      table = video_seek.read_packet_table(c, c.streams.video[0])
    idx = V.sample_indices(table.times, num_frames=4)

    def reopen(data=data):
      c = av.open(io.BytesIO(data))
      return c, c.streams.video[0]
    dec = video_seek.SeekDecoder(reopen, table)
    got = dec.frames(table.frame_pts[idx])
    assert len(got) == 4
    counts[n] = dec.packets_decoded
  assert counts[600] <= 4 * (10 + 4), counts       # at most a GOP (+ reorder delay) per sampled frame
  assert counts[60] <= 60 + 4, counts
