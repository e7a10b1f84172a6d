"""`page_sequences`: multi-page document / slide QA; the pages of a document are the frames of a "video".

Manual dir: `<split>.jsonl` with lines `{"qid", "doc_id", "question", "answers": [..], "pages": ["p1.png", ..]}`
(page paths relative to the manual dir; PNG or JPEG; optional "trajectory": a schema record whose frame
indices are 1-based page numbers). Pages are stored as their original file bytes (lossless, no re-encoding)
in `pages`; `video` is empty. A row with a missing field, a missing or undecodable page is skipped and
reported (common.SkipLog).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
import tqdm
from PIL import Image

from videor4_jax.data import schema
from videor4_jax.data.builders import common

SPLITS = ("train", "validation", "test")


class PageSequences(tfds.core.GeneratorBasedBuilder):
  name = "page_sequences"
  # tfds finds README/checksums next to the code; an editable install can confuse its lookup, so say where.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put <split>.jsonl files and the page images they name into the manual dir."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.video_qa_features(
        pages=tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
        num_frames=tfds.features.Scalar(dtype=np.int32)))

  @classmethod
  def manual_files(cls, manual: str, config_name: str | None = None) -> dict[str, str]:
    """split -> `<split>.jsonl`; common.ManualDirError when there is none (pages are checked per record)."""
    return common.split_jsonl_files(cls.name, manual, SPLITS)

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    return {s: self._generate_examples(s, manual) for s in common.split_jsonl_files(self.name, manual, SPLITS)}

  def _generate_examples(self, split: str, manual: str):
    log = common.SkipLog(self, split)
    path = os.path.join(manual, f"{split}.jsonl")
    with open(path, encoding="utf-8") as f:
      lines = [(n, l) for n, l in enumerate(f, 1) if l.strip()]
    for n, line in tqdm.tqdm(lines, desc=f"page_sequences/{split}", unit="doc"):
      key = f"{split}.jsonl:{n}"
      try:
        yield key, self._row(json.loads(line), manual, key)
        log.kept += 1
      except (ValueError, OSError, KeyError) as e:  # JSONDecodeError and SchemaError are ValueErrors
        log.skip(key, str(e))
    log.close()

  @staticmethod
  def _row(r: dict, manual: str, key: str) -> dict:
    if not isinstance(r, dict):
      raise ValueError(f"expected a JSON object, got {type(r).__name__}")
    missing = [k for k in ("qid", "doc_id", "question", "answers", "pages") if k not in r]
    if missing:
      raise KeyError(f"missing field(s) {missing}")
    for k, types in (("pages", (str,)), ("answers", (str, int, float))):
      if not isinstance(r[k], list) or not r[k] or not all(isinstance(x, types) for x in r[k]):
        raise ValueError(f"field {k!r} must be a non-empty list of {'strings' if k == 'pages' else 'answers'}, "
                         f"got {r[k]!r}")
    pages = []
    for p in r["pages"]:
      with open(os.path.join(manual, p), "rb") as f:
        b = f.read()
      try:
        Image.open(io.BytesIO(b)).verify()
      except Exception as e:  # PIL raises many types for corrupt images
        raise ValueError(f"page {p}: undecodable image ({type(e).__name__}: {e})") from None
      pages.append(b)
    traj = ""
    if r.get("trajectory"):
      traj = schema.from_json(r["trajectory"], where=key, num_frames=len(pages)).dumps()
    return {"video": b"", "pages": pages, "video_id": str(r["doc_id"]), "qid": str(r["qid"]),
            "question": str(r["question"]), "answers": [str(a) for a in r["answers"]],
            "kind": json.loads(traj)["kind"] if traj else "rl", "trajectory": traj, "num_frames": len(pages)}
