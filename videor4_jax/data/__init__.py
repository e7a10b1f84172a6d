"""Data: the synthetic text-rich video task, trajectory schema, TFDS builders and grain pipelines.

  glyphs.py        built-in 5x7 bitmap font (no system fonts)
  synthetic.py     SyntheticConfig (difficulty knobs), generate(cfg, seed, index, split) -> SyntheticExample
  schema.py        Trajectory / Step / Action, from_json / from_messages / read_jsonl / write_jsonl, SchemaError
  video_bytes.py   encode_mp4 (lossless libx264rgb), probe_mp4 (build-time integrity check)
  builders/        synthetic_textvideo, m4_vitevqa, videor4_trajectories, page_sequences, video_mcqa (array_record, no TF)
  build.py         python -m videor4_jax.data.build NAME[/CONFIG] --manual_dir DIR --data_dir DIR
  pipeline.py      PipelineConfig, open_source, make_dataset, shard_indices, save_iterator / restore_iterator
  features.py      featurizers (grain MapTransforms) to fixed-shape numpy rows; string <-> padded bytes
"""
