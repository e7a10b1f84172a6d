"""Shared builder parts: the feature spec of a video QA row and the skip log for bad records.

Every builder yields rows of `video_qa_features()`; the pipeline reads them all the same way. A bad record
(unreadable video, missing field, invalid trajectory) never crashes a build: `SkipLog.skip` counts it, and
`SkipLog.close` logs one summary line and writes `skipped.jsonl` (one `{"split", "key", "reason"}` per line)
into the dataset's version directory, next to the array_record files.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

SKIPPED_FILE = "skipped.jsonl"


class ManualDirError(FileNotFoundError):
  """The manual directory lacks the files a builder reads; the message names the expected files."""


def split_jsonl_files(name: str, manual: str, splits: tuple[str, ...]) -> dict[str, str]:
  """split -> `<manual>/<split>.jsonl` for the splits that have one; ManualDirError when none has."""
  out = {s: os.path.join(manual, f"{s}.jsonl") for s in splits if os.path.isfile(os.path.join(manual, f"{s}.jsonl"))}
  if not out:
    raise ManualDirError(f"{name}: none of {[s + '.jsonl' for s in splits]} in manual dir {manual}")
  return out


def require_videos(name: str, manual: str, videos: dict[str, str], suffixes=(".mp4",)) -> None:
  """ManualDirError when no video file lies anywhere below the manual dir (every record would be skipped)."""
  if not videos:
    raise ManualDirError(f"{name}: no video files ({', '.join('<video_id>' + s for s in suffixes)}) anywhere "
                         f"below manual dir {manual}")


def video_qa_features(**extra) -> tfds.features.FeaturesDict:
  """video: encoded mp4 bytes (or, for page sequences, an empty string with `pages` set)."""
  feats = {
      "video": tfds.features.Tensor(shape=(), dtype=np.object_),
      "video_id": tfds.features.Text(),
      "qid": tfds.features.Text(),
      "question": tfds.features.Text(),
      "answers": tfds.features.Sequence(tfds.features.Text()),
      "kind": tfds.features.Text(),          # "rl" | "deliberate" | "compositional"
      "trajectory": tfds.features.Text(),    # schema.Trajectory JSON ("" when there is none)
  }
  feats.update(extra)
  return tfds.features.FeaturesDict(feats)


class SkipLog:
  """Counts and records skipped records of one split; `close` writes them next to the data."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    self.builder, self.split, self.rows = builder, split, []
    self.kept = 0

  def skip(self, key: str, reason: str) -> None:
    logging.warning("%s/%s: skipping %s: %s", self.builder.name, self.split, key, reason)
    self.rows.append({"split": self.split, "key": key, "reason": reason})

  def close(self) -> None:
    # builder.data_dir is the incomplete (temporary) version dir during download_and_prepare; tfds renames it.
    os.makedirs(self.builder.data_dir, exist_ok=True)
    path = os.path.join(self.builder.data_dir, SKIPPED_FILE)
    with open(path, "a", encoding="utf-8") as f:
      for r in self.rows:
        f.write(json.dumps(r) + "\n")
    msg = (f"{self.builder.name}/{self.builder.builder_config.name if self.builder.builder_config else ''} "
           f"split {self.split}: kept {self.kept}, skipped {len(self.rows)} (see {SKIPPED_FILE})")
    logging.info(msg)
    print(msg)


def read_skipped(data_dir: str) -> list[dict]:
  """The skip records a build wrote into its version directory `data_dir`."""
  path = os.path.join(data_dir, SKIPPED_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def index_files(root: str, suffixes: tuple[str, ...]) -> dict[str, str]:
  """stem -> path of every file under `root` (recursively) whose name ends with one of `suffixes`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      if name.lower().endswith(suffixes):
        out.setdefault(os.path.splitext(name)[0], os.path.join(dirpath, name))
  return out
