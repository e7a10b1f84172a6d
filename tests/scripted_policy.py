"""A scripted policy for seam tests: trajectories whose generated text the test chooses, row by row.

`Tagged` prefixes each question of a source with its record index ("[3] What ..."), so a scripted rollout can tell
from a row's own prompt tokens which record the row belongs to, without assuming any row order.
"""
from __future__ import annotations

import re

import numpy as np

from videor4_jax.rumination.trajectory import Actions, RolloutWork, Trajectory

TAG = re.compile(r"\[(\d+)\]")


class Tagged:
  """`source[i]` with the question prefixed by "[i] " and, if `answers` is given, golds `answers(i)`."""

  def __init__(self, source, answers=None):
    self.source, self.answers = source, answers

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    rec = dict(self.source[i])
    rec["question"] = b"[%d] " % i + rec["question"]
    if self.answers is not None:
      rec["answers"] = [a.encode() for a in self.answers(i)]
    return rec

  def golds(self, i) -> list[str]:
    return [a.decode() for a in self[i]["answers"]]


def row_tag(tok, ids) -> int:
  """The record index written in a prompt (token ids, padding included)."""
  found = TAG.search(tok.decode([int(t) for t in ids if t != tok.pad_id]))
  if found is None:
    raise AssertionError(f"no [index] tag in the prompt {tok.decode(ids)!r}")
  return int(found.group(1))


def scripted_trajectory(tok, input_ids, attention_mask, texts: list[str], *, cache_len: int, max_steps: int):
  """A Trajectory of `len(texts)` rows: row b is its (left- or right-padded) prompt followed by the tokens of
  `texts[b]`, all sampled (loss mask 1), no tool executed, every row answered. Vision fields are empty."""
  rows = len(texts)
  tokens = np.full((rows, cache_len), tok.pad_id, np.int32)
  loss_mask = np.zeros((rows, cache_len), np.float32)
  for b, text in enumerate(texts):
    prompt = np.asarray(input_ids[b])[np.asarray(attention_mask[b]) > 0]
    gen = tok.encode(text)
    n = len(prompt)
    tokens[b, :n], tokens[b, n:n + len(gen)] = prompt, gen
    loss_mask[b, n:n + len(gen)] = 1
  valid = tokens != tok.pad_id
  zeros_br = np.zeros((rows, max_steps), np.int32)
  actions = Actions(kind=zeros_br, frame=zeros_br, box=np.zeros((rows, max_steps, 4), np.float32),
                    frames=np.zeros((rows, max_steps, 1), np.int32), num_frames=zeros_br, error=zeros_br,
                    called=zeros_br.astype(bool))
  return Trajectory(tokens=tokens, positions=np.zeros((3, rows, cache_len), np.int32), valid=valid,
                    loss_mask=loss_mask, logp=np.zeros((rows, cache_len), np.float32), forced=np.zeros_like(valid),
                    mm_types=np.zeros((rows, cache_len), np.int32), length=valid.sum(1).astype(np.int32),
                    video_pixels=np.zeros((rows, 1, 1), np.float32), video_grid=np.zeros((rows, 3), np.int32),
                    obs_pixels=np.zeros((rows, max_steps, 1, 1), np.float32),
                    obs_grid=np.zeros((rows, max_steps, 3), np.int32), obs_valid=zeros_br.astype(bool),
                    actions=actions, answered=np.ones((rows,), bool), video_feats=np.zeros((rows, 1, 1), np.float32),
                    region_feats=np.zeros((rows, max_steps, 1), np.float32), region_mask=zeros_br.astype(bool),
                    last_clip_groups=np.zeros((rows, 1), bool), num_generated=loss_mask.sum(1).astype(np.int32),
                    work=RolloutWork(np.int32(0), np.int32(0), *[np.zeros((max_steps,), np.int32)] * 5))
