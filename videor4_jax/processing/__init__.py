"""Processing shared by the rollout, SFT data and eval: frames, patches, tokenizer, chat template, grammar."""
from videor4_jax.processing.image import preprocess_image, preprocess_video, smart_resize

__all__ = ["preprocess_image", "preprocess_video", "smart_resize"]
