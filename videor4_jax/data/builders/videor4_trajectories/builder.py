"""`videor4_trajectories`: SFT trajectories and RL rows in the schema of data/schema.py, from a manual dir.

Manual dir: one JSONL file per split, `<split>.jsonl` (train, validation, test; any present), each line a
schema record (or a Pixel-Reasoner-style message list, see schema.from_messages), and the videos
`<video_id>.mp4` anywhere below the manual dir. A row stores the original video bytes and the validated
trajectory JSON; `kind` says whether it is an SFT trajectory ("deliberate", "compositional") or an RL row.
Invalid records (bad JSON, schema errors, frame indices beyond the video, missing or unreadable videos) are
skipped and reported (common.SkipLog).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
import tqdm

from videor4_jax.data import schema, video_bytes
from videor4_jax.data.builders import common

SPLITS = ("train", "validation", "test")


class Videor4Trajectories(tfds.core.GeneratorBasedBuilder):
  name = "videor4_trajectories"
  # tfds finds README/checksums next to the code; an editable install can confuse its lookup, so say where.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put <split>.jsonl trajectory files and <video_id>.mp4 videos into the manual dir."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=common.video_qa_features(num_frames=tfds.features.Scalar(dtype=np.int32)))

  @classmethod
  def manual_files(cls, manual: str, config_name: str | None = None) -> dict[str, str]:
    """split -> `<split>.jsonl`; common.ManualDirError when there is none or no video below the manual dir."""
    files = common.split_jsonl_files(cls.name, manual, SPLITS)
    common.require_videos(cls.name, manual, common.index_files(manual, (".mp4",)))
    return files

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    videos = common.index_files(manual, (".mp4",))
    return {s: self._generate_examples(s, path, videos)
            for s, path in common.split_jsonl_files(self.name, manual, SPLITS).items()}

  def _generate_examples(self, split: str, path: str, videos: dict[str, str]):
    log = common.SkipLog(self, split)
    probed: dict[str, tuple[int, str | None]] = {}  # video_id -> (num_frames, error)
    for line, rec in tqdm.tqdm(schema.read_jsonl(path), desc=f"videor4_trajectories/{split}", unit="rec"):
      key = f"{os.path.basename(path)}:{line}"
      if isinstance(rec, schema.SchemaError):
        log.skip(key, str(rec))
        continue
      if rec.video_id not in videos:
        log.skip(key, f"video {rec.video_id}.mp4 not found under the manual dir")
        continue
      with open(videos[rec.video_id], "rb") as f:
        data = f.read()
      if rec.video_id not in probed:
        try:
          probed[rec.video_id] = (video_bytes.probe_mp4(data)[0], None)
        except ValueError as e:
          probed[rec.video_id] = (0, f"{videos[rec.video_id]}: {e}")
      n_frames, err = probed[rec.video_id]
      if err:
        log.skip(key, err)
        continue
      log.kept += 1
      yield f"{split}:{line}", {"video": data, "video_id": rec.video_id, "qid": rec.qid, "question": rec.question,
                                "answers": list(rec.answers), "kind": rec.kind, "trajectory": rec.dumps(),
                                "num_frames": n_frames}
    log.close()
