"""Qwen2.5-VL-7B (Qwen/Qwen2.5-VL-7B-Instruct config.json values) for the Video-R4 paper curriculum.

Weights are loaded from a local HF directory (`--config.init_from=/path/to/Qwen2.5-VL-7B-Instruct`); nothing is
downloaded.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""   # local HF checkpoint directory
  c.model = dict(
      text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                rms_norm_eps=1e-6, rope_theta=1000000.0, mrope_section=(16, 24, 24)),
      vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=3584,
                  fullatt_block_indexes=(7, 15, 23, 31), tokens_per_second=2),
      tie_word_embeddings=False,
      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
      bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
      dtype="bfloat16", param_dtype="float32", scan_layers=True, remat="full",
  )
  # training settings: added by train/ (curriculum stages, optimizer, rollout shapes).
  return c
