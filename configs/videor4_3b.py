"""The Video-R4 recipe for Qwen2.5-VL-3B-Instruct: configs/videor4_7b.py's curriculum and settings, 3B model.

    python train.py --config configs/videor4_3b.py --config.init_from=CKPT --config.data.data_dir=DATA
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("videor4_7b", os.path.join(os.path.dirname(__file__), "videor4_7b.py"))
_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_recipe)

QWEN25_VL_3B = dict(   # Qwen/Qwen2.5-VL-3B-Instruct config.json (the checkpoint's own config.json wins)
    text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
              num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
              rms_norm_eps=1e-6, rope_theta=1000000.0, mrope_section=(16, 24, 24)),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                fullatt_block_indexes=(7, 15, 23, 31), tokens_per_second=2),
    tie_word_embeddings=True,
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)


def get_config():
  return _recipe.get_config(model=QWEN25_VL_3B, workdir="runs/videor4_3b")
