"""The rumination environment: model, grammar, pixel ops and observation templates bound into jittable functions.

Built once on the host (`make_env`), it holds only static arrays and configs; the rollout (rollout.py) calls its
functions inside one compiled graph, and the reference loop in the tests calls the same pieces step by step.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.model import vlm
from videor4_jax.model.config import ModelConfig
from videor4_jax.model.rope_index import mrope_positions
from videor4_jax.processing import grammar
from videor4_jax.processing.grammar import KIND_CLIP, KIND_CROP, ActionError
from videor4_jax.rumination import observation, pixel_ops
from videor4_jax.rumination.config import RolloutConfig

KIND_NONE = grammar.KIND_NONE


@flax.struct.dataclass
class Observation:
  """One observation turn per row (`RuminationEnv.observe`): N = the turn's slots, No = observation patches."""
  ids_bn: jax.Array            # int32 [B, N] the turn's token ids
  valid_bn: jax.Array          # bool [B, N] (False for rows that did not call)
  mm_types_bn: jax.Array       # int32 [B, N] 0 text, 1 image, 2 video
  embeds_bnd: jax.Array | None  # [B, N', D] the prefill input (text embeddings with the vision ones merged in)
  positions_3bn: jax.Array     # int32 [3, B, N] M-RoPE positions continuing from the row's counter
  next_counter_b: jax.Array    # int32 [B] the position counter after the turn
  pixels_bnp: jax.Array        # [B, No, P] the observation's patches
  grid_b3: jax.Array           # int32 [B, 3] (groups, h, w) patch grid
  error_b: jax.Array           # int32 [B] ActionError code (0: executed)
  pooled_bd: jax.Array         # [B, D] mean vision embedding of the observation (the reward's region feature)
  crop_ok_b: jax.Array         # bool [B] an executed crop
  has_vision_b: jax.Array      # bool [B] an executed crop or clip
  clip_groups_bg: jax.Array    # bool [B, G] frame groups of the global video an executed clip covered


@dataclasses.dataclass(frozen=True)
class RuminationEnv:
  config: ModelConfig
  rollout: RolloutConfig
  automaton: grammar.Automaton
  templates: observation.ObservationTemplates
  free_mask: np.ndarray        # [V] bool: tokens a row may sample outside a tool call
  im_end_id: int
  num_frames: int              # F source frames per video

  @property
  def obs_len(self) -> int:
    return self.templates.length

  @property
  def video_groups(self) -> int:
    return (self.num_frames + 1) // 2

  @property
  def clip_slots(self) -> int:
    k = self.rollout.max_clip_frames
    return k + (k % 2)

  def observation_patches(self, max_groups: int | None = None) -> int:
    """Patches per row the vision tower sees in an observation turn (`observe`'s `max_groups`; None: all)."""
    patch, temporal = self.config.vision.patch_size, self.config.vision.temporal_patch_size
    h, w = self.rollout.obs_hw
    total = self.clip_slots // temporal * (h // patch) * (w // patch)
    return total if max_groups is None else total * max_groups // self.templates.max_groups

  # ---- model ---------------------------------------------------------------------------------------------------
  def init_cache(self, batch, length):
    return vlm.init_cache(self.config, batch, length)

  def embed(self, params, ids):
    return vlm.embed_tokens(self.config, params, ids)

  def decode(self, params, embeds, positions, valid, cache, write, rows=None):
    return vlm.decode(self.config, params, embeds, positions, valid, cache, write, rows)

  def logits(self, params, hidden):
    return vlm.logits(self.config, params, hidden)

  def encode_rows(self, params, pixels_bnp, grid_b3):
    """Vision tower per row: `[B, N, P]`, `[B, 3]` -> `[B, N/4, D]` (grid t = 0 encodes nothing valid)."""
    return jax.vmap(lambda px, g: vlm.encode_vision(self.config, params, px, g[None]))(pixels_bnp, grid_b3)

  # ---- grammar ---------------------------------------------------------------------------------------------------
  def allowed_tokens(self, gstate_b):
    auto = grammar.allowed_tokens(self.automaton, gstate_b, self.free_mask.shape[0])
    return jnp.where((gstate_b == grammar.OUTSIDE_CALL)[:, None], jnp.asarray(self.free_mask)[None], auto)

  def advance_grammar(self, gstate_b, tok_b):
    return grammar.step(self.automaton, gstate_b, tok_b)

  def grammar_accepts(self, gstate_b):
    return grammar.accepts(self.automaton, gstate_b)

  def parse_action(self, step_tokens_bt, step_len_b):
    valid = jnp.arange(step_tokens_bt.shape[1])[None] < step_len_b[:, None]
    p = jax.vmap(lambda t, v: grammar.parse_tokens(self.automaton, t, v, num_frames=self.num_frames))(
        step_tokens_bt, valid)
    return dataclasses.asdict(p)

  # ---- prompt ----------------------------------------------------------------------------------------------------
  def prefill_inputs(self, params, prompts):
    """Right-aligned prompt embeddings with the global video merged in, positions, and video features."""
    ids = prompts["input_ids"].astype(jnp.int32)
    valid = prompts["attention_mask"].astype(bool)
    shift = jnp.argmax(valid, axis=1)                         # left padding -> right padding
    idx = (jnp.arange(ids.shape[1])[None] + shift[:, None]) % ids.shape[1]
    ids, valid = jnp.take_along_axis(ids, idx, 1), jnp.take_along_axis(valid, idx, 1)
    grid = prompts["video_grid_thw"].astype(jnp.int32)
    video = self.encode_rows(params, prompts["pixel_values_videos"], grid)       # [B, Nv/4, D]
    n_vid = grid.prod(-1) // self.config.vision.spatial_merge_size ** 2
    vid_valid = jnp.arange(video.shape[1])[None] < n_vid[:, None]
    types = jnp.where(ids == self.config.video_token_id, 2, jnp.where(ids == self.config.image_token_id, 1, 0))
    x = vlm.merge_row_vision(self.embed(params, ids), (types > 0) & valid, video, vid_valid)
    pos, nxt = mrope_positions(self.config, types, valid, video_grid_thw=grid)
    # Mean embedding per frame group. Videos of different frame sizes are zero padded to one patch count, so a
    # row's groups are its first grid_h * grid_w / merge^2 tokens each, not a fixed share of the padded array.
    per_group = grid[:, 1] * grid[:, 2] // self.config.vision.spatial_merge_size ** 2            # [B]
    group_of = jnp.arange(video.shape[1])[None] // jnp.maximum(per_group, 1)[:, None]          # [B, Nv/4]
    member = (group_of[..., None] == jnp.arange(self.video_groups)) & vid_valid[..., None]     # [B, Nv/4, Gv]
    feats = jnp.einsum("bng,bnd->bgd", member.astype(video.dtype), video) / jnp.maximum(
        member.sum(1), 1)[..., None].astype(video.dtype)                                        # [B, Gv, D]
    return dict(ids=ids * valid, embeds=x, positions=pos, valid=valid, mm_types=types * valid,
                next_counter=nxt, video_feats=feats)

  # ---- environment step ----------------------------------------------------------------------------------------
  def execute(self, source_frames, action, called_b):
    """Runs each row's action on its source frames: pixels `[B, K', h, w, 3]`, grid `[B, 3]`, error, kind."""
    rc = self.rollout
    kind, err = action["kind"], action["error"]
    crop_px, crop_err = jax.vmap(lambda s, f, b: pixel_ops.crop(s, f, b, out_hw=rc.obs_hw, margin=rc.crop_margin,
                                                                 min_px=rc.crop_min_px))(
        source_frames, action["frame"], action["box"])
    clip_px, _, clip_groups, clip_err = jax.vmap(lambda s, f, n: pixel_ops.clip(s, f, n, out_hw=rc.obs_hw))(
        source_frames, action["frames"], action["num_frames"])
    op_err = jnp.where(kind == KIND_CROP, crop_err, jnp.where(kind == KIND_CLIP, clip_err, 0))
    error = jnp.where(err != 0, err, op_err)
    error = jnp.where(called_b, error, ActionError.OK)
    ok = called_b & (error == 0)
    crop_ok, clip_ok = ok & (kind == KIND_CROP), ok & (kind == KIND_CLIP)
    k2 = self.clip_slots
    crop_frames = jnp.concatenate([crop_px[:, None], crop_px[:, None],
                                   jnp.zeros((crop_px.shape[0], k2 - 2, *crop_px.shape[1:]))], axis=1)
    pixels = jnp.where(crop_ok[:, None, None, None, None], crop_frames,
                       jnp.where(clip_ok[:, None, None, None, None], clip_px, 0.0))
    patch = self.config.vision.patch_size
    gh, gw = rc.obs_hw[0] // patch, rc.obs_hw[1] // patch
    t = jnp.where(crop_ok, 1, jnp.where(clip_ok, clip_groups, 0))
    grid = jnp.stack([t, jnp.full_like(t, gh), jnp.full_like(t, gw)], -1).astype(jnp.int32)
    return pixels, grid, error.astype(jnp.int32), crop_ok, clip_ok

  def observe(self, params, source_frames, action, called_b, counter_b, max_groups=None):
    """Executes the actions and renders the observation chunk: ids, validity, types, embeddings, positions.

    max_groups (static, optional): the caller knows that no row's outcome has more frame groups than this (a
    crop has one), so the vision tower sees only those groups' patches and `embeds`, the input of the chunk's
    prefill, is `templates.length_upto(max_groups)` slots wide instead of N. Every other output keeps its
    full width.
    """
    pixels, grid, error, crop_ok, clip_ok = self.execute(source_frames, action, called_b)
    patches = jax.vmap(lambda f: pixel_ops.to_patches(f))(pixels)                 # [B, No, P]
    n_slots, seen = self.obs_len, patches
    if max_groups is not None:
      n_slots = self.templates.length_upto(max_groups)
      seen = patches[:, :self.observation_patches(max_groups)]
    embeds = self.encode_rows(params, seen, grid)                                # [B, No'/4, D]
    n_valid = grid.prod(-1) // self.config.vision.spatial_merge_size ** 2
    emb_valid = jnp.arange(embeds.shape[1])[None] < n_valid[:, None]
    pooled = (embeds * emb_valid[..., None]).sum(1) / jnp.maximum(n_valid, 1)[:, None]
    groups = grid[:, 0]
    outcome = observation.outcome_index(self.templates, action["kind"], error, groups)
    ids, valid, types = observation.build_observation(self.templates, outcome)
    valid = valid & called_b[:, None]
    x = vlm.merge_row_vision(self.embed(params, ids[:, :n_slots]), ((types > 0) & valid)[:, :n_slots], embeds,
                             emb_valid)
    image_grid = jnp.where(crop_ok[:, None], grid, jnp.zeros_like(grid))
    video_grid = jnp.where(clip_ok[:, None], grid, jnp.zeros_like(grid))
    spg = jnp.full((grid.shape[0],), self.rollout.clip_seconds_per_group, jnp.float32)
    pos, nxt = mrope_positions(self.config, types, valid, image_grid_thw=image_grid, video_grid_thw=video_grid,
                               second_per_grid_ts=spg, start_b=counter_b)
    sel = jnp.where(jnp.arange(action["frames"].shape[1])[None] < action["num_frames"][:, None],
                    action["frames"], 0)
    clip_groups = jnp.zeros((grid.shape[0], self.video_groups), bool)
    clip_groups = clip_groups.at[jnp.arange(grid.shape[0])[:, None], jnp.clip((sel - 1) // 2, 0,
                                                                              self.video_groups - 1)].max(sel > 0)
    return Observation(ids_bn=ids, valid_bn=valid, mm_types_bn=types, embeds_bnd=x, positions_3bn=pos,
                       next_counter_b=nxt, pixels_bnp=patches, grid_b3=grid, error_b=error, pooled_bd=pooled,
                       crop_ok_b=crop_ok, has_vision_b=crop_ok | clip_ok,
                       clip_groups_bg=clip_groups & clip_ok[:, None])


def make_env(config: ModelConfig, rollout: RolloutConfig, tokenizer, num_frames: int) -> RuminationEnv:
  if tokenizer.vocab_size > config.text.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                     f"{config.text.vocab_size}")
  v = config.text.vocab_size
  free = np.zeros((v,), bool)
  free[:tokenizer.vocab_size] = True
  for t in (tokenizer.image_pad_id, tokenizer.video_pad_id, tokenizer.vision_start_id, tokenizer.vision_end_id,
            tokenizer.im_start_id, tokenizer.tool_call_end_id, tokenizer.pad_id):
    free[t] = False
  auto = grammar.build_automaton(tokenizer, rollout.max_clip_frames)
  templates = observation.build_templates(tokenizer, rollout.obs_hw, rollout.max_clip_frames,
                                          patch=config.vision.patch_size, merge=config.vision.spatial_merge_size)
  return RuminationEnv(config, rollout, auto, templates, free, tokenizer.im_end_id, num_frames)
