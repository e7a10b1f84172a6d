"""Evaluate a checkpoint on a dataset split, with or without rumination; write a results JSON and a trace page.

    python eval.py --checkpoint runs/tiny/final_hf --dataset synthetic_textvideo --split test \
        --mode rumination --output runs/tiny/eval_test.json [--config configs/tiny.py] [--trace_dir DIR]

Generic video multiple-choice QA (a `video_mcqa` build, see videor4_jax/data/builders/video_mcqa/builder.py):
    python eval.py --checkpoint DIR --dataset video_mcqa/embedded --config.data.data_dir=DATA --split test \
        --mcqa --mode single_pass --output results.json

--checkpoint: an HF Qwen2.5-VL directory (config.json, safetensors weights, tokenizer.json, preprocessor_config.json,
a chat template), as the hub ships it or as train.py writes to <workdir>/final_hf. The tokenizer, vision settings
and model config are the directory's; --config gives the data, pipeline and rollout settings.
--dataset: "synthetic_textvideo" (built from the config's data settings if absent) or a TFDS
directory / registered name under --config.data.data_dir. The results JSON schema is in videor4_jax/eval/loop.py.
"""
import json
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config giving pipeline and rollout shapes.")
flags.DEFINE_string("checkpoint", None, "HF-format checkpoint directory.", required=True)
flags.DEFINE_string("dataset", "synthetic_textvideo", "Dataset name or directory.")
flags.DEFINE_string("split", "test", "Split.")
flags.DEFINE_enum("mode", "rumination", ["rumination", "single_pass"], "Evaluation mode.")
flags.DEFINE_string("output", None, "Results JSON path.", required=True)
flags.DEFINE_bool("mcqa", False, "Multiple-choice QA (a video_mcqa dataset): options in the prompt, the option "
                  "letter scored.")
flags.DEFINE_integer("num_examples", None, "Evaluate only the first N questions.")
flags.DEFINE_string("trace_dir", None, "Write an HTML trace report of the first --num_traces questions here.")
flags.DEFINE_integer("num_traces", 8, "Questions in the trace report.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")
flags.DEFINE_bool("screenshot", False, "Also render the trace page to trace_dir/screenshot.png (headless Chromium).")


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)   # Orbax / tfds INFO lines would drown the progress output
  import jax.numpy as jnp

  from videor4_jax.convert import resolve
  from videor4_jax.convert.hf import load_params
  from videor4_jax.data import pipeline
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.eval.loop import evaluate
  from videor4_jax.rumination import config as rollout_config
  from videor4_jax.rumination.env import make_env

  cfg = flags.FLAGS.config
  ckpt = flags.FLAGS.checkpoint
  missing = [f for f in ("config.json", "tokenizer.json", "preprocessor_config.json")
             if not os.path.isfile(os.path.join(ckpt, f))]
  if not any(f.endswith(".safetensors") for f in (os.listdir(ckpt) if os.path.isdir(ckpt) else [])):
    missing.append("model.safetensors (or model-*.safetensors + model.safetensors.index.json)")
  if missing:
    raise SystemExit(f"eval.py: {ckpt} is not a complete HF Qwen2.5-VL directory; missing: {', '.join(missing)}")
  # Tokenizer, chat template, vision settings and model config all from the checkpoint directory; checked against
  # each other and the rollout settings before any data is read or anything compiled.
  explicit = set(config_flags.get_override_values(flags.FLAGS["config"]))
  with cfg.unlocked():
    cfg.model.dtype = cfg.model.param_dtype = flags.FLAGS.dtype
  processor = resolve.make_processor(cfg, ckpt, explicit)
  config = resolve.make_model_config(cfg, processor, ckpt, explicit)
  rollout_cfg = rollout_config.from_config(cfg.rollout.to_dict(), row_shards=1)   # one device, rows unsharded
  resolve.check_compatible(config, processor, rollout_cfg)
  # Evaluation runs on one device: each parameter is read lazily from the mmapped files, cast on the host and
  # placed on it (convert/hf.load_params; shardings=None), so no second whole-model copy exists on the host.
  params = load_params(ckpt, config, jnp.dtype(flags.FLAGS.dtype), shardings=None)
  if flags.FLAGS.dataset != "synthetic_textvideo":
    cfg.data.name = flags.FLAGS.dataset
  source = make_source_fn(cfg.data)(flags.FLAGS.split)
  pcfg = pipeline.PipelineConfig(**{**cfg.pipeline.to_dict(), "batch_size": cfg.eval.batch_size})
  env = make_env(config, rollout_cfg, processor.tokenizer, pcfg.num_frames)
  results, kept = evaluate(env, params, processor, source, pcfg, mode=flags.FLAGS.mode,
                           num_examples=flags.FLAGS.num_examples, keep_batches=True, mcqa=flags.FLAGS.mcqa)
  os.makedirs(os.path.dirname(os.path.abspath(flags.FLAGS.output)), exist_ok=True)
  tmp = flags.FLAGS.output + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, flags.FLAGS.output)
  s = results["summary"]
  print(f"{'mode':<12} {'questions':>9} {'accuracy':>9} {'ANLS':>7} {'rumination':>11} {'actions/q':>10} {'invalid':>8}")
  print(f"{s['mode']:<12} {s['num_questions']:>9} {s['accuracy']:>9.3f} {s['anls']:>7.3f} {s['rumination_rate']:>11.2f} "
        f"{s['actions_per_question']:>10.2f} {s['invalid_action_rate']:>8.2f}")
  if flags.FLAGS.trace_dir:
    from videor4_jax.eval.trace_records import trace_records
    from videor4_jax.eval.trace import write_trace_report
    recs = trace_records(kept, results["questions"], processor.tokenizer, env, flags.FLAGS.num_traces)
    page = write_trace_report(flags.FLAGS.trace_dir, recs)
    print("trace:", page)
    if flags.FLAGS.screenshot:
      from videor4_jax.eval.trace import screenshot
      print("screenshot:", screenshot(page, os.path.join(flags.FLAGS.trace_dir, "screenshot.png")))


if __name__ == "__main__":
  app.run(main)
