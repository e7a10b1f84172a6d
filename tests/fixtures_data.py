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


def write_m4_manual_dir(root: str, n_videos: int = 3) -> dict:
  """Official-layout M4-ViteVQA files: t1s1 train/val/test JSON, videos/<id>.mp4; video 'bad' is corrupt,
  video 'gone' is missing, and one train row lacks 'answers'."""
  os.makedirs(os.path.join(root, "videos", "sub"), exist_ok=True)
  ids = [f"{i:05d}" for i in range(n_videos)]
  frames = {}
  for i, vid in enumerate(ids):
    frames[vid], data = tiny_video(i)
    with open(os.path.join(root, "videos", "sub", f"{vid}.mp4"), "wb") as f:
      f.write(data)
  with open(os.path.join(root, "videos", "bad.mp4"), "wb") as f:
    f.write(CORRUPT_MP4)
  qid = 100
  tags = {"train": "t1s1train", "validation": "t1s1val", "test": "t1s1test"}
  for split, tag in tags.items():
    rows = []
    for vid in ids + (["bad", "gone"] if split == "train" else []):
      rows.append({"question": f"what is on {vid}?", "answers": [f"a{qid}", "x"], "video_id": vid,
                   "question_id": qid, "source1": "Single frame", "source2": "Text",
                   "video_width": 112, "video_height": 112})
      qid += 1
    if split == "train":
      rows.append({"question": "no answers", "video_id": ids[0], "question_id": 999})
    with open(os.path.join(root, f"ViteVQA_0.0.2_{tag}.json"), "w") as f:
      json.dump({"dataset_type": tag, "dataset_name": "vtvqa", "dataset_version": "0.0.2", "data": rows}, f)
  return {"frames": frames, "ids": ids}


def write_trajectory_manual_dir(root: str, n: int = 6) -> dict:
  """train.jsonl (gold synthetic trajectories + RL rows + one bad row + one corrupt video) and videos."""
  os.makedirs(root, exist_ok=True)
  recs = []
  for i in range(n):
    ex = synthetic.generate(TINY_TASK, 12, i)
    with open(os.path.join(root, f"{ex.trajectory.video_id}.mp4"), "wb") as f:
      f.write(video_bytes.encode_mp4(ex.frames_fhw3))
    recs.append(ex.trajectory if i % 2 == 0 else ex.rl_row())
  with open(os.path.join(root, "corrupt.mp4"), "wb") as f:
    f.write(CORRUPT_MP4)
  lines = [r.dumps() for r in recs]
  bad_kind = json.loads(lines[0])
  bad_kind["kind"] = "mixed"
  corrupt = json.loads(lines[1])
  corrupt["video_id"] = "corrupt"
  with open(os.path.join(root, "train.jsonl"), "w") as f:
    f.write("\n".join(lines + [json.dumps(bad_kind), json.dumps(corrupt)]) + "\n")
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
