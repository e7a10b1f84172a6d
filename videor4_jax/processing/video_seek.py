"""Frame access whose cost does not grow with the video's length: timestamps from the packets, frames by seeking.

`read_packet_table` demuxes the video stream once *without decoding* (packet pts, keyframe and discard flags:
reading 900 packets of a 30 s 720p clip took 0.065 s where decoding them took ~2.5 s, /work/shared/ENV_NOTES.md
section 9). The frames the decoder will output are the non-discarded packets, in pts order, so their times are
known before any decode. `SeekDecoder` then seeks to the keyframe before each wanted frame and decodes forward only
to it. Starting a decode at a keyframe gives the same pixels as decoding from the start of the stream, so the
frames equal the full decode's (tests/test_video_seek.py checks it bitwise against `video.decode_frames_exact`).

Anything this path cannot vouch for raises `NeedsFullDecode` and the caller (processing/video.py) falls back to
the decode-everything reference path: packets without pts (raw Annex-B H.264), duplicate pts, a demux error
(broken tail), a wanted frame the decoder did not output or flagged corrupt (a truncated last packet), or a decode
error.
"""
from __future__ import annotations

import bisect
import dataclasses
import fractions

import av
import numpy as np

MAX_PACKETS = 2_000_000     # a bound on a corrupt container's packet loop (an hour at 60 fps is 216,000)
_SEEK_RETRIES = 8           # overshooting seeks retried further back before restarting from the first packet


class NeedsFullDecode(Exception):
  """The packet table or the seek path cannot give exactly the full decode's frames; the reason says why."""


@dataclasses.dataclass(frozen=True)
class PacketTable:
  """The video stream's packets in decode order, and the frames the decoder outputs, in presentation order."""
  pts: np.ndarray            # int64 [N], every packet with data, decode order
  dts: np.ndarray            # int64 [N], pts where the container gives no dts
  key: np.ndarray            # bool [N]
  frame_pts: np.ndarray      # int64 [F], pts of the non-discarded packets, sorted: frame i of the full decode
  time_base: fractions.Fraction

  @property
  def times(self) -> np.ndarray:
    """Frame times in seconds, with the formula of PyAV's `Frame.time`, so they equal the full decode's."""
    num, den = self.time_base.numerator, self.time_base.denominator
    return np.asarray([float(p) * num / den for p in self.frame_pts.tolist()], np.float64)


def read_packet_table(container, stream) -> PacketTable:
  """Demuxes (no decode) every packet of `stream`; NeedsFullDecode when the packets cannot name the frames."""
  pts, dts, key, discard = [], [], [], []
  try:
    for packet in container.demux(stream):
      if packet.size == 0:      # the empty packet PyAV yields at the end (decoder flush)
        continue
      if packet.pts is None:
        raise NeedsFullDecode("a packet has no pts")
      pts.append(packet.pts)
      dts.append(packet.pts if packet.dts is None else packet.dts)
      key.append(packet.is_keyframe)
      discard.append(packet.is_discard)
      if len(pts) > MAX_PACKETS:
        raise NeedsFullDecode(f"more than {MAX_PACKETS} packets")
  except av.error.FFmpegError as e:     # e.g. a truncated tail: the reference path decodes what it can
    raise NeedsFullDecode(f"demux error {type(e).__name__}: {e}") from None
  if not pts:
    raise NeedsFullDecode("no packets")
  pts_a = np.asarray(pts, np.int64)
  if len(np.unique(pts_a)) != len(pts_a):
    raise NeedsFullDecode("duplicate packet pts")
  if stream.time_base is None:
    raise NeedsFullDecode("stream has no time base")
  shown = pts_a[~np.asarray(discard, bool)]
  if not len(shown):
    raise NeedsFullDecode("every packet is marked discard")
  return PacketTable(pts=pts_a, dts=np.asarray(dts, np.int64), key=np.asarray(key, bool),
                     frame_pts=np.sort(shown), time_base=fractions.Fraction(stream.time_base))


class SeekDecoder:
  """Decodes chosen frames of one open container: seek to a keyframe, decode forward to the frame, repeat."""

  def __init__(self, reopen, table: PacketTable):
    # reopen() -> (container, stream): a fresh demuxer, used when no seek lands at or before a keyframe.
    self.reopen, self.table = reopen, table
    self.dpos = {int(p): i for i, p in enumerate(table.pts.tolist())}
    self.keys = np.flatnonzero(table.key).tolist()
    self.container = self.stream = self.packets = None
    self.fed = -1              # decode position of the last packet fed to the decoder (-1: none since a seek)
    self.start = 0             # decode position the decoder started from at the last seek
    self.packets_decoded = 0   # work done, for tests and benches

  def start_packet(self, pts: int) -> int:
    """Decode position of the keyframe to start from for the frame with this pts."""
    i = bisect.bisect_right(self.keys, self.dpos[pts]) - 1
    # A frame shown before its keyframe (an open GOP's leading picture) may reference the previous GOP.
    while i > 0 and int(self.table.pts[self.keys[i]]) > pts:
      i -= 1
    return self.keys[i] if i >= 0 else 0

  def frames(self, wanted_pts) -> dict[int, np.ndarray]:
    """pts -> RGB uint8 frame for every pts in `wanted_pts` (pts of `table.frame_pts`)."""
    wanted = {int(p) for p in wanted_pts}
    got: dict[int, np.ndarray] = {}
    try:
      for pts in sorted(wanted):
        if pts in got:
          continue
        k = self.start_packet(pts)
        if self.packets is None or self.fed + 1 < k:
          self._seek(k)
        self._decode_until(pts, wanted, got)
    except av.error.FFmpegError as e:
      raise NeedsFullDecode(f"decode error {type(e).__name__}: {e}") from None
    finally:
      self.close()
    return got

  def close(self):
    if self.container is not None:
      self.container.close()
    self.container = self.stream = self.packets = None

  def _decode_until(self, pts: int, wanted: set, got: dict) -> None:
    while pts not in got:
      packet = next(self.packets, None)
      if packet is None:
        raise NeedsFullDecode(f"the decoder did not output the frame with pts {pts}")
      self.packets_decoded += 1
      # A frame nobody wants and no other frame references need not be decoded (H.264 nal_ref_idc 0): skipping
      # it leaves every reference picture, and so every wanted frame, unchanged.
      self.stream.codec_context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
      for frame in packet.decode():
        if frame.pts is None:
          raise NeedsFullDecode("a decoded frame has no pts")
        if frame.pts in wanted and self.start_packet(frame.pts) >= self.start:   # else it may lack a reference
          if frame.is_corrupt:   # concealed damage depends on what was decoded before: the full decode defines it
            raise NeedsFullDecode(f"the frame with pts {frame.pts} is corrupt")
          got[frame.pts] = frame.to_ndarray(format="rgb24")
        elif frame.pts > pts and pts not in got:
          raise NeedsFullDecode(f"the decoder skipped the frame with pts {pts}")
      if packet.size:
        self.fed = self.dpos.get(packet.pts, self.fed)

  def _seek(self, k: int) -> None:
    """Positions the demuxer so that the next packet is packet `k` (a keyframe or the first packet)."""
    if self.container is None:
      self.container, self.stream = self.reopen()
    span = max(int(self.table.pts.max() - self.table.dts.min()), 1)
    target = int(min(self.table.pts[k], self.table.dts[k]))
    back = 0
    for _ in range(_SEEK_RETRIES):
      self.container.seek(target - back, stream=self.stream, backward=True, any_frame=False)
      if self._skip_to(k):
        return
      back = max(2 * back, span // 64, 1)
    self.close()                                     # no seek landed before k: demux from the start
    self.container, self.stream = self.reopen()
    if not self._skip_to(k):
      raise NeedsFullDecode(f"packet {k} not found when demuxing from the start")

  def _skip_to(self, k: int) -> bool:
    """Skips (without decoding) to packet k; False when the demuxer is already past it."""
    self.fed, self.packets = -1, None
    it = self.container.demux(self.stream)
    for packet in it:
      if not packet.size:
        return False
      d = self.dpos.get(packet.pts)
      if d is None:
        raise NeedsFullDecode(f"after a seek, a packet with pts {packet.pts} is not in the packet table")
      if d > k:
        return False
      if d == k:
        self.packets, self.start = _chain(packet, it), k
        return True
    return False


def _chain(first, rest):
  yield first
  yield from rest
