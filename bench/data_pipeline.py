"""Data pipeline throughput on this machine: build the synthetic dataset, then time grain batches; and the video
decode time per real-format video against the decode-everything baseline.

  python bench/data_pipeline.py --quick        # small build, a few batches; writes bench/results/data_pipeline.json
  python bench/data_pipeline.py --sections=decode --decode_seconds=10,60,600

Reports examples/s for: generating + encoding synthetic videos (the TFDS build), reading rows from the
array_record source, and the featurized grain pipeline (the featurizer chosen by --featurizer), in-process and
with --workers grain worker processes. Section "decode" (bench/decode_clips.py): seconds per video to sample 16
frames from generated 1280x720 H.264 clips, seek decoder vs decode-everything reference, alternated (ABAB).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # bench/decode_clips.py

_QUICK = flags.DEFINE_bool("quick", False, "small build (32 train rows) and few batches")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 256, "train rows to build (ignored with --quick)")
_BATCHES = flags.DEFINE_integer("batches", 20, "timed batches per setting (ignored with --quick)")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "batch size")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes for the multi-process setting")
_FEATURIZER = flags.DEFINE_enum("featurizer", "auto", ["auto", "answers", "rl"],
                                "auto: the full RL featurizer when available, else answers only")
_OUT = flags.DEFINE_string("out", None, "result JSON (default bench/results/data_pipeline.json)")
_SECTIONS = flags.DEFINE_list("sections", ["pipeline", "decode"], "what to run: pipeline, decode")
_DECODE_SECONDS = flags.DEFINE_list("decode_seconds", ["10", "60", "600"], "clip lengths for the decode section")
_DECODE_RUNS = flags.DEFINE_integer("decode_runs", 5, "timed runs per decoder and clip (alternated, ABAB)")
_KEYINT = flags.DEFINE_integer("keyint", 60, "keyframe interval of the generated clips (frames; 2 s at 30 fps)")


def _time_batches(ds, n: int, batch_size: int) -> dict:
  it = iter(ds)
  t0 = time.perf_counter()
  next(it)  # first batch: includes worker start-up and the first fill of the prefetch buffer
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  dt = time.perf_counter() - t0
  return {"first_batch_s": round(first, 3), "batches": n, "seconds": round(dt, 3),
          "examples_per_s": round(n * batch_size / dt, 1)}


def main(_):
  result = {"host": platform.node(), "cpus": os.cpu_count(), "quick": _QUICK.value}
  if "pipeline" in _SECTIONS.value:
    result.update(pipeline_section())
  if "decode" in _SECTIONS.value:
    import decode_clips
    seconds = [float(x) for x in _DECODE_SECONDS.value]
    if _QUICK.value:     # the 600 s clip's decode-everything runs take minutes
      seconds = [x for x in seconds if x <= 60]
    result["decode"] = decode_clips.run(seconds, runs=_DECODE_RUNS.value, keyint=_KEYINT.value)
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data_pipeline.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(out + ".tmp", out)
  print(json.dumps(result, indent=2))
  if "decode" in result:
    print("decode s/video (seek vs decode-everything): " + ", ".join(
        f"{r['seconds']:g}s clip {r['seek']['median_s']:.3f} vs {r['exact']['median_s']:.3f} ({r['speedup']:.1f}x)"
        for r in result["decode"]["clips"]))


def pipeline_section() -> dict:
  from videor4_jax.data import features, pipeline
  from videor4_jax.data.builders import SyntheticTextvideo, synthetic_textvideo

  quick = _QUICK.value
  n_train, n_batches = (32, 6) if quick else (_NUM_TRAIN.value, _BATCHES.value)
  bs = _BATCH_SIZE.value
  result = {"batch_size": bs}
  with tempfile.TemporaryDirectory() as d:
    cfg = synthetic_textvideo.builder.SyntheticTextvideoConfig(name="bench", num_train=n_train, num_validation=2,
                                                               num_test=2)
    b = SyntheticTextvideo(config=cfg, data_dir=d, file_format="array_record")
    t0 = time.perf_counter()
    b.download_and_prepare()
    build_s = time.perf_counter() - t0
    result["build"] = {"examples": n_train + 4, "seconds": round(build_s, 2),
                       "examples_per_s": round((n_train + 4) / build_s, 1),
                       "bytes_per_video": int(os.path.getsize(next(
                           os.path.join(b.data_dir, f) for f in os.listdir(b.data_dir) if "train" in f)) / n_train)}
    src = pipeline.open_source(b.data_dir, "train")
    t0 = time.perf_counter()
    for i in range(len(src)):
      src[i]
    result["read_rows"] = {"examples_per_s": round(len(src) / (time.perf_counter() - t0), 1)}

    pcfg = pipeline.PipelineConfig(batch_size=bs, max_answers=2, max_answer_bytes=32)
    from configs import tiny
    from videor4_jax.convert.resolve import make_processor
    processor = make_processor(tiny.get_config())      # the default run's tokenizer and video rule
    kind = _FEATURIZER.value
    make_rl = getattr(features, "RlFeaturizer", None)
    if kind == "rl" and make_rl is None:
      raise SystemExit("bench: --featurizer=rl needs features.RlFeaturizer (waits on processing/)")
    if kind == "auto":
      kind = "rl" if make_rl is not None else "answers"
    result["featurizer"] = kind
    for workers in (0, _WORKERS.value):
      c = pipeline.PipelineConfig(**{**pcfg.__dict__, "worker_count": workers})
      feat = make_rl(c, processor) if kind == "rl" else features.AnswersFeaturizer(c)
      result[f"pipeline_workers{workers}"] = _time_batches(pipeline.make_dataset(src, c, feat), n_batches, bs)
  return result


if __name__ == "__main__":
  app.run(main)
