"""`m4_vitevqa`: M4-ViteVQA (Zhao et al., NeurIPS 2022) from the official release in a manual directory.

Manual dir (`--manual_dir`, or `<data_dir>/downloads/manual`): the v0.0.2 annotation files
`ViteVQA_0.0.2_<tag>.json` = `{"data": [{"question", "answers", "video_id", "question_id", "source1", "source2",
"video_width", "video_height"}, ...]}` and the videos `<video_id>.mp4` anywhere below the manual dir (indexed
recursively once). Configs and their files (the README's Task1Split2 test link is wrong; the right file is
t1s2test):

  task1_split1: t1s1train / t1s1val / t1s1test      task1_split2: t1s2train / t1s2val / t1s2test
  task2:        t2train / t2val / t2test

Each QA pair is one row (kind "rl": question and answers only) holding the original mp4 bytes, so a row is
self-contained for random access (videos with several questions are stored once per question). A missing or
unreadable video, or an annotation without a required field, is skipped and reported (common.SkipLog).
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
import tqdm

from videor4_jax.data import video_bytes
from videor4_jax.data.builders import common

_FILES = {
    "task1_split1": {"train": "t1s1train", "validation": "t1s1val", "test": "t1s1test"},
    "task1_split2": {"train": "t1s2train", "validation": "t1s2val", "test": "t1s2test"},
    "task2": {"train": "t2train", "validation": "t2val", "test": "t2test"},
}
_REQUIRED = ("question", "answers", "video_id", "question_id")


def row_error(r) -> str | None:
  """Why annotation row `r` cannot be used (a missing or mistyped field), or None when it can."""
  if not isinstance(r, dict):
    return f"expected an object with fields {list(_REQUIRED)}, got {type(r).__name__}"
  missing = [k for k in _REQUIRED if k not in r]
  if missing:
    return f"missing field(s) {missing}"
  is_int = lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.isdigit())
  if not isinstance(r["question"], str) or not r["question"].strip():
    return f"field 'question' must be a non-empty string, got {r['question']!r}"
  a = r["answers"]
  if not isinstance(a, list) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in a) \
      or not any(str(x).strip() for x in a):
    return f"field 'answers' must be a list of strings, not all empty, got {a!r}"
  if not (isinstance(r["video_id"], str) and r["video_id"]) and not is_int(r["video_id"]):
    return f"field 'video_id' must be a non-empty string or an integer, got {r['video_id']!r}"
  if not is_int(r["question_id"]):
    return f"field 'question_id' must be an integer, got {r['question_id']!r}"
  for k in ("video_width", "video_height"):
    if r.get(k) not in (None, "") and not is_int(r[k]):
      return f"field {k!r} must be an integer, got {r[k]!r}"
  return None


def annotation_files(manual: str, config_name: str) -> dict[str, str]:
  """split -> the config's `ViteVQA_0.0.2_<tag>.json` in the manual dir, for the splits that have one;
  common.ManualDirError naming the expected files when none has."""
  tags = _FILES[config_name]
  out = {split: os.path.join(manual, f"ViteVQA_0.0.2_{tag}.json") for split, tag in tags.items()}
  out = {split: path for split, path in out.items() if os.path.isfile(path)}
  if not out:
    raise common.ManualDirError(f"m4_vitevqa/{config_name}: none of "
                                f"{[f'ViteVQA_0.0.2_{t}.json' for t in tags.values()]} in manual dir {manual}")
  return out


def read_annotations(ann_path: str) -> list:
  """The rows of an annotation file; a file that is not UTF-8 JSON of the v0.0.2 format is a ValueError naming it."""
  try:
    with open(ann_path, encoding="utf-8") as f:
      data = json.load(f)
  except UnicodeDecodeError as e:
    raise ValueError(f"{ann_path}: not UTF-8 (byte {e.start}: {e.reason}); the M4-ViteVQA annotation files are "
                     "UTF-8 JSON: re-download the file or convert it (e.g. iconv -t UTF-8)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{ann_path}: not valid JSON ({e}); re-download the annotation file") from None
  rows = data.get("data") if isinstance(data, dict) else None
  if not isinstance(rows, list):
    raise ValueError(f"{ann_path}: expected {{'data': [...]}} (M4-ViteVQA v0.0.2 annotation format)")
  return rows


class M4Vitevqa(tfds.core.GeneratorBasedBuilder):
  name = "m4_vitevqa"
  # tfds finds README/checksums next to the code; an editable install can confuse its lookup, so say where.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("0.0.2")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"M4-ViteVQA {n}") for n in _FILES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the ViteVQA_0.0.2_*.json annotation files and the <video_id>.mp4 videos "
                                  "of the official release (github.com/bytedance/VTVQA) into the manual dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=common.video_qa_features(
            question_id=tfds.features.Scalar(dtype=np.int64),
            source1=tfds.features.Text(), source2=tfds.features.Text(),
            video_width=tfds.features.Scalar(dtype=np.int32),
            video_height=tfds.features.Scalar(dtype=np.int32)))

  @classmethod
  def manual_files(cls, manual: str, config_name: str) -> dict[str, str]:
    """split -> annotation file; common.ManualDirError when the manual dir lacks them or holds no video."""
    files = annotation_files(manual, config_name)
    common.require_videos(f"m4_vitevqa/{config_name}", manual, common.index_files(manual, (".mp4",)))
    return files

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    videos = common.index_files(manual, (".mp4",))
    return {split: self._generate_examples(split, path, videos)
            for split, path in annotation_files(manual, self.builder_config.name).items()}

  def _generate_examples(self, split: str, ann_path: str, videos: dict[str, str]):
    rows = read_annotations(ann_path)
    log = common.SkipLog(self, split)
    probed: dict[str, str | None] = {}  # video_id -> error (None = fine), so each video is decoded once
    for i, r in enumerate(tqdm.tqdm(rows, desc=f"m4_vitevqa/{split}", unit="qa")):
      key = f"{os.path.basename(ann_path)}[{i}]"
      err = row_error(r)
      if err is not None and not (isinstance(r, dict) and all(k in r for k in _REQUIRED)):
        log.skip(key, err)         # no ids to name it by
        continue
      vid = str(r["video_id"])
      key = f"{key} qid={r['question_id']} video_id={vid}"
      if err is not None:
        log.skip(key, err)
        continue
      if vid not in videos:
        log.skip(key, f"video {vid}.mp4 not found under the manual dir")
        continue
      with open(videos[vid], "rb") as f:
        data_bytes = f.read()
      if vid not in probed:
        try:
          video_bytes.probe_mp4(data_bytes)
          probed[vid] = None
        except ValueError as e:
          probed[vid] = f"{videos[vid]}: {e}"
      if probed[vid]:
        log.skip(key, probed[vid])
        continue
      log.kept += 1
      yield str(r["question_id"]), {
          "video": data_bytes, "video_id": vid, "qid": str(r["question_id"]), "question": str(r["question"]),
          "answers": [str(a) for a in r["answers"]], "kind": "rl", "trajectory": "",
          "question_id": int(r["question_id"]), "source1": str(r.get("source1", "")),
          "source2": str(r.get("source2", "")), "video_width": int(r.get("video_width", 0) or 0),
          "video_height": int(r.get("video_height", 0) or 0)}
    log.close()
