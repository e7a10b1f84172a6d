"""M-RoPE position ids (t, h, w) for interleaved text and vision tokens, in closed form (jittable).

Rule (HF transformers 5 `Qwen2_5_VLModel.get_rope_index`): a counter c starts at `start`; a text token gets
(c, c, c) and advances c by 1; a vision item with merged grid (T, H', W') starting at counter c gets, for its token
(i, j, k), (c + floor(i * interval), c + j, c + k), and afterwards c += max(H', W'). interval = tokens_per_second *
second_per_grid_t for videos and 1 for images. Padding tokens (attention_mask 0) get position 0 and do not
advance c.

Closed form, all vectorized: items of one modality are numbered in flattened `[B*T]` order (HF's order of
`image_grid_thw` / `video_grid_thw`); a token's item and offset inside it come from a `searchsorted` over the
cumulative item sizes, and the counter is `start + (#text tokens before) + sum(max(H', W') of items completed
before)`. The same function gives the prompt's positions and those of chunks appended later in the rollout
(pass the row's counter as `start`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from videor4_jax.model.config import ModelConfig

TEXT, IMAGE, VIDEO = 0, 1, 2


def _exclusive_cumsum(x_bt):
  return jnp.cumsum(x_bt, axis=-1) - x_bt


# One screen and a bit: it follows HF get_rope_index's single pass over the sequence's text and vision spans, which
# reads (and is checked against HF, tests/test_model_parity.py) best kept in one piece.
def mrope_positions(config: ModelConfig, mm_types_bt, valid_bt, *, image_grid_thw=None, video_grid_thw=None,
                    second_per_grid_ts=None, start_b=None):
  """Returns (positions `[3, B, T]` int32, next counter `[B]` int32).

  `image_grid_thw` / `video_grid_thw`: `[K, 3]` patch grids (before the 2x2 merge) of the items in flattened
  order; items with t = 0 are empty placeholders (used by the rollout for rows without an observation).
  """
  mm_types_bt = jnp.asarray(mm_types_bt, jnp.int32)
  b, t = mm_types_bt.shape
  valid_bt = jnp.ones((b, t), bool) if valid_bt is None else jnp.asarray(valid_bt, bool)
  start_b = jnp.zeros((b,), jnp.int32) if start_b is None else jnp.asarray(start_b, jnp.int32)
  merge = config.vision.spatial_merge_size
  is_text = (mm_types_bt == TEXT) & valid_bt
  counter_bt = start_b[:, None] + _exclusive_cumsum(is_text.astype(jnp.int32))
  pos_t = pos_h = pos_w = None
  for modality, grid in ((IMAGE, image_grid_thw), (VIDEO, video_grid_thw)):
    is_m = (mm_types_bt == modality) & valid_bt
    if grid is None:
      continue
    grid = jnp.asarray(grid, jnp.int32).reshape(-1, 3)
    gt, gh, gw = grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge
    ntok = gt * gh * gw
    ends = jnp.cumsum(ntok)
    inc = jnp.where(ntok > 0, jnp.maximum(gh, gw), 0)
    inc_prefix = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(inc)])      # [K + 1]
    flat = is_m.reshape(-1).astype(jnp.int32)
    before = (jnp.cumsum(flat) - flat).reshape(b, t)                                  # m-tokens before, global
    done = jnp.searchsorted(ends, before, side="right")                               # items completed before
    inc_before = inc_prefix[done]
    counter_bt = counter_bt + inc_before - inc_before[:, :1]
    k = jnp.minimum(done, grid.shape[0] - 1)                                          # item of an m-token
    local = before - (ends - ntok)[k]
    hw = jnp.maximum(gh * gw, 1)[k]
    ti, hi, wi = local // hw, (local % hw) // jnp.maximum(gw[k], 1), local % jnp.maximum(gw[k], 1)
    if modality == VIDEO:
      spg = (jnp.ones((grid.shape[0],), jnp.float32) if second_per_grid_ts is None
             else jnp.asarray(second_per_grid_ts, jnp.float32).reshape(-1))
      interval = config.vision.tokens_per_second * spg
      ti = (ti.astype(jnp.float32) * interval[k]).astype(jnp.int32)
    pos_t = jnp.where(is_m, ti, 0) if pos_t is None else jnp.where(is_m, ti, pos_t)
    pos_h = jnp.where(is_m, hi, 0) if pos_h is None else jnp.where(is_m, hi, pos_h)
    pos_w = jnp.where(is_m, wi, 0) if pos_w is None else jnp.where(is_m, wi, pos_w)
  zeros = jnp.zeros((b, t), jnp.int32)
  offs = [zeros if p is None else p for p in (pos_t, pos_h, pos_w)]
  positions = jnp.stack([jnp.where(valid_bt, counter_bt + o, 0) for o in offs])
  # The counter after the last token: one more than the last text token, or past the last completed item.
  last = jnp.where(valid_bt, jnp.arange(t)[None], -1).max(-1)
  last_c = jnp.take_along_axis(counter_bt, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  last_is_text = jnp.take_along_axis(is_text, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  last_type = jnp.take_along_axis(mm_types_bt, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  tail = jnp.zeros((b,), jnp.int32)
  for modality, grid in ((IMAGE, image_grid_thw), (VIDEO, video_grid_thw)):
    if grid is None:
      continue
    grid = jnp.asarray(grid, jnp.int32).reshape(-1, 3)
    gh, gw = grid[:, 1] // merge, grid[:, 2] // merge
    is_m = ((mm_types_bt == modality) & valid_bt).reshape(-1).astype(jnp.int32)
    ntok = grid[:, 0] * gh * gw
    upto = jnp.cumsum(is_m).reshape(b, t)
    k_last = jnp.searchsorted(jnp.cumsum(ntok), jnp.take_along_axis(upto, jnp.maximum(last, 0)[:, None],
                                                                     axis=1)[:, 0] - 1, side="right")
    k_last = jnp.minimum(k_last, grid.shape[0] - 1)
    tail = jnp.where(last_type == modality, jnp.maximum(gh, gw)[k_last], tail)
  next_b = jnp.where(last < 0, start_b, last_c + jnp.where(last_is_text, 1, tail))
  return positions.astype(jnp.int32), next_b.astype(jnp.int32)


def mm_token_types(config: ModelConfig, input_ids):
  ids = np.asarray(input_ids)
  return np.where(ids == config.image_token_id, IMAGE, np.where(ids == config.video_token_id, VIDEO, TEXT))


def get_rope_index(config: ModelConfig, input_ids, mm_token_type_ids=None, image_grid_thw=None,
                   video_grid_thw=None, second_per_grid_ts=None, attention_mask=None):
  """HF-compatible `(position_ids [3, B, T], rope_deltas [B, 1])` as numpy int64 arrays."""
  ids = np.asarray(input_ids)
  types = mm_token_types(config, ids) if mm_token_type_ids is None else np.asarray(mm_token_type_ids)
  valid = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
  pos, nxt = mrope_positions(config, types, valid, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                             second_per_grid_ts=second_per_grid_ts)
  pos = np.asarray(pos, np.int64)
  max_pos = np.where(valid[None], pos, -1).max(axis=(0, 2))
  deltas = max_pos + 1 - valid.sum(-1)
  return pos, deltas[:, None].astype(np.int64)
