"""Observation turns as static, in-graph token templates, produced by the one chat template (processing/chat.py).

Every possible outcome of a tool call has a fixed token sequence: a crop (one image item), a clip of g temporal
groups (one video item) for g = 1..K/2, and one error message per `ActionError`. They are rendered once on the
host by `chat.observation_ids` (so SFT data and the rollout produce the same ids), padded to one length N, and
indexed in-graph by the outcome of each row's action.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from videor4_jax.processing import chat
from videor4_jax.processing.grammar import KIND_CROP, ActionError


@dataclasses.dataclass(frozen=True)
class ObservationTemplates:
  ids: np.ndarray        # [O, N] int32
  valid: np.ndarray      # [O, N] bool
  mm_types: np.ndarray   # [O, N] int32
  tokens_per_group: int  # vision tokens of one observation frame group
  max_groups: int        # K/2 rounded up

  @property
  def length(self) -> int:
    return self.ids.shape[1]


def build_templates(tok, obs_hw, max_clip_frames: int, *, patch: int = 14, merge: int = 2) -> ObservationTemplates:
  per_group = (obs_hw[0] // patch) * (obs_hw[1] // patch) // (merge * merge)
  max_groups = (max_clip_frames + 1) // 2
  rows = [chat.observation_ids(tok, ActionError.OK, per_group, chat.IMAGE)]
  rows += [chat.observation_ids(tok, ActionError.OK, g * per_group, chat.VIDEO) for g in range(1, max_groups + 1)]
  rows += [chat.observation_ids(tok, e, 0, chat.IMAGE) for e in ActionError if e != ActionError.OK]
  n = max(len(r[0]) for r in rows)
  ids = np.full((len(rows), n), tok.pad_id, np.int32)
  valid = np.zeros((len(rows), n), bool)
  types = np.zeros((len(rows), n), np.int32)
  for i, (r_ids, r_types) in enumerate(rows):
    ids[i, :len(r_ids)], valid[i, :len(r_ids)], types[i, :len(r_ids)] = r_ids, True, r_types
  return ObservationTemplates(ids, valid, types, per_group, max_groups)


def outcome_index(t: ObservationTemplates, kind, error, groups):
  """Row of the template table for an action's outcome (crop ok, clip ok with `groups`, or its error)."""
  ok = error == ActionError.OK
  ok_idx = jnp.where(kind == KIND_CROP, 0, jnp.clip(groups, 1, t.max_groups))
  return jnp.where(ok, ok_idx, t.max_groups + jnp.maximum(error, 1)).astype(jnp.int32)


def build_observation(t: ObservationTemplates, outcome_b):
  """`(ids [B, N], valid [B, N], mm_types [B, N])` for each row's outcome index."""
  return (jnp.asarray(t.ids)[outcome_b], jnp.asarray(t.valid)[outcome_b], jnp.asarray(t.mm_types)[outcome_b])
