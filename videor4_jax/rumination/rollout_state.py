"""The rollout's typed state (rollout.py): the loop carries and per-step records of the jitted rumination rollout.

Shape suffixes: b rows (B = prompts x generations), s cache slots (S), t tokens of a step (T), v vocabulary,
g global-view frame groups, n observation patches, p patch length, d model width, k rows of a compacted chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax

from videor4_jax.model.vlm import KVCache
from videor4_jax.rumination.env import Observation, RuminationEnv
from videor4_jax.rumination.trajectory import Actions


@flax.struct.dataclass
class Record:
  """The conversation so far by KV-cache slot (the Trajectory's slot fields)."""
  tokens_bs: jax.Array       # int32
  positions_3bs: jax.Array   # int32 M-RoPE (t, h, w)
  valid_bs: jax.Array        # bool
  loss_mask_bs: jax.Array    # float32: 1 on sampled tokens
  logp_bs: jax.Array         # float32: log-prob of the sampled token (sampling.py)
  forced_bs: jax.Array       # bool: the grammar allowed one token only
  mm_types_bs: jax.Array     # int32: 0 text, 1 image, 2 video


@flax.struct.dataclass
class RolloutState:
  """What one rumination step hands the next."""
  cache: KVCache             # [B, S] slots
  record: Record
  write_b: jax.Array         # int32: the row's next free slot
  counter_b: jax.Array       # int32: the row's next M-RoPE position
  logits_bv: jax.Array       # float32: logits of the row's next token
  done_b: jax.Array          # bool: answered, failed or cut; the row computes masked from here on
  answered_b: jax.Array      # bool
  last_clip_bg: jax.Array    # bool: global-view groups of the row's last executed clip
  num_generated_b: jax.Array  # int32


@flax.struct.dataclass
class Segment:
  """The decode segment's loop carry: the decoding part of the state plus this step's tokens and stops."""
  t: jax.Array               # int32 []: iterations so far
  cache: KVCache
  record: Record
  logits_bv: jax.Array
  write_b: jax.Array
  counter_b: jax.Array
  active_b: jax.Array        # bool: decoding (not stopped in this segment, not done before it)
  gstate_b: jax.Array        # int32 grammar state (processing/grammar.py)
  stop_b: jax.Array          # int32 STOP_*
  step_tokens_bt: jax.Array  # int32: the tokens of this step (env.parse_action reads them)
  step_len_b: jax.Array      # int32
  token_rows: jax.Array      # int32 []: work count, rows the decoder computed


@flax.struct.dataclass
class ObservationTurns:
  """The observation turns' loop carry: cache and logits after the turns, env.observe's outputs per row (zero for
  rows that did not call), work counts."""
  cache: KVCache
  logits_bv: jax.Array
  obs: Observation
  token_rows: jax.Array      # int32 []
  patches: jax.Array         # int32 []


@dataclasses.dataclass(frozen=True)
class Context:
  """What every phase of one traced rollout reads (trace-time only: params and key are tracers)."""
  env: RuminationEnv
  params: dict
  key: jax.Array
  sample: Callable           # sampling.sample_next with the rollout's settings
  rows: int                  # B = prompts x generations
  chunk_k: int               # chunk_rows(B, compact_rows)
  source_frames_b: jax.Array  # [B, F, H, W, 3] uint8
  row_offset: jax.Array | int = 0  # index of row 0 in the whole batch (rollout.rollout_body): its sampling keys


@flax.struct.dataclass
class StepRecord:
  """What a step leaves for the trajectory (the scan stacks each field to `[R, ...]`)."""
  actions: Actions           # fields [B, ...]
  obs_pixels_bnp: jax.Array
  obs_grid_b3: jax.Array
  obs_valid_b: jax.Array
  region_feat_bd: jax.Array
  region_mask_b: jax.Array
  decoding_rows: jax.Array   # int32 [] work counts (trajectory.RolloutWork)
  decode_iterations: jax.Array
  decode_token_rows: jax.Array
  observation_token_rows: jax.Array
  observation_patches: jax.Array
