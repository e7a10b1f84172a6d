"""The trajectory record: everything a rollout produced, laid out by KV-cache slot.

A row's conversation occupies cache slots `[0, length)` contiguously (prompt, then for each rumination step the
generated tokens and the observation chunk); later slots are unused. Slot order is the attention order, so the
trainer's teacher-forced forward over `tokens` with `valid` and `positions` sees exactly the context the rollout
saw, and `logp[s]` (recorded when slot `s` was sampled) is comparable to the teacher-forced log-prob of
`tokens[s]` given slots `< s`.

Vision inputs are kept as pixels (the global view once per row, one observation item per step) so that the trainer
re-embeds them with the current parameters; image/video pad tokens in `tokens` take the vision embeddings in order:
first the global video, then the observation of step 0, 1, ... (items with `obs_valid == False` contribute none).
"""
from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class Actions:
  """Per-step action records `[B, R, ...]`; kind 0 = none (answered / stopped), 1 = crop, 2 = clip."""
  kind: jax.Array        # [B, R] int32
  frame: jax.Array       # [B, R] int32, 1-based crop frame
  box: jax.Array         # [B, R, 4] float32, normalized (x1, y1, x2, y2) as parsed
  frames: jax.Array      # [B, R, K] int32, 1-based clip frames
  num_frames: jax.Array  # [B, R] int32
  error: jax.Array       # [B, R] int32, grammar.ActionError code (0 = ok)
  called: jax.Array      # [B, R] bool: the row emitted a tool call in this step


@flax.struct.dataclass
class RolloutWork:
  """What one rollout computed, counted by the rollout as it ran (rollout.py), per step `[R]` or in total.

  A token-row is one slot of one row in a decoder call (padding, masked rows and repeated rows included: the
  unit of decoder compute); a patch is one vision-tower input patch of one row (zero padding included).
  """
  prompt_token_rows: jax.Array         # [] int32: the prompt prefill, once per prompt (P x Tp)
  prompt_patches: jax.Array            # [] int32: global-view patches, once per prompt (P x Nv)
  decoding_rows_r: jax.Array           # [R] int32: rows that decoded in the step (not done before it)
  decode_iterations_r: jax.Array       # [R] int32: iterations of the step's decode loops (its longest row)
  decode_token_rows_r: jax.Array       # [R] int32: token-rows computed over those iterations
  observation_token_rows_r: jax.Array  # [R] int32: token-rows of the step's observation prefills
  observation_patches_r: jax.Array     # [R] int32: observation patches through the vision tower

  def decoder_token_rows(self) -> jax.Array:
    """Every token-row the decoder computed: prompt prefill, decode, observation prefill."""
    return self.prompt_token_rows + self.decode_token_rows_r.sum() + self.observation_token_rows_r.sum()


@flax.struct.dataclass
class Trajectory:
  tokens: jax.Array        # [B, S] int32
  positions: jax.Array     # [3, B, S] int32 M-RoPE (t, h, w)
  valid: jax.Array         # [B, S] bool: slot holds a conversation token
  loss_mask: jax.Array     # [B, S] float32: 1 on tokens the model sampled
  logp: jax.Array          # [B, S] float32: recorded log-prob of sampled tokens (0 elsewhere)
  forced: jax.Array        # [B, S] bool: the grammar allowed exactly one token (no decision: no policy gradient)
  mm_types: jax.Array      # [B, S] int32: 0 text, 1 image, 2 video
  length: jax.Array        # [B] int32: slots used
  video_pixels: jax.Array  # [B, Nv, P] float32: global view patches
  video_grid: jax.Array    # [B, 3] int32
  obs_pixels: jax.Array    # [B, R, No, P] float32: observation patches per step
  obs_grid: jax.Array      # [B, R, 3] int32 (t = 0 when the step had no vision observation)
  obs_valid: jax.Array     # [B, R] bool
  actions: Actions
  answered: jax.Array      # [B] bool: the row closed with <|im_end|> after its answer
  video_feats: jax.Array   # [B, Gv, D] pooled global-view features per temporal group
  region_feats: jax.Array  # [B, R, D] pooled features of each crop observation
  region_mask: jax.Array   # [B, R] bool
  last_clip_groups: jax.Array  # [B, Gv] bool: global-view groups selected by the row's last clip
  num_generated: jax.Array     # [B] int32
  work: RolloutWork            # batch totals, not per row
