"""Featurizers: grain MapTransforms that turn one stored row into fixed-shape numpy arrays.

Field conventions of a featurized RL/eval row (batched by pipeline.stack_batch to [B, ...]):
  qid            uint8 [max_answer_bytes]                      the question id, UTF-8, zero padded
  answers        uint8 [max_answers, max_answer_bytes]         gold answers, UTF-8, zero padded
  num_answers    int32 []                                      how many rows of `answers` are real
(the video and prompt stages append input_ids, mm_token_type_ids, attention_mask, pixel_values_videos,
video_grid_thw and source_frames; see the stage functions below.)
Strings travel as padded bytes so a batch is a plain dict of arrays; `decode_strings` reverses it.
"""
from __future__ import annotations

import numpy as np
import grain

from videor4_jax.data.pipeline import PipelineConfig


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


def encode_strings(strings: list[str], rows: int, length: int, *, where: str = "") -> tuple[np.ndarray, int]:
  """UTF-8 strings -> (uint8 [rows, length] zero padded, count). Too long or too many is an error, not a cut,
  because a truncated gold answer would silently score a correct prediction as wrong."""
  out = np.zeros((rows, length), np.uint8)
  if len(strings) > rows:
    raise ValueError(f"{where}: {len(strings)} strings > max {rows} (raise PipelineConfig.max_answers)")
  for i, s in enumerate(strings):
    b = s.encode("utf-8")
    if len(b) > length or b"\x00" in b:
      raise ValueError(f"{where}: string {s!r} is {len(b)} bytes (max {length}) or holds NUL "
                       "(raise PipelineConfig.max_answer_bytes)")
    out[i, :len(b)] = np.frombuffer(b, np.uint8)
  return out, len(strings)


def decode_strings(arr: np.ndarray, count: int | None = None) -> list[str]:
  """Inverse of encode_strings for one row: uint8 [rows, length] (or [length]) -> strings."""
  arr = np.asarray(arr)
  if arr.ndim == 1:
    return [bytes(arr).rstrip(b"\x00").decode("utf-8")]
  n = arr.shape[0] if count is None else int(count)
  return [bytes(r).rstrip(b"\x00").decode("utf-8") for r in arr[:n]]


def pad_tokens(ids: list[int] | np.ndarray, length: int, pad_id: int, side: str,
               *, where: str = "") -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [length], mask int32 [length]) padded on `side`; longer inputs are an error, never cut."""
  ids = np.asarray(ids, np.int32)
  if ids.shape[0] > length:
    raise ValueError(f"{where}: {ids.shape[0]} tokens > static length {length}")
  pad = length - ids.shape[0]
  out = np.full((length,), pad_id, np.int32)
  mask = np.zeros((length,), np.int32)
  sl = slice(pad, None) if side == "left" else slice(0, ids.shape[0])
  out[sl], mask[sl] = ids, 1
  return out, mask


class AnswersFeaturizer(grain.transforms.Map):
  """Row -> {qid, answers, num_answers}: the string side of every RL/eval batch (rewards and metrics)."""

  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def map(self, row: dict) -> dict[str, np.ndarray]:
    qid = _text(row["qid"])
    where = f"row qid={qid!r}"
    answers, n = encode_strings([_text(a) for a in row["answers"]], self.cfg.max_answers,
                                self.cfg.max_answer_bytes, where=where + " field 'answers'")
    qid_arr, _ = encode_strings([qid], 1, self.cfg.max_answer_bytes, where=where + " field 'qid'")
    return {"qid": qid_arr[0], "answers": answers, "num_answers": np.int32(n)}
