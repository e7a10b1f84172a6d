"""Videos as encoded bytes: lossless mp4 encoding for stored synthetic videos, and a cheap integrity probe.

Storage choice (builders store `video` as `tfds.features.Tensor(shape=(), dtype=np.object_)` bytes):
  * synthetic videos are encoded with **libx264rgb at crf 0** (H.264 "High 4:4:4 Predictive", RGB planes, no
    chroma subsampling, no YUV rounding): decoding gives back the generated uint8 frames bit-exactly, so 1-pixel
    strokes of the small text survive. Plain libx264 + yuv444p crf 0 is off by up to 2/255 (RGB->YUV rounding)
    and yuv420p would halve chroma resolution, which smears coloured 1-pixel text.
  * real videos (M4-ViteVQA, manual trajectories) are stored as the original file bytes, untouched.
  * page sequences are stored as the original PNG/JPEG bytes per page.
Decoding for training lives in processing/video.py (the one decoder); `probe_mp4` here only checks at build
time that a file is a decodable video, so that a corrupt file is skipped and reported instead of crashing a
training job later.
"""
from __future__ import annotations

import io

import av
import numpy as np


def encode_mp4(frames_fhw3: np.ndarray, fps: int = 2) -> bytes:
  """uint8 [F, H, W, 3] -> mp4 bytes, lossless (libx264rgb, crf 0)."""
  frames_fhw3 = np.asarray(frames_fhw3)
  if frames_fhw3.ndim != 4 or frames_fhw3.shape[-1] != 3 or frames_fhw3.dtype != np.uint8:
    raise ValueError(f"encode_mp4: expected uint8 [F, H, W, 3], got {frames_fhw3.dtype} {frames_fhw3.shape}")
  _, h, w, _ = frames_fhw3.shape
  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4") as container:
    stream = container.add_stream("libx264rgb", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
    stream.options = {"crf": "0", "preset": "veryfast"}
    for frame_hw3 in frames_fhw3:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame_hw3, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def probe_mp4(data: bytes) -> tuple[int, int, int]:
  """(num_frames, height, width) of an encoded video, decoding every frame; raises ValueError if unreadable."""
  try:
    with av.open(io.BytesIO(data)) as container:
      if not container.streams.video:
        raise ValueError("no video stream")
      n, hw = 0, None
      for frame in container.decode(video=0):
        n, hw = n + 1, (frame.height, frame.width)
  except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
    raise ValueError(f"unreadable video ({type(e).__name__}: {e})") from None
  if n == 0:
    raise ValueError("video has no decodable frames")
  return n, hw[0], hw[1]
