"""Observation turns as static, in-graph token templates, produced by the one chat template (processing/chat.py).

Every possible outcome of a tool call has a fixed token sequence: a crop (one image item), a clip of g temporal
groups (one video item) for g = 1..K/2, and one error message per `ActionError`. They are rendered once on the
host by `chat.observation_ids` (so SFT data and the rollout produce the same ids), padded to one length N, and
indexed in-graph by the outcome of each row's action.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
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

  def length_upto(self, groups: int) -> int:
    """Slots that any outcome of at most `groups` frame groups needs (a crop, a clip of <= `groups` groups,
    every error): observation turns known to be that small can be prefilled this many slots wide."""
    rows = [0, *range(1, groups + 1), *range(self.max_groups + 1, self.ids.shape[0])]
    return int(self.valid[rows].sum(1).max())


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


@functools.lru_cache(maxsize=None)
def _jitted_validate():
  from videor4_jax.processing import grammar
  return jax.jit(grammar.validate, static_argnames=("complete", "num_frames", "max_frames"))


def _validate_host(*args, **kw):
  """grammar.validate compiled once per static setting (eager jnp would dispatch dozens of tiny ops)."""
  return jax.device_get(_jitted_validate()(*args, **kw))


def execute_host(src_fhw3, action: dict | None, *, obs_hw, max_clip_frames: int, crop_margin: float = 0.0,
                 crop_min_px: int = 8, num_frames: int | None = None):
  """Runs one action dict on the host with the rollout's pixel ops (compiled: bit-identical to the graph).

  Returns `(frames [K', h, w, 3] float32, groups, error, modality)`: a crop is its image duplicated temporally
  (one group), a clip is its frames (ceil(n/2) groups); frames beyond the groups are zero (the rollout's layout).
  """
  from videor4_jax.processing import grammar
  from videor4_jax.rumination import pixel_ops
  k2 = max_clip_frames + (max_clip_frames % 2)
  zeros = np.zeros((k2, *obs_hw, 3), np.float32)
  if action is None:
    return zeros, 0, ActionError.MALFORMED, chat.IMAGE
  f = num_frames or src_fhw3.shape[0]
  if action["name"] == "crop":
    parsed = _validate_host(grammar.KIND_CROP, action["frame"], np.asarray(action["bbox_2d"], np.float32),
                              np.zeros((max_clip_frames,), np.int32), 0, complete=True, num_frames=f,
                              max_frames=max_clip_frames)
    px, err = pixel_ops.crop_host(src_fhw3, int(parsed.frame), parsed.box, out_hw=tuple(obs_hw),
                                  margin=crop_margin, min_px=crop_min_px)
    err = int(parsed.error) or int(err)
    if err:
      return zeros, 0, err, chat.IMAGE
    zeros[0] = zeros[1] = np.asarray(px)
    return zeros, 1, 0, chat.IMAGE
  if action["name"] == "clip":
    frames = list(action["frames"])
    if len(frames) > max_clip_frames:
      return zeros, 0, int(ActionError.TOO_MANY_FRAMES), chat.VIDEO
    padded = np.zeros((max_clip_frames,), np.int32)
    padded[:len(frames)] = frames
    px, _, groups, err = pixel_ops.clip_host(src_fhw3, padded, len(frames), out_hw=tuple(obs_hw))
    if int(err):
      return zeros, 0, int(err), chat.VIDEO
    return np.asarray(px, np.float32), int(groups), 0, chat.VIDEO
  return zeros, 0, int(ActionError.UNKNOWN_TOOL), chat.IMAGE
