"""Code-generated fixtures for the data tests: tiny mp4s, M4-ViteVQA-style JSON, trajectory JSONL, PNG pages."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from videor4_jax.data import synthetic, video_bytes

TINY_TASK = synthetic.SyntheticConfig(num_frames=4, source_hw=(112, 112), global_hw=(28, 28), obs_hw=(56, 56),
                                      grid=(2, 2), num_distractors=1, flash_len=(1, 2), code_len=(1, 2))
CORRUPT_MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 200  # an mp4 header followed by garbage


def tiny_video(i: int) -> tuple[np.ndarray, bytes]:
  ex = synthetic.generate(TINY_TASK, 11, i, question_type="clip_crop")
  return ex.frames_fhw3, video_bytes.encode_mp4(ex.frames_fhw3)


def write_m4_manual_dir(root: str, n_videos: int = 3, bad_records: bool = True) -> dict:
  """Official-layout M4-ViteVQA files: t1s1 train/val/test JSON, videos/<id>.mp4; with `bad_records`, video
  'bad' is corrupt, video 'gone' is missing, and one train row lacks 'answers' (3 rows skipped)."""
  os.makedirs(os.path.join(root, "videos", "sub"), exist_ok=True)
  ids = [f"{i:05d}" for i in range(n_videos)]
  frames = {}
  for i, vid in enumerate(ids):
    frames[vid], data = tiny_video(i)
    with open(os.path.join(root, "videos", "sub", f"{vid}.mp4"), "wb") as f:
      f.write(data)
  if bad_records:
    with open(os.path.join(root, "videos", "bad.mp4"), "wb") as f:
      f.write(CORRUPT_MP4)
  qid = 100
  tags = {"train": "t1s1train", "validation": "t1s1val", "test": "t1s1test"}
  for split, tag in tags.items():
    rows = []
    for vid in ids + (["bad", "gone"] if split == "train" and bad_records else []):
      rows.append({"question": f"what is on {vid}?", "answers": [f"a{qid}", "x"], "video_id": vid,
                   "question_id": qid, "source1": "Single frame", "source2": "Text",
                   "video_width": 112, "video_height": 112})
      qid += 1
    if split == "train" and bad_records:
      rows.append({"question": "no answers", "video_id": ids[0], "question_id": 999})
    with open(os.path.join(root, f"ViteVQA_0.0.2_{tag}.json"), "w") as f:
      json.dump({"dataset_type": tag, "dataset_name": "vtvqa", "dataset_version": "0.0.2", "data": rows}, f)
  return {"frames": frames, "ids": ids}


def write_trajectory_manual_dir(root: str, n: int = 6, bad_records: bool = True) -> dict:
  """train.jsonl (gold synthetic trajectories at even i, RL rows at odd i; with `bad_records`, one row of an
  invalid kind and one whose video is corrupt) and the videos."""
  os.makedirs(root, exist_ok=True)
  recs = []
  for i in range(n):
    ex = synthetic.generate(TINY_TASK, 12, i)
    with open(os.path.join(root, f"{ex.trajectory.video_id}.mp4"), "wb") as f:
      f.write(video_bytes.encode_mp4(ex.frames_fhw3))
    recs.append(ex.trajectory if i % 2 == 0 else ex.rl_row())
  lines = [r.dumps() for r in recs]
  if bad_records:
    with open(os.path.join(root, "corrupt.mp4"), "wb") as f:
      f.write(CORRUPT_MP4)
    bad_kind = json.loads(lines[0])
    bad_kind["kind"] = "mixed"
    corrupt = json.loads(lines[1])
    corrupt["video_id"] = "corrupt"
    lines += [json.dumps(bad_kind), json.dumps(corrupt)]
  with open(os.path.join(root, "train.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return {"records": recs}


def png_bytes(img_hw3: np.ndarray, fmt: str = "PNG") -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img_hw3).save(buf, fmt)
  return buf.getvalue()


def write_pages_manual_dir(root: str, n_docs: int = 3) -> dict:
  os.makedirs(os.path.join(root, "pages"), exist_ok=True)
  rng = np.random.default_rng(0)
  docs = {}
  rows = []
  for d in range(n_docs):
    names = []
    for p in range(2 + d):
      img = rng.integers(0, 256, size=(40 + 8 * p, 30, 3), dtype=np.uint8)
      name = f"pages/doc{d}_p{p}.png"
      with open(os.path.join(root, name), "wb") as f:
        f.write(png_bytes(img))
      names.append(name)
      docs.setdefault(f"doc{d}", []).append(img)
    rows.append({"qid": f"q{d}", "doc_id": f"doc{d}", "question": "what page?", "answers": [str(d)], "pages": names})
  with open(os.path.join(root, "pages", "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
  rows.append({"qid": "qb", "doc_id": "docb", "question": "?", "answers": ["1"], "pages": ["pages/broken.png"]})
  rows.append({"qid": "qm", "doc_id": "docm", "question": "?", "answers": ["1"], "pages": ["pages/missing.png"]})
  with open(os.path.join(root, "train.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  return {"docs": docs}


def run_build(spec: str, data_dir: str, manual_dir: str | None = None, *extra: str):
  """`python -m videor4_jax.data.build SPEC ...` in a subprocess (this checkout's package); the CompletedProcess."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "-m", "videor4_jax.data.build", spec, "--data_dir", data_dir, *extra]
  if manual_dir is not None:
    cmd += ["--manual_dir", manual_dir]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)


def build_real_format_data(tmp_path, n_videos: int = 3, n_trajectories: int = 8) -> str:
  """Builds real-format data with the build command and returns its data_dir:

    m4_vitevqa/task1_split1   from official-layout ViteVQA_0.0.2_t1s1{train,val,test}.json + videos/sub/<id>.mp4:
                              n_videos rows per split (train, validation, test), kind "rl", no bad records
    videor4_trajectories      from train.jsonl + <video_id>.mp4: n_trajectories rows of split train, gold
                              trajectories (kind "deliberate" / "compositional") at even lines, RL rows at odd

  Videos are the tiny synthetic ones (TINY_TASK: 4 frames of 112x112, lossless H.264). Read them with
  `data.sources.make_source_fn(cfg.data)` with `data.name` one of the two names above and `data.data_dir` the
  returned directory (or `pipeline.open_source(name, split, data_dir=...)`).
  """
  root = os.fspath(tmp_path)
  data_dir = os.path.join(root, "tfds")
  write_m4_manual_dir(os.path.join(root, "manual_m4"), n_videos=n_videos, bad_records=False)
  write_trajectory_manual_dir(os.path.join(root, "manual_traj"), n=n_trajectories, bad_records=False)
  for spec, manual in (("m4_vitevqa/task1_split1", "manual_m4"), ("videor4_trajectories", "manual_traj")):
    out = run_build(spec, data_dir, os.path.join(root, manual))
    if out.returncode != 0:
      raise RuntimeError(f"building {spec} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
  return data_dir
