"""Generic video multiple-choice QA in evaluation (`evaluate(..., mcqa=True)`, `eval.py --mcqa`).

The rows of a `video_mcqa` build (data/builders/video_mcqa) become eval rows whose question is the prompt with
the lettered options and whose video is a `VideoClip` (the stored bytes, or the stored path, sampled inside the
question's start/end window). The prediction is scored by `metrics.multiple_choice_accuracy` against the gold
letter. Tokenization stays with the eval loop's featurizer (the tokenizer the caller gave it): this module only
writes text, so it never picks a tokenizer of its own.
"""
from __future__ import annotations

import math
import os

import numpy as np

from videor4_jax import metrics

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the option's letter from the given choices."
FIELDS = ("qid", "question", "options", "answer", "video", "video_path", "start_s", "end_s")


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def format_prompt(question: str, options: list[str]) -> str:
  """The question, one "X. option" line per option, and the instruction to answer with the letter."""
  if not 2 <= len(options) <= len(LETTERS):
    raise ValueError(f"{len(options)} options; 2 to {len(LETTERS)} are supported")
  lines = [question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [INSTRUCTION]
  return "\n".join(lines)


def score(prediction: str, golds: list[str]) -> float:
  return metrics.multiple_choice_accuracy(prediction, golds)


class McqaSource:
  """A `video_mcqa` split as the eval loop's random-access source (see the module docstring). A row that is not
  a video_mcqa row, or whose gold letter is not one of its options, is a ValueError naming the row."""

  def __init__(self, source):
    self.source = source
    if len(source):
      self[0]          # a wrong dataset fails here, before any model work

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    row = self.source[i]
    missing = [k for k in FIELDS if k not in row]
    if missing:
      raise ValueError(f"mcqa row {i} (qid {_text(row.get('qid', '?'))!r}) has no field(s) {missing}: --mcqa "
                       "needs a dataset built by the video_mcqa builder")
    where = f"mcqa row {i} (qid {_text(row['qid'])!r})"
    options = [_text(o) for o in row["options"]]
    answer = _text(row["answer"])
    if answer not in LETTERS[:len(options)]:
      raise ValueError(f"{where}: gold answer {answer!r} is not one of the letters of its {len(options)} options")
    start, end = float(row["start_s"]), float(row["end_s"])
    if not (start >= 0 and end > start):
      raise ValueError(f"{where}: window start_s={start} end_s={end} is not 0 <= start < end")
    from videor4_jax.processing.video import VideoClip
    out = dict(row, question=format_prompt(_text(row["question"]), options), answers=[answer],
               video=VideoClip(self._video(row, where), start, end if math.isfinite(end) else math.inf))
    return out

  @staticmethod
  def _video(row, where):
    data = row["video"]
    data = data.item() if isinstance(data, np.ndarray) else data
    if data:
      return bytes(data)
    path = _text(row["video_path"])
    if not os.path.isfile(path):
      raise ValueError(f"{where}: video_path {path!r} is not a file (a 'by_path' build reads its videos from "
                       "where they were when it was built)")
    return path
