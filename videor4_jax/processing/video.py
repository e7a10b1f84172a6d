"""Video decoding (PyAV) and frame sampling, the one decoder used by data pipelines and eval.

`load_video` returns the two views of DESIGN section 3: the *global* view (F frames resized to the prompt
resolution, patchified for the prompt) and the *source* view (F frames, uint8, a fixed shape per config, plain
stretch resize: crop boxes are normalized, so stretching is harmless) that rumination crops and clips from.

Two decoders give the same frames for the same indices:
  * the default (processing/video_seek.py): timestamps from the demuxed packets (no decode), then a seek to the
    keyframe before each sampled frame and a decode forward only to it; its cost follows the number of sampled
    frames, not the video's length. Whatever it cannot vouch for falls back to the reference path.
  * the reference, `exact=True` (`probe_timestamps_exact` + `decode_frames_exact`): decodes every frame to read
    the timestamps, then again up to the last sampled frame. Kept as the ground truth of the tests and the
    baseline of bench/data_pipeline.py.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os

import av
import numpy as np

from videor4_jax.processing import video_seek
from videor4_jax.processing.image import resize_bicubic

FRAME_FACTOR = 2
MAX_DECODED_FRAMES = 200_000   # a bound on a corrupt container's frame loop: decoding always terminates


class VideoDecodeError(ValueError):
  def __init__(self, source: str, reason: str):
    super().__init__(f"{source}: cannot decode video ({reason})")
    self.source, self.reason = source, reason


@dataclasses.dataclass(frozen=True)
class VideoClip:
  """A video (path or encoded bytes) and a time window in seconds: `load_video` samples only inside it (the
  start/end seconds of a benchmark question, e.g. MVBench's)."""
  source: str | bytes
  start_s: float = 0.0
  end_s: float = math.inf


def _window(times: np.ndarray, clip: VideoClip, where: str) -> np.ndarray:
  """Indices of the frames inside the clip's window (seconds from the first frame: a stream may start at a
  nonzero time, e.g. MPEG-TS); VideoDecodeError when there are none."""
  rel = times - times[0]
  inside = np.flatnonzero((rel >= clip.start_s) & (rel <= clip.end_s))
  if not len(inside):
    raise VideoDecodeError(where, f"no frame inside the window {clip.start_s:g}-{clip.end_s:g} s (the video's "
                                  f"frames span {times[0]:g}-{times[-1]:g} s)")
  return inside


def _name(source, name):
  if name:
    return name
  return source if isinstance(source, (str, os.PathLike)) else "<bytes>"


def _open(source):
  return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source))


def probe_timestamps_exact(source, *, name: str | None = None) -> np.ndarray:
  """Reference: presentation time (seconds) of every decodable frame, in output order, by decoding them all."""
  where = _name(source, name)
  times = []
  try:
    with _open(source) as container:
      if not container.streams.video:
        raise VideoDecodeError(where, "no video stream")
      for frame in container.decode(video=0):
        times.append(float(frame.time) if frame.time is not None else len(times))
        if len(times) > MAX_DECODED_FRAMES:
          raise VideoDecodeError(where, f"more than {MAX_DECODED_FRAMES} frames")
  except VideoDecodeError:
    raise
  except (av.error.FFmpegError, OSError, ValueError, IndexError, EOFError) as e:
    if not times:
      raise VideoDecodeError(where, f"{type(e).__name__}: {e}") from None
  if not times:
    raise VideoDecodeError(where, "no decodable frames")
  return np.asarray(times, np.float64)


def sample_indices(timestamps: np.ndarray, *, num_frames: int | None = None, fps: float = 2.0,
                   min_frames: int = 4, max_frames: int = 16) -> np.ndarray:
  """Frame indices, uniform in time, as Qwen's sampler (qwen-vl-utils `smart_nframes`): a fixed even count, or
  `fps` frames per second clamped to [min_frames, max_frames]. Videos with fewer frames repeat frames."""
  n = len(timestamps)
  if num_frames is None:
    duration = max(float(timestamps[-1] - timestamps[0]), 1e-6) if n > 1 else 1.0
    want = min(max(duration * fps, min_frames), max_frames)
    num_frames = max(FRAME_FACTOR, int(math.floor(want / FRAME_FACTOR) * FRAME_FACTOR))
  if num_frames < 1:
    raise ValueError(f"num_frames={num_frames} must be >= 1")
  # Uniform in time (robust to variable frame rate): the frame nearest to each target time.
  targets = np.linspace(timestamps[0], timestamps[-1], num_frames)
  return np.abs(timestamps[None, :] - targets[:, None]).argmin(axis=1)


def decode_frames_exact(source, indices, *, name: str | None = None) -> np.ndarray:
  """Reference: RGB uint8 frames `[len(indices), H, W, 3]` (grayscale / alpha / YUV converted) at the given
  indices, decoding every frame up to the last one wanted."""
  where = _name(source, name)
  wanted = {int(i) for i in indices}
  got = {}
  try:
    with _open(source) as container:
      for i, frame in enumerate(container.decode(video=0)):
        if i in wanted:
          got[i] = frame.to_ndarray(format="rgb24")
        if i >= max(wanted) or i > MAX_DECODED_FRAMES:
          break
  except (av.error.FFmpegError, OSError, ValueError, IndexError, EOFError) as e:
    raise VideoDecodeError(where, f"{type(e).__name__}: {e}") from None
  missing = wanted - set(got)
  if missing:
    raise VideoDecodeError(where, f"frames {sorted(missing)[:5]} could not be decoded (truncated file?)")
  return np.stack([got[int(i)] for i in indices])


def _packet_index(source, where):
  """(PacketTable, reopen) of the video stream, or NeedsFullDecode; VideoDecodeError when it cannot be opened."""
  def reopen():
    container = _open(source)
    if not container.streams.video:
      container.close()
      raise VideoDecodeError(where, "no video stream")
    return container, container.streams.video[0]
  try:
    container, stream = reopen()
  except (av.error.FFmpegError, OSError, ValueError, IndexError, EOFError) as e:
    if isinstance(e, VideoDecodeError):
      raise
    raise VideoDecodeError(where, f"{type(e).__name__}: {e}") from None
  with container:
    return video_seek.read_packet_table(container, stream), reopen


def probe_timestamps(source, *, name: str | None = None) -> np.ndarray:
  """Presentation time (seconds) of every frame the decoder outputs, in order: from the packets when they carry
  pts, else (and for a file they cannot describe, e.g. a broken tail) by decoding, as `probe_timestamps_exact`."""
  try:
    return _packet_index(source, _name(source, name))[0].times
  except video_seek.NeedsFullDecode:
    return probe_timestamps_exact(source, name=name)


def _sampled_frames(source, where, sample):
  """(timestamps, indices, frames) with `sample(timestamps) -> indices`, by packets + seeking (video_seek)."""
  table, reopen = _packet_index(source, where)
  times = table.times
  idx = np.asarray(sample(times))
  want = table.frame_pts[idx]
  got = video_seek.SeekDecoder(reopen, table).frames(want)
  return times, idx, np.stack([got[int(p)] for p in want])


def decode_frames(source, indices, *, name: str | None = None) -> np.ndarray:
  """RGB uint8 frames `[len(indices), H, W, 3]` at the given indices (indices into `probe_timestamps`), the same
  frames as `decode_frames_exact`, seeking instead of decoding everything before them."""
  where = _name(source, name)
  try:
    return _sampled_frames(source, where, lambda times: indices)[2]
  except video_seek.NeedsFullDecode:
    return decode_frames_exact(source, indices, name=name)
  except IndexError:
    raise VideoDecodeError(where, f"frame indices {list(indices)[:5]}... out of range") from None


def sample_frames(source, *, num_frames: int | None, name: str | None = None, exact: bool = False, **rule):
  """(timestamps of all frames, sampled indices, RGB uint8 frames `[F, H, W, 3]`), sampled by `sample_indices`
  (`num_frames`, or None for the fps rule with `rule` = fps / min_frames / max_frames) among the frames inside
  the window when `source` is a VideoClip. `exact=True` uses the decode-everything reference path (same frames,
  cost grows with the video's length)."""
  clip = source if isinstance(source, VideoClip) else VideoClip(source)
  source, where = clip.source, _name(clip.source, name)

  def sample(times):
    inside = _window(times, clip, where)
    return inside[sample_indices(times[inside], num_frames=num_frames, **rule)]
  if not exact:
    try:
      return _sampled_frames(source, where, sample)
    except video_seek.NeedsFullDecode:
      pass               # e.g. raw H.264 without pts, or a broken tail: decode as the reference does
  times = probe_timestamps_exact(source, name=name)
  idx = sample(times)
  return times, idx, decode_frames_exact(source, idx, name=name)


def load_video(source, *, num_frames: int, source_hw: tuple[int, int], global_hw, name: str | None = None,
               exact: bool = False) -> dict:
  """Decodes, samples `num_frames` frames uniformly in time (inside the window of a VideoClip `source`), and
  makes the global and source views.

  global_hw: the global view's frame size, or a function of the decoded (height, width) giving it (the
  processor's rule, processing/processor.py).
  """
  times, idx, frames = sample_frames(source, num_frames=num_frames, name=name, exact=exact)
  if callable(global_hw):
    global_hw = global_hw(*frames.shape[1:3])
  return dict(global_frames=np.stack([resize_bicubic(f, tuple(global_hw)) for f in frames]),
              source_frames=np.stack([resize_bicubic(f, source_hw) for f in frames]),
              timestamps=times[idx], indices=idx)
