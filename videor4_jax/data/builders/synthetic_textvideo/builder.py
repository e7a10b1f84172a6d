"""`synthetic_textvideo`: the built-in synthetic text-rich video task (data/synthetic.py) as a TFDS dataset.

Each row is one question: the video as lossless mp4 bytes (video_bytes.encode_mp4), the question, answers, the
gold trajectory JSON (schema.Trajectory; kind "deliberate" or "compositional"), and the question type. RL
training reads the same rows and ignores the trajectory. Splits train/validation/test are disjoint streams of
the generator (the split name enters the seed). The config carries the seed, split sizes and the task knobs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
import tqdm

from videor4_jax.data import synthetic, video_bytes
from videor4_jax.data.builders import common


@dataclasses.dataclass(eq=False)
class SyntheticTextvideoConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 2000
  num_validation: int = 200
  num_test: int = 200
  task: synthetic.SyntheticConfig = dataclasses.field(default_factory=synthetic.SyntheticConfig)
  fps: int = 2


class SyntheticTextvideo(tfds.core.GeneratorBasedBuilder):
  name = "synthetic_textvideo"
  # tfds finds README/checksums next to the code; an editable install can confuse its lookup, so say where.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      SyntheticTextvideoConfig(name="default", description="2x2 grid, 8 frames of 224x224, 10 digit glyphs"),
      SyntheticTextvideoConfig(name="tiny", description="for tests: 16/4/4 examples",
                               num_train=16, num_validation=4, num_test=4),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg: SyntheticTextvideoConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=common.video_qa_features(
            question_type=tfds.features.Text(),
            num_frames=tfds.features.Scalar(dtype=np.int32),
        ),
        metadata=tfds.core.MetadataDict(seed=cfg.seed, task=dataclasses.asdict(cfg.task)))

  def _split_generators(self, dl_manager):
    cfg: SyntheticTextvideoConfig = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
            "test": self._generate_examples("test", cfg.num_test)}

  def _generate_examples(self, split: str, n: int):
    cfg: SyntheticTextvideoConfig = self.builder_config
    log = common.SkipLog(self, split)
    for i in tqdm.tqdm(range(n), desc=f"synthetic_textvideo/{split}", unit="ex"):
      ex = synthetic.generate(cfg.task, cfg.seed, i, split=split)
      t = ex.trajectory
      log.kept += 1
      yield t.qid, {"video": video_bytes.encode_mp4(ex.frames_fhw3, fps=cfg.fps), "video_id": t.video_id,
                    "qid": t.qid, "question": t.question, "answers": list(t.answers), "kind": t.kind,
                    "trajectory": t.dumps(), "question_type": ex.question_type,
                    "num_frames": cfg.task.num_frames}
    log.close()
