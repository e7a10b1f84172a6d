"""Train Video-R4 with the curriculum of the config (default: configs/tiny.py on the synthetic task).

    python train.py                                   # tiny config, CPU, builds the synthetic data if absent
    python train.py --config configs/tiny.py --config.stages.rl_d.steps=40 --workdir runs/exp1

Multi-process (one process per host, all with the same flags and workdir): `--distributed` lets JAX detect the
cluster (TPU pods, SLURM); on one machine give the coordinator and ranks, e.g. two CPU processes of 4 devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python train.py --coordinator_address=localhost:12355 \
        --num_processes=2 --process_id=0 ...   # and --process_id=1 in the second process

Resumes from the newest complete checkpoint in the work directory (stage and step). On SIGTERM (preemption) every
process saves a checkpoint at the next step boundary and exits 0. Ends with an evaluation
report: `<workdir>/report.json` (held-out accuracy with rumination and in single-pass mode after every stage,
and the final HF-format checkpoint that eval.py accepts) and `<workdir>/learning.png` (accuracy per stage with and
without rumination, GRPO reward per step).
"""
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config (a get_config() file).")
flags.DEFINE_string("workdir", None, "Work directory (default: config.workdir).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs on one machine).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's rank in [0, num_processes).")
flags.DEFINE_string("aot_graphs", "all", "With --aot_topology: the functions to compile (all, or a comma list of "
                    "sft_step, rollout, grpo_step, eval_rollout).")
flags.DEFINE_string("aot_topology", None, "Only check the run fits: compile its functions for this TPU topology "
                    "(e.g. v5p:2x2x4, v5e:4x4; needs the tpu-aot extra) or 'cpu' (this host's devices), print "
                    "per-chip memory and roofline step times, exit 1 if anything does not fit. Reads no weights.")
flags.DEFINE_string("compilation_cache", os.environ.get("VIDEOR4_COMPILATION_CACHE",
                                                     "~/.cache/videor4_jax/jax_compilation_cache"),
                    "Persistent XLA compilation cache directory (a restart reuses the compiled steps); '' = off. "
                    "Default: $VIDEOR4_COMPILATION_CACHE, else ~/.cache/videor4_jax/jax_compilation_cache.")


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)   # Orbax / tfds INFO lines would drown the progress output
  F = flags.FLAGS
  from videor4_jax.train import xla_cache
  if not F.aot_topology:      # an AOT executable for a TPU topology cannot be loaded back here: nothing to cache
    xla_cache.enable(F.compilation_cache)
  from videor4_jax.parallel import distributed
  if F.distributed or F.coordinator_address is not None:
    distributed.initialize(F.coordinator_address, F.num_processes, F.process_id)
  cfg = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or cfg.workdir
  os.makedirs(workdir, exist_ok=True)
  if F.aot_topology:
    return aot_check(cfg, workdir, F.aot_topology, set(config_flags.get_override_values(F["config"])),
                     F.aot_graphs)
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.train.curriculum import Runner
  from videor4_jax.train.preemption import Preempted
  # The processor, model config and their agreement are resolved (and any mismatch raised) before data is built.
  explicit = set(config_flags.get_override_values(F["config"]))
  runner = Runner(cfg, workdir, None, explicit)
  if not distributed.is_primary():        # process 0 builds the synthetic data set if absent, the others wait
    distributed.barrier("data")
  runner.source_fn = make_source_fn(cfg.data)
  if distributed.is_primary():
    distributed.barrier("data")
  try:
    report = runner.run()
  except Preempted:                       # SIGTERM: the Runner saved this step and said so; exit 0, resume later
    return
  if not distributed.is_primary():        # process 0 prints the report
    return
  print("\n==== evaluation report (held-out split) ====")
  print(f"{'stage':<10} {'rumination acc':>15} {'single-pass acc':>16} {'rumination rate':>16} {'invalid':>8}")
  for stage, r in report["stages"].items():
    ru, sp = r["rumination"], r["single_pass"]
    print(f"{stage:<10} {ru['accuracy']:>15.3f} {sp['accuracy']:>16.3f} {ru['rumination_rate']:>16.2f} "
          f"{ru['invalid_action_rate']:>8.2f}")
  from videor4_jax.train import plots
  png = plots.write_for_workdir(workdir)
  print(f"report: {os.path.join(workdir, 'report.json')}   final checkpoint: {report['final_checkpoint']}   "
        f"figure: {png}")


def aot_check(cfg, workdir, topology, explicit, graphs="all"):
  """`--aot_topology`: compile, report, write `<workdir>/aot_<topology>.json`; exit 1 if anything does not fit."""
  import dataclasses
  import json
  import sys
  from videor4_jax.train.aot import compile_run
  report = compile_run(cfg, topology, explicit, graphs)
  out = os.path.join(workdir, f"aot_{topology.replace(':', '_')}.json")
  graphs = [dict(dataclasses.asdict(g), peak_bytes=g.peak_bytes, fits=g.fits) for g in report["graphs"]]
  with open(out + ".tmp", "w") as f:
    json.dump(dict(report, graphs=graphs), f, indent=2)
  os.replace(out + ".tmp", out)
  print(f"aot report: {out}")
  if not report["fits"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
