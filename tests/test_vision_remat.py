"""config.remat also rematerializes the vision blocks: same gradients, and the compiled backward pass no longer
keeps every block's [N, N] masked attention (bench/tpu_aot.py: the 7B GRPO step needed ~180 GB per chip
without it)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.model import vlm
from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig

GRID = np.array([[2, 8, 16]], np.int32)        # 256 patches, 2 frame groups (full blocks: 128 x 128 each)


def _config(remat):
  return ModelConfig(text=TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, mrope_section=(2, 3, 3)),
                     vision=VisionConfig(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                                         fullatt_block_indexes=(3,), out_hidden_size=32),
                     remat=remat)


def _loss(config):
  return lambda params, px: (vlm.encode_vision(config, params, px, GRID) ** 2).sum()


@pytest.fixture(scope="module")
def compiled():
  """Per remat policy: the compiled gradient of the vision tower (one compile each), params and pixels."""
  rng = np.random.default_rng(0)                # random values on the init's shapes (eager init is slow here)
  shapes = jax.eval_shape(lambda: vlm.init_params(_config("none"), jax.random.key(0)))
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
  px = jnp.asarray(rng.standard_normal((int(GRID.prod()), _config("none").vision.patch_dim)), jnp.float32)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, px))
  return {r: jax.jit(jax.grad(_loss(_config(r)))).lower(*abstract).compile() for r in ("none", "full")}, params, px


def test_vision_remat_keeps_gradients(compiled):
  fns, params, px = compiled
  g_none, g_full = fns["none"](params, px), fns["full"](params, px)
  assert jax.tree.structure(g_none) == jax.tree.structure(g_full)
  for a, b in zip(jax.tree.leaves(g_none), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_vision_remat_lowers_backward_memory(compiled):
  fns, _, _ = compiled
  temp = {r: f.memory_analysis().temp_size_in_bytes for r, f in fns.items()}
  n = int(GRID.prod())
  scores = 4 * 2 * n * n * 4                   # f32 attention probabilities of 4 blocks x 2 heads
  assert temp["none"] >= scores, temp          # without remat the backward keeps them all
  assert temp["full"] < temp["none"] - scores / 2, temp
