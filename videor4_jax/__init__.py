"""videor4_jax: Video-R4 visual rumination on Qwen2.5-VL, in JAX.

Stable public API:
  from_pretrained(path, dtype=jnp.float32, mesh=None) -> (config, params)   # mesh: each device reads its shard
  save_pretrained(path, config, params)
  forward(config, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
          pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None) -> logits [B, T, V]
  get_rope_index(config, input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                 second_per_grid_ts=None, attention_mask=None) -> (position_ids [3, B, T], rope_deltas [B, 1])
  make_env(config, rollout_config, tokenizer, num_frames) -> RuminationEnv
  rollout(env, params, prompts, key, *, num_generations=1, greedy=False, temperature=None, top_p=None) -> Trajectory
  make_rollout_fn(env, ...) -> jitted (params, prompts, key) -> Trajectory
  make_row_group_rollout_fn(env, devices=None, ...) -> the same, prompts split over devices (CPU: one per core)
"""
import jax.numpy as jnp

from videor4_jax.convert import hf as _hf
from videor4_jax.convert.hf import save_pretrained
from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
from videor4_jax.model.rope_index import get_rope_index
from videor4_jax.model.vlm import forward, init_params
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.env import make_env
from videor4_jax.rumination.rollout import make_rollout_fn, rollout
from videor4_jax.rumination.row_groups import make_row_group_rollout_fn
from videor4_jax.rumination.trajectory import Trajectory


def from_pretrained(path: str, dtype=jnp.float32, mesh=None, **jax_settings):
  """An HF Qwen2.5-VL directory as `(ModelConfig, {"params": ...})` of `dtype`, read lazily from the safetensors.

  mesh=None: on the first device. A ("data", "fsdp", "tensor") `Mesh` (`parallel.sharding.make_mesh`): every
  parameter directly in its sharded layout (`parallel.sharding.param_shardings`); each device's shard is read
  from the memory-mapped files for it and cast on the host, so no whole-model copy exists on the host or on one
  device and each process reads only what its devices hold (`convert.hf.load_params`).
  """
  from videor4_jax.parallel.sharding import param_shardings
  shardings_for = None if mesh is None else (lambda config: param_shardings(config, mesh))
  return _hf.from_pretrained(path, dtype, shardings_for=shardings_for, **jax_settings)


__all__ = ["from_pretrained", "save_pretrained", "forward", "get_rope_index", "init_params", "ModelConfig",
           "TextConfig", "VisionConfig", "RolloutConfig", "make_env", "rollout", "make_rollout_fn",
           "make_row_group_rollout_fn", "Trajectory"]
