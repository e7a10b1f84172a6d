"""videor4_jax: Video-R4 visual rumination on Qwen2.5-VL, in JAX."""
