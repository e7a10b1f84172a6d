"""The teacher-forced forward over a whole conversation (SFT batches and rollout trajectories alike).

A sequence batch is laid out by slot (see rumination/trajectory.py): `tokens [B, S]`, `positions [3, B, S]`,
`valid [B, S]`, `mm_types [B, S]`, plus the vision inputs: the global video `video_pixels [B, Nv, P]` with
`video_grid [B, 3]` and per-step observations `obs_pixels [B, R, No, P]` with `obs_grid [B, R, 3]` (t = 0: none).
Vision pad tokens of a row take, in order, the row's video embeddings and then its observation embeddings.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from videor4_jax.model import vlm


def _row_vision_embeds(config, params, video_pixels, video_grid, obs_pixels, obs_grid):
  """Per row: the vision embeddings in order `[B, Nv/4 + R*No/4, D]` and their validity."""
  b, nv, _ = video_pixels.shape
  r, no = obs_pixels.shape[1], obs_pixels.shape[2]
  unit = config.vision.spatial_merge_size ** 2
  enc = lambda px, grid: vlm.encode_vision(config, params, px, grid[None])
  video = jax.vmap(enc)(video_pixels, video_grid)                                     # [B, Nv/4, D]
  obs = jax.vmap(jax.vmap(enc))(obs_pixels, obs_grid)                                 # [B, R, No/4, D]
  n_obs = obs_grid.prod(-1) // unit                                                   # [B, R]
  obs_valid = jnp.arange(no // unit)[None, None] < n_obs[..., None]                   # [B, R, No/4]
  n_vid = video_grid.prod(-1) // unit
  vid_valid = jnp.arange(nv // unit)[None] < n_vid[:, None]
  embeds = jnp.concatenate([video, obs.reshape(b, r * (no // unit), -1)], axis=1)
  valid = jnp.concatenate([vid_valid, obs_valid.reshape(b, -1)], axis=1)
  return embeds, valid


def sequence_hidden(config, params, batch) -> jax.Array:
  """Final hidden states `[B, S, D]` of the teacher-forced conversation."""
  x = vlm.embed_tokens(config, params, batch["tokens"])
  embeds, valid = _row_vision_embeds(config, params, batch["video_pixels"], batch["video_grid"],
                                     batch["obs_pixels"], batch["obs_grid"])
  x = vlm.merge_row_vision(x, (batch["mm_types"] > 0) & batch["valid"], embeds, valid)
  hidden, _ = vlm.decode(config, params, x, batch["positions"], batch["valid"])
  return hidden
