"""TFDS builders (no TensorFlow needed; array_record files). Importing this package registers all five."""
from videor4_jax.data.builders.m4_vitevqa.builder import M4Vitevqa
from videor4_jax.data.builders.page_sequences.builder import PageSequences
from videor4_jax.data.builders.synthetic_textvideo.builder import SyntheticTextvideo
from videor4_jax.data.builders.video_mcqa.builder import VideoMcqa
from videor4_jax.data.builders.videor4_trajectories.builder import Videor4Trajectories

__all__ = ["M4Vitevqa", "PageSequences", "SyntheticTextvideo", "VideoMcqa", "Videor4Trajectories"]
