"""A tiny ruminating setup for rollout tests: tiny tokenizer, small random VLM biased to call tools, prompts.

bench/rollout.py builds its larger setups from the same pieces (`model_config`, `biased_params`, `make_prompts`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.model import vlm
from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
from videor4_jax.processing import chat, grammar
from videor4_jax.processing.tokenizer import Tokenizer, padded_vocab_size
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.env import make_env
from videor4_jax.rumination.pixel_ops import resize_frames, to_patches

NUM_FRAMES, SRC_HW, GLOBAL_HW = 4, (112, 112), (28, 56)
SIGN_BOX = (20, 60, 30, 90)    # (y0, y1, x0, x1) source pixels of a flat "sign" region in every frame
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, mrope_section=(2, 3, 3))
TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                   fullatt_block_indexes=(1,))


def model_config(tok: Tokenizer, text: dict, vision: dict) -> ModelConfig:
  """A Qwen2.5-VL config of the given text / vision sizes over `tok` (vision output = text width, untied head)."""
  return ModelConfig(
      text=TextConfig(vocab_size=padded_vocab_size(tok), max_position_embeddings=4096, **text),
      vision=VisionConfig(out_hidden_size=text["hidden_size"], **vision),
      tie_word_embeddings=False, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
      vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id, bos_token_id=tok.pad_id,
      eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)


def tiny_model_config(tok: Tokenizer) -> ModelConfig:
  return model_config(tok, TINY_TEXT, TINY_VISION)


def biased_params(config: ModelConfig, tok: Tokenizer, seed: int = 0, tool_bias: float = 8.0,
                  end_bias: float = 7.5, clip_bias: float = 0.0, qk_scale: float = 1.0):
  """Random params plus a constant residual direction (embedding dim 0) that the LM head reads as a preference
  for `<tool_call>` and `<|im_end|>`, so that random models really call tools (and sometimes stop).

  `clip_bias` raises the clip tool's head piece; `qk_scale` scales the decoder's q/k kernels (sharper,
  position-dependent attention: greedy rows and coordinates then differ, so some boxes are valid).
  """
  params = vlm.init_params(config, jax.random.key(seed))
  p = params["params"]
  emb = p["embed"]["embedding"]
  p["embed"]["embedding"] = emb.at[:, 0].set(1.0)
  if qk_scale != 1.0:
    for n in ("q_proj", "k_proj"):
      p["decoder"]["layers"][n]["kernel"] = p["decoder"]["layers"][n]["kernel"] * qk_scale
  head = p["lm_head"]["kernel"]
  head = head.at[0, :].set(0.0)
  head = head.at[0, tok.tool_call_start_id].set(tool_bias).at[0, tok.im_end_id].set(end_bias)
  # Inside a call, prefer small frame numbers, "0.xx" coordinates and closing a number early, so that many (not
  # all) actions are valid and the vision path runs.
  for text, bias in (("1", 3.0), ("2", 3.0), ("3", 3.0), ("4", 3.0), ("0", 3.0), (grammar.SEP, 6.0),
                     (grammar.CLOSE, 6.0), (grammar.BBOX_OPEN, 6.0), (grammar.CLIP_HEAD, clip_bias)):
    (i,) = tok.encode(text)
    head = head.at[0, i].set(bias)
  p["lm_head"]["kernel"] = head
  return params


def make_prompts(tok: Tokenizer, config: ModelConfig, n: int, seed: int = 0, questions=None, *,
                 frames: int = NUM_FRAMES, src_hw=SRC_HW, global_hw=GLOBAL_HW, sign_box=SIGN_BOX):
  """Batch of right-padded prompts over random videos: ids, mask, global-view patches, grids, source frames."""
  rng = np.random.default_rng(seed)
  patch, merge = config.vision.patch_size, config.vision.spatial_merge_size
  src = rng.integers(0, 256, size=(n, frames, *src_hw, 3), dtype=np.uint8)
  y0, y1, x0, x1 = sign_box
  src[:, :, y0:y1, x0:x1] = rng.integers(0, 256, size=(n, frames, 1, 1, 3), dtype=np.uint8)
  gv = np.stack([np.asarray(to_patches(resize_frames(jnp.asarray(s), global_hw), patch=patch, merge=merge))
                 for s in src])
  grid = np.array([frames // config.vision.temporal_patch_size, global_hw[0] // patch, global_hw[1] // patch])
  vt = int(grid.prod()) // merge ** 2
  rows = [chat.prompt_ids(tok, (questions or ["What is written?"] * n)[i], vt, chat.TINY_SYSTEM_PROMPT)[0]
          for i in range(n)]
  width = max(len(r) for r in rows) + 3
  ids = np.full((n, width), tok.pad_id, np.int32)
  mask = np.zeros((n, width), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=gv.astype(np.float32),
              video_grid_thw=np.tile(grid, (n, 1)).astype(np.int32), source_frames=src)


def make_setup(rollout: RolloutConfig | None = None, seed: int = 0, **bias):
  tok = Tokenizer.tiny()
  config = tiny_model_config(tok)
  rollout = rollout or RolloutConfig(max_steps=3, max_step_tokens=32, cache_len=512, obs_hw=(56, 56),
                                     max_clip_frames=4, crop_min_px=4)
  env = make_env(config, rollout, tok, NUM_FRAMES)
  return tok, config, biased_params(config, tok, seed, **bias), env
