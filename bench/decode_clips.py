"""Decode time per video, seek decoder vs decode-everything reference, on generated 720p H.264 clips.

Used by bench/data_pipeline.py (section "decode"). Each clip: 1280x720, 30 fps, libx264 (ultrafast, 2 B-frames,
keyframe every --keyint frames), a scrolling block pattern. Per clip, one untimed call of each decoder checks
that both return bitwise the same 16 frames; then `runs` timed calls of each, alternated (ABAB, the first of each
pair swapping every round) in rounds over all clips, so that load changes hit both sides and every clip alike.
Median and min/max per side, the 1-minute load average before each round and at the end, the CPU model and the
commit go into the JSON.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time

import av
import numpy as np

from videor4_jax.processing import video, video_seek

W, H, FPS, NUM_FRAMES = 1280, 720, 30, 16
CLIP_DIR = os.path.join(tempfile.gettempdir(), "videor4_bench_clips")


def make_clip(seconds: float, keyint: int) -> str:
  """Path of the generated clip (cached in CLIP_DIR; written to a temp name, then renamed)."""
  os.makedirs(CLIP_DIR, exist_ok=True)
  path = os.path.join(CLIP_DIR, f"clip_{seconds:g}s_{W}x{H}_g{keyint}.mp4")
  if os.path.exists(path):
    return path
  tmp = path + ".tmp.mp4"
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (H // 16, W // 16, 3), np.uint8).repeat(16, 0).repeat(16, 1)
  with av.open(tmp, "w") as c:
    s = c.add_stream("libx264", rate=FPS)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = {"preset": "ultrafast", "bf": "2", "g": str(keyint), "crf": "30"}
    for i in range(int(round(seconds * FPS))):
      img = np.roll(base, 4 * i, axis=1)
      img[:64, : 8 * (i % 160)] = 255          # a moving bar: every frame differs
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  os.replace(tmp, path)
  return path


def clip_facts(path: str) -> dict:
  with av.open(path) as c:
    t = video_seek.read_packet_table(c, c.streams.video[0])
  return dict(frames=len(t.frame_pts), keyframes=int(t.key.sum()), b_frames=bool((np.diff(t.pts) < 0).any()),
              megabytes=round(os.path.getsize(path) / 2**20, 1))


def _sample(path, exact):
  return video.sample_frames(path, num_frames=NUM_FRAMES, exact=exact)


def check_equal(path: str) -> None:
  _, idx_a, fast = _sample(path, False)
  _, idx_b, ref = _sample(path, True)
  if not (np.array_equal(idx_a, idx_b) and np.array_equal(fast, ref)):
    raise SystemExit(f"bench: {path}: the seek decoder's frames differ from the full decode's")


def time_clips(paths: list[str], runs: int) -> list[dict]:
  """Rounds over all clips, each clip's two sides alternated (ABAB, swapped every round), so that a change in
  the machine's load hits every clip and both sides alike."""
  times = [{"seek": [], "exact": []} for _ in paths]
  loads = []
  for r in range(runs):
    loads.append(os.getloadavg()[0])
    for t, path in zip(times, paths):
      for name in (("seek", "exact") if r % 2 == 0 else ("exact", "seek")):
        t0 = time.perf_counter()
        _sample(path, name == "exact")
        t[name].append(time.perf_counter() - t0)
  loads.append(os.getloadavg()[0])
  out = []
  for t in times:
    row = {k: dict(median_s=round(statistics.median(v), 4), min_s=round(min(v), 4), max_s=round(max(v), 4),
                   runs_s=[round(x, 4) for x in v]) for k, v in t.items()}
    row["speedup"] = round(row["exact"]["median_s"] / row["seek"]["median_s"], 2)
    out.append(row)
  return out, [round(x, 2) for x in loads]


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown"


def _commit() -> str:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except OSError:
    return "unknown"


def run(seconds: list[float], *, runs: int, keyint: int) -> dict:
  if runs < 1:
    raise SystemExit(f"bench: --decode_runs={runs} must be >= 1")
  res = dict(resolution=f"{W}x{H}", fps=FPS, frames_sampled=NUM_FRAMES, keyint=keyint, runs_per_side=runs,
             order="ABAB (alternated, first side swapped each round)", cpu=_cpu_model(), cpus=os.cpu_count(),
             commit=_commit(), loadavg_start=[round(x, 2) for x in os.getloadavg()], clips=[])
  paths = []
  for sec in seconds:
    t0 = time.perf_counter()
    paths.append(make_clip(sec, keyint))
    check_equal(paths[-1])
    res["clips"].append(dict(seconds=sec, generate_or_cache_s=round(time.perf_counter() - t0, 1),
                             frames_equal=True, **clip_facts(paths[-1])))
  rows, res["loadavg_1min_per_round"] = time_clips(paths, runs)
  for row, sec in zip(res["clips"], seconds):
    row.update(rows.pop(0))
    print(f"decode {sec:g}s: seek {row['seek']['median_s']:.3f}s, exact {row['exact']['median_s']:.3f}s "
          f"({row['speedup']}x)", flush=True)
  res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  first, last = res["clips"][0], res["clips"][-1]
  res["seek_longest_over_shortest"] = round(last["seek"]["median_s"] / first["seek"]["median_s"], 2)
  return res
