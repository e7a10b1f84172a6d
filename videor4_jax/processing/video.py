"""Video decoding (PyAV) and frame sampling, the one decoder used by data pipelines and eval.

`load_video` returns the two views of DESIGN section 3: the *global* view (F frames resized to the prompt
resolution, patchified for the prompt) and the *source* view (F frames, uint8, a fixed shape per config, plain
stretch resize: crop boxes are normalized, so stretching is harmless) that rumination crops and clips from.
"""
from __future__ import annotations

import io
import math
import os

import av
import numpy as np

from videor4_jax.processing.image import resize_bicubic

FRAME_FACTOR = 2
MAX_DECODED_FRAMES = 200_000   # a bound on a corrupt container's frame loop: decoding always terminates


class VideoDecodeError(ValueError):
  def __init__(self, source: str, reason: str):
    super().__init__(f"{source}: cannot decode video ({reason})")
    self.source, self.reason = source, reason


def _name(source, name):
  if name:
    return name
  return source if isinstance(source, (str, os.PathLike)) else "<bytes>"


def _open(source):
  return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source))


def probe_timestamps(source, *, name: str | None = None) -> np.ndarray:
  """Presentation time (seconds) of every decodable frame, in decode order."""
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


def decode_frames(source, indices, *, name: str | None = None) -> np.ndarray:
  """RGB uint8 frames `[len(indices), H, W, 3]` (grayscale / alpha / YUV converted) at the given indices."""
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


def load_video(source, *, num_frames: int, source_hw: tuple[int, int], global_hw,
               name: str | None = None) -> dict:
  """Decodes, samples `num_frames` frames uniformly in time, and makes the global and source views.

  global_hw: the global view's frame size, or a function of the decoded (height, width) giving it (the
  processor's rule, processing/processor.py).
  """
  times = probe_timestamps(source, name=name)
  idx = sample_indices(times, num_frames=num_frames)
  frames = decode_frames(source, idx, name=name)
  if callable(global_hw):
    global_hw = global_hw(*frames.shape[1:3])
  return dict(global_frames=np.stack([resize_bicubic(f, tuple(global_hw)) for f in frames]),
              source_frames=np.stack([resize_bicubic(f, source_hw) for f in frames]),
              timestamps=times[idx], indices=idx)
