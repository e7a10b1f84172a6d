"""`video_mcqa`: a generic video multiple-choice QA benchmark (Video-MME, MVBench, ...) from a manual directory.

Manual dir (`--manual_dir`, or `<data_dir>/downloads/manual`):
  <split>.json | <split>.jsonl, or <split>/*.json[l] (one file per task, e.g. MVBench's), for split in
  test / validation / train; the record layouts are in formats.py. Videos anywhere below the manual dir: a
  record's video is found as a path (absolute, or relative to its annotation file or to the manual dir), else by
  file name, else by stem (Video-MME's `videoID` -> `<videoID>.mp4`), with any of VIDEO_SUFFIXES.
Configs: "embedded" (rows hold the video bytes: self-contained, one copy per question) and "by_path" (rows hold
the absolute path only: for hour-long videos; the rows are then valid only where the videos stay).

Each question is one row: `question` (the text alone), `options`, `answer` (the gold letter; `answers` =
[letter]), `start_s` / `end_s` (the window to sample frames from; 0 / inf when the record gives none), `task`.
Evaluate with `eval.py --mcqa` (eval/mcqa.py puts the options into the prompt and scores the option letter).
Unusable records (a missing field, an answer that is not an option, a video that is missing, unreadable, or has
no frame in the window, an ambiguous file name, a duplicate question id) are skipped and reported
(common.SkipLog -> skipped.jsonl).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from videor4_jax.data.builders import common
from videor4_jax.data.builders.video_mcqa import formats

SPLITS = ("test", "validation", "train")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".ts", ".m4v", ".flv")


@dataclasses.dataclass
class VideoMcqaConfig(tfds.core.BuilderConfig):
  embed_videos: bool = True


def annotation_files(manual: str, split: str) -> list[str]:
  files = [os.path.join(manual, split + ext) for ext in (".json", ".jsonl")]
  files = [f for f in files if os.path.isfile(f)]
  d = os.path.join(manual, split)
  if os.path.isdir(d):
    files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith((".json", ".jsonl")))
  return files


class VideoIndex:
  """Finds a record's video under the manual dir; an ambiguous name is an error, never a silent first pick."""

  def __init__(self, manual: str):
    self.manual, self.by_name, self.by_stem = manual, {}, {}
    for dirpath, _, names in os.walk(manual):
      for n in names:
        if n.lower().endswith(VIDEO_SUFFIXES):
          path = os.path.join(dirpath, n)
          self.by_name.setdefault(n, []).append(path)
          self.by_stem.setdefault(os.path.splitext(n)[0], []).append(path)

  def find(self, ref: str, ann_dir: str) -> str:
    for base in ("", ann_dir, self.manual):
      p = os.path.join(base, ref) if base else ref
      if (base or os.path.isabs(ref)) and os.path.isfile(p):
        return os.path.abspath(p)
    for table, key in ((self.by_name, os.path.basename(ref)), (self.by_stem, ref)):
      hits = table.get(key, [])
      if len(hits) > 1:
        raise formats.RecordError(f"video {ref!r} is ambiguous: {len(hits)} files match ({hits[:3]}...)")
      if hits:
        return os.path.abspath(hits[0])
    raise formats.RecordError(f"video {ref!r} not found under the manual dir (suffixes {VIDEO_SUFFIXES})")


def check_video(path: str, start_s: float, end_s: float) -> None:
  """Decodes the first and last frames inside the window (cheap: packets + seeking): a video that the
  pipeline could not sample is skipped at build time instead of failing an eval later."""
  from videor4_jax.processing.video import VideoClip, VideoDecodeError, sample_frames
  try:
    sample_frames(VideoClip(path, start_s, end_s), num_frames=2)
  except VideoDecodeError as e:
    raise formats.RecordError(str(e)) from None


class VideoMcqa(tfds.core.GeneratorBasedBuilder):
  name = "video_mcqa"
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [VideoMcqaConfig(name="embedded", description="rows hold the video bytes"),
                     VideoMcqaConfig(name="by_path", description="rows hold the video path", embed_videos=False)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put <split>.json[l] (or <split>/*.json[l]) annotation files and the videos "
                                  "into the manual dir; see videor4_jax/data/builders/video_mcqa/builder.py.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=common.video_qa_features(
            video_path=tfds.features.Text(), options=tfds.features.Sequence(tfds.features.Text()),
            answer=tfds.features.Text(), start_s=tfds.features.Scalar(dtype=np.float32),
            end_s=tfds.features.Scalar(dtype=np.float32), task=tfds.features.Text()))

  @classmethod
  def manual_files(cls, manual: str, config_name: str | None = None) -> dict[str, list[str]]:
    """split -> its annotation files; common.ManualDirError naming the expected files when there is none
    (videos may lie outside the manual dir, named by absolute paths: they are checked per record)."""
    out = {s: files for s in SPLITS if (files := annotation_files(manual, s))}
    if not out:
      raise common.ManualDirError(f"video_mcqa: no annotation file <split>.json[l] or <split>/*.json[l] for "
                                  f"splits {list(SPLITS)} in manual dir {manual}")
    return out

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    index = VideoIndex(manual)
    return {s: self._generate_examples(s, files, index) for s, files in self.manual_files(manual).items()}

  def _generate_examples(self, split: str, files: list[str], index: VideoIndex):
    log = common.SkipLog(self, split)
    seen, checked = set(), {}   # checked: (path, window) -> error or None, so each video is probed once
    for ann in files:
      for label, raw in formats.flatten(formats.read_records(ann)):
        qid = formats.record_id(raw)
        key = f"{os.path.basename(ann)}{label}" + (f" qid={qid}" if qid is not None else "")
        try:
          r = formats.parse_record(raw, label)
          uid = f"{os.path.splitext(os.path.basename(ann))[0]}/{r['qid']}" if len(files) > 1 else r["qid"]
          if uid in seen:
            raise formats.RecordError(f"duplicate question id {uid!r}")
          path = index.find(r["video"], os.path.dirname(ann))
          win = (path, r["start_s"], r["end_s"])
          if win not in checked:
            try:
              check_video(*win)
              checked[win] = None
            except formats.RecordError as e:
              checked[win] = str(e)
          if checked[win]:
            raise formats.RecordError(checked[win])
        except formats.RecordError as e:
          log.skip(key, str(e))
          continue
        seen.add(uid)
        log.kept += 1
        yield uid, self._row(r, uid, path)
    log.close()

  def _row(self, r: dict, uid: str, path: str) -> dict:
    data = b""
    if self.builder_config.embed_videos:
      with open(path, "rb") as f:
        data = f.read()
    return {"video": data, "video_id": r["video"], "qid": uid, "question": r["question"], "answers": [r["answer"]],
            "kind": "rl", "trajectory": "", "video_path": path, "options": r["options"], "answer": r["answer"],
            "start_s": np.float32(r["start_s"]), "end_s": np.float32(r["end_s"]), "task": r["task"]}
