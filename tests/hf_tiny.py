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
