"""Train Video-R4 with the curriculum of the config (default: configs/tiny.py on the synthetic task).

    python train.py                                   # tiny config, CPU, builds the synthetic data if absent
    python train.py --config configs/tiny.py --config.stages.rl_d.steps=40 --workdir runs/exp1

Resumes from the newest complete checkpoint in the work directory (stage and step). Ends with an evaluation
report: `<workdir>/report.json` (held-out accuracy with rumination and in single-pass mode after every stage,
and the final HF-format checkpoint that eval.py accepts).
"""
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config (a get_config() file).")
flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir).")


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)   # Orbax / tfds INFO lines would drown the progress output
  cfg = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or cfg.workdir
  os.makedirs(workdir, exist_ok=True)
  from videor4_jax.processing.tokenizer import Tokenizer
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.train.curriculum import Runner
  tok = Tokenizer.tiny() if cfg.tokenizer == "tiny" else Tokenizer.from_dir(cfg.tokenizer)
  report = Runner(cfg, workdir, make_source_fn(cfg.data), tok).run()
  print("\n==== evaluation report (held-out split) ====")
  print(f"{'stage':<10} {'rumination acc':>15} {'single-pass acc':>16} {'rumination rate':>16} {'invalid':>8}")
  for stage, r in report["stages"].items():
    ru, sp = r["rumination"], r["single_pass"]
    print(f"{stage:<10} {ru['accuracy']:>15.3f} {sp['accuracy']:>16.3f} {ru['rumination_rate']:>16.2f} "
          f"{ru['invalid_action_rate']:>8.2f}")
  print(f"report: {os.path.join(workdir, 'report.json')}   final checkpoint: {report['final_checkpoint']}")


if __name__ == "__main__":
  app.run(main)
