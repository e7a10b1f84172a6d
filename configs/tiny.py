"""Default config: a tiny Qwen2.5-VL-shaped model on the built-in synthetic text-rich video task (CPU, minutes).

Override any field from the command line: `python train.py --config configs/tiny.py --config.rollout.max_steps=3`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(
      text=dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rms_norm_eps=1e-6, rope_theta=10000.0, mrope_section=(4, 6, 6)),
      vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, in_channels=3, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=128,
                  fullatt_block_indexes=(1,), tokens_per_second=2),
      tie_word_embeddings=True,
  )
  # Static shapes of the rumination loop (videor4_jax.rumination.config.RolloutConfig).
  c.rollout = dict(max_steps=3, max_step_tokens=40, cache_len=512, obs_hw=(112, 112), max_clip_frames=4,
                   crop_margin=0.0, crop_min_px=8, clip_seconds_per_group=1.0, temperature=1.0, top_p=1.0)
  return c
