"""Tiny random HF Qwen2.5-VL checkpoints for parity tests (built locally, never downloaded)."""
from __future__ import annotations

import copy

import numpy as np

TINY = dict(
    vocab_size=1000, image_token_id=990, video_token_id=991, vision_start_token_id=992, vision_end_token_id=993,
    tie_word_embeddings=False,
    text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                     rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
                     rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, pad_token_id=2),
    vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=64,
                       fullatt_block_indexes=[1], tokens_per_second=2),
)


def make_tiny_hf_model(seed: int = 0, **overrides):
  """A random-init `Qwen2_5_VLForConditionalGeneration` (eager attention, float32, eval mode)."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  cfg = copy.deepcopy(TINY)
  for k, v in overrides.items():
    if isinstance(v, dict):
      cfg[k].update(v)
    else:
      cfg[k] = v
  torch.manual_seed(seed)
  config = Qwen2_5_VLConfig(**cfg)
  config._attn_implementation = "eager"
  model = Qwen2_5_VLForConditionalGeneration(config).eval()
  with torch.no_grad():   # random, not tiny-std weights, so that every path moves the logits
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name or "ln_q" in name:
        p.add_(torch.randn_like(p) * 0.1)
  return model


def make_tiny_hf_checkpoint(path, seed: int = 0, **overrides):
  model = make_tiny_hf_model(seed, **overrides)
  model.save_pretrained(str(path))
  return str(path)


def random_patches(rng: np.random.Generator, grid_thw, patch_dim: int = 3 * 2 * 14 * 14) -> np.ndarray:
  n = int(sum(t * h * w for t, h, w in grid_thw))
  return rng.normal(size=(n, patch_dim)).astype(np.float32)


def greedy_ours(config, params, ids, pixel_values, image_grid_thw, steps: int):
  """Our greedy decode of `steps` tokens after an image prompt [1, T]: prefill into a KV cache, then one jitted
  token at a time with positions from the row's counter (what the rollout does)."""
  import jax
  import jax.numpy as jnp
  from videor4_jax.model import rope_index, vlm
  t = ids.shape[1]
  types = (ids == config.image_token_id).astype(np.int32)
  cache = vlm.init_cache(config, 1, t + steps)
  x = vlm.merge_vision(jnp.asarray(ids), vlm.embed_tokens(config, params, jnp.asarray(ids)),
                       vlm.encode_vision(config, params, pixel_values, image_grid_thw),
                       image_token_id=config.image_token_id, video_token_id=config.video_token_id)
  pos, counter = rope_index.mrope_positions(config, types, None, image_grid_thw=image_grid_thw)
  h, cache = vlm.decode(config, params, x, pos, jnp.ones((1, t), bool), cache, jnp.zeros((1,), jnp.int32))
  tok = jnp.argmax(vlm.logits(config, params, h[:, -1]), -1)

  @jax.jit
  def step(cache, tok, counter, write):
    e = vlm.embed_tokens(config, params, tok[:, None])
    h, cache = vlm.decode(config, params, e, jnp.broadcast_to(counter[None, :, None], (3, 1, 1)),
                          jnp.ones((1, 1), bool), cache, write)
    return cache, jnp.argmax(vlm.logits(config, params, h[:, 0]), -1)

  out = [int(tok[0])]
  write = jnp.full((1,), t, jnp.int32)
  for _ in range(steps - 1):
    cache, tok = step(cache, tok, counter, write)
    counter, write = counter + 1, write + 1
    out.append(int(tok[0]))
  return np.array(out)
