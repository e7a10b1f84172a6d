"""Opening the configured dataset: one function shared by train.py, eval.py and the notebook."""
from __future__ import annotations

from videor4_jax.data import pipeline


def make_source_fn(data_cfg):
  """`data_cfg` is the config's `data` block; returns `(split, dataset=None) -> random-access source`.

  `dataset` (a stage's or eval's `data` setting, e.g. "videor4_trajectories" or "m4_vitevqa/task1_split1") names
  another data set built under the same `data_dir` by `python -m videor4_jax.data.build`; None is `data_cfg.name`.
  The synthetic task is built (deterministically from `data_cfg.seed`) under `data_cfg.data_dir` if absent; any
  other name is a TFDS directory or a builder registered under `data_dir`.
  """
  if data_cfg.name != "synthetic_textvideo":
    if not data_cfg.get("data_dir"):
      raise ValueError(f"config.data.data_dir is empty: set it to the directory the data sets ({data_cfg.name}, and "
                       f"the stages' `data` sets) were built into by `python -m videor4_jax.data.build`")
    return lambda split, dataset=None: pipeline.open_source(dataset or data_cfg.name, split,
                                                            data_dir=data_cfg.data_dir)
  from videor4_jax.data.builders.synthetic_textvideo.builder import SyntheticTextvideo, SyntheticTextvideoConfig
  import hashlib
  import json
  from videor4_jax.data.synthetic import SyntheticConfig
  d = data_cfg
  knobs = dict(d.get("task", None) or {})
  task = SyntheticConfig(**knobs)          # validates the knobs with actionable errors
  # The directory name carries everything the data depend on, so changed knobs never reuse stale data.
  tag = hashlib.sha1(json.dumps(knobs, sort_keys=True, default=list).encode()).hexdigest()[:8] if knobs else "default"
  bcfg = SyntheticTextvideoConfig(name=f"seed{d.seed}_n{d.num_train}_{d.num_validation}_{d.num_test}_{tag}",
                                  seed=d.seed, num_train=d.num_train, num_validation=d.num_validation,
                                  num_test=d.num_test, task=task)
  builder = SyntheticTextvideo(config=bcfg, data_dir=d.data_dir, file_format="array_record")
  builder.download_and_prepare()

  def source(split, dataset=None):
    if dataset not in (None, "synthetic_textvideo"):
      return pipeline.open_source(dataset, split, data_dir=d.data_dir)
    return pipeline.open_source(builder.data_dir, split)
  return source
