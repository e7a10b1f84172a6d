"""Issue 11 acceptance.

Default suite (`test_reduced_run_learns_to_crop_on_the_text`): DRP-SFT of the default tiny model on crop
questions, a few minutes of CPU reduced to ~1: before training the greedy rollout's crops never land on the text;
after 120 steps they land on the gold text box (IoU >= 0.5, a real frame) for at least 90% of held-out questions and
the crop is read (accuracy >= 0.5), while the same weights answering in one pass stay near chance.

Default suite (`test_reduced_rl_stage_beats_its_sft_checkpoint`, issue 19): a flawed teacher's crop trajectories,
DRP-SFT then RL_d; GRPO raises held-out accuracy over the SFT checkpoint by a margin outside the seed spread.

Slow (`test_default_config_learns_to_ruminate`, `test_each_rl_stage_beats_its_sft_stage`): `python train.py` on the
default tiny config, one run per seed shared by both tests; (a) held-out accuracy with rumination beats single-pass
by >= 30 points, the report carries rumination and invalid-action rates, and the run leaves learning.png; (b) each RL
stage is >= 10 points above the SFT stage before it. CI runs seed 0 only (one run is ~12 minutes alone on 2 cores);
`VIDEOR4_ALL_SEEDS=1` adds seeds 1 and 2. A target a seed does not meet is a strict xfail with the measured figure
(today none: every seed meets both).
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, "configs")


def _iou(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])
  return inter / max(area(a) + area(b) - inter, 1e-9)


def _landed(questions, task, seed, num_frames):
  """Fraction of questions whose first crop lands on the gold text box (IoU >= 0.5) of a real frame."""
  from videor4_jax.data import synthetic
  hits = []
  for q in questions:
    gold = synthetic.generate(task, seed, int(q["qid"].rsplit("-", 1)[1]), split="test").trajectory.evidence
    crops = [a for a in q["actions"] if a["name"] == "crop" and a["error"] is None]
    hits.append(bool(crops) and 1 <= crops[0]["frame"] <= num_frames
                and _iou(crops[0]["bbox_2d"], gold["boxes"][0]) >= 0.5)
  return float(np.mean(hits))


@pytest.mark.slow   # 2.5 min; the default suite keeps the reduced DRP-SFT -> RL_d run below
def test_reduced_run_learns_to_crop_on_the_text(tmp_path):
  import jax
  import tiny
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.data.synthetic import SyntheticConfig
  from videor4_jax.eval.loop import evaluate
  from videor4_jax.train.context import init_params
  from videor4_jax.train.curriculum import Runner
  cfg = tiny.get_config()
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.num_train, cfg.data.num_validation, cfg.data.num_test = 160, 2, 16
  cfg.data.task.question_types = ("crop",)
  cfg.data.task.confusable_frac = 0.0   # a flawless teacher: this test is about learning to crop and read at all
  cfg.curriculum = "drp_sft"
  cfg.stages.drp_sft.steps = 120
  cfg.mesh_shape = (1, 1, 1)
  cfg.eval.num_examples, cfg.eval.batch_size = 0, 16      # evaluated below, with per-question actions
  cfg.log_every = 40
  source_fn = make_source_fn(cfg.data)
  runner = Runner(cfg, str(tmp_path / "run"), source_fn)
  pcfg = dataclasses.replace(runner.pcfg, batch_size=16)
  task = SyntheticConfig(**cfg.data.task)
  ev = lambda params, mode: evaluate(runner.env, params, runner.processor, source_fn("test"), pcfg, mode=mode, progress=False)

  before = ev(init_params(runner.ctx), "rumination")
  runner.run()
  from videor4_jax.convert.hf import from_pretrained
  _, params = from_pretrained(str(tmp_path / "run" / "final_hf"))
  params = jax.device_put(params, runner.param_shardings)
  after, single = ev(params, "rumination"), ev(params, "single_pass")

  landed_before = _landed(before["questions"], task, cfg.data.seed, cfg.pipeline.num_frames)
  landed_after = _landed(after["questions"], task, cfg.data.seed, cfg.pipeline.num_frames)
  acc, acc_single = after["summary"]["accuracy"], single["summary"]["accuracy"]
  print(f"crops on the text: {landed_before:.2f} -> {landed_after:.2f}; accuracy {acc:.3f} "
        f"(single pass {acc_single:.3f})")
  assert landed_before <= 0.25, before["questions"][:2]
  assert landed_after >= 0.9, [(q["question"], q["actions"]) for q in after["questions"]]
  assert after["summary"]["invalid_action_rate"] == 0.0
  assert acc >= 0.5 and acc - acc_single >= 0.3, (acc, acc_single)


def _reduced_rl_config(tmp_path, seed):
  """Crop questions only, every one naming a neighbouring sign that the flawed teacher crops 75% of the time:
  DRP-SFT learns the teacher's mixture, RL_d (GRPO, dynamic sampling) is left to fix it."""
  import tiny
  cfg = tiny.get_config()
  cfg.seed = cfg.data.seed = seed
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.num_train, cfg.data.num_validation, cfg.data.num_test = 160, 2, 16
  cfg.data.task.question_types = ("crop",)
  cfg.data.task.confusable_frac = 1.0
  cfg.curriculum = "drp_sft,rl_d"
  cfg.stages.drp_sft.steps = 120
  cfg.stages.rl_d.steps = REDUCED_RL_STEPS
  cfg.stages.rl_d.lr = 5e-4            # the measured runs below; the default config's RL stages use 2e-4 for 30 steps
  cfg.mesh_shape = (1, 1, 1)
  cfg.eval.num_examples, cfg.eval.batch_size = 16, 16
  cfg.log_every = 40
  return cfg


REDUCED_RL_STEPS = 15


def test_reduced_rl_stage_beats_its_sft_checkpoint(tmp_path):
  """GRPO goes beyond its demonstrations: after DRP-SFT on a flawed teacher's trajectories the greedy policy crops
  the neighbouring sign, and RL_d raises held-out accuracy over that SFT checkpoint by a margin well outside the
  seed-to-seed spread (measured below)."""
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.train.curriculum import Runner
  cfg = _reduced_rl_config(tmp_path, 0)
  report = Runner(cfg, str(tmp_path / "run"), make_source_fn(cfg.data)).run()
  acc = {s: report["stages"][s]["rumination"]["accuracy"] for s in ("drp_sft", "rl_d")}
  print(f"held-out accuracy: DRP-SFT {acc['drp_sft']:.3f} -> RL_d {acc['rl_d']:.3f}")
  assert acc["rl_d"] - acc["drp_sft"] >= REDUCED_RL_MARGIN, acc


# Measured (16 held-out questions, this config): DRP-SFT -> RL_d 0.250 -> 0.562 (+31 points, seed 0: the test),
# 0.000 -> 0.500 (+50, seed 1); ~15 minutes each on the loaded 2-core machine (load average ~10). RL stages
# without a learning signal moved accuracy by -19 to +2 points on the default task before (README, Results), and
# one question is 6 points here: 25 points (4 questions) is outside both.
REDUCED_RL_MARGIN = 0.25


SEEDS = (0, 1, 2) if os.environ.get("VIDEOR4_ALL_SEEDS") == "1" else (0,)
# Measured with the default config (docs/RESULTS.md), in points: (a) rumination - single pass after RL_c;
# (b) RL_d - DRP-SFT, RL_c - CRP-SFT.
GAPS = {0: 70.8, 1: 54.2, 2: 75.0}
RL_GAINS = {0: (25.0, 64.6), 1: (43.8, 47.9), 2: (25.0, 72.9)}
_RUNS = {}


def _default_run(tmp_path_factory, seed):
  """(workdir, report stages) of `python train.py` on the default config with data and init seed `seed`, run
  once per seed for both tests below."""
  if seed not in _RUNS:
    d = tmp_path_factory.mktemp(f"default_seed{seed}")
    # The README's command on this machine: one CPU device, not the 8 fake ones tests/conftest.py sets up for the
    # sharding tests (the tiny config's batch of 4 prompts does not split over 8 rows shards, a clear error).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "train.py", f"--workdir={d}", f"--config.data.data_dir={d}/data",
                           f"--config.data.seed={seed}", f"--config.seed={seed}"],
                          capture_output=True, text=True, timeout=3600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _RUNS[seed] = d, json.loads((d / "report.json").read_text())["stages"]
  return _RUNS[seed]


def _case(seed, met: bool, measured: str):
  """`seed` as a test case; a strict xfail naming the measured figure where the target is not met yet, so CI says
  when it starts passing."""
  if met:
    return seed
  return pytest.param(seed, marks=pytest.mark.xfail(strict=True, reason=(
      f"target not met yet on seed {seed}: measured {measured} (docs/RESULTS.md)")))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [_case(s, GAPS[s] >= 30, f"rumination - single pass {GAPS[s]:.1f} points, target 30")
                                  for s in SEEDS])
def test_default_config_learns_to_ruminate(tmp_path_factory, seed):
  """(a): rumination >= single pass + 30 points after the last stage (measured: GAPS)."""
  workdir, stages = _default_run(tmp_path_factory, seed)
  last = list(stages)[-1]
  ru, sp = stages[last]["rumination"], stages[last]["single_pass"]
  assert (workdir / "learning.png").stat().st_size > 0
  assert all("rumination_rate" in r["rumination"] and "invalid_action_rate" in r["rumination"]
             for r in stages.values())
  assert ru["accuracy"] - sp["accuracy"] >= 0.30, stages


@pytest.mark.slow
@pytest.mark.parametrize("seed", [_case(s, min(RL_GAINS[s]) >= 10, "RL_d {:+.1f}, RL_c {:+.1f} points over their "
                                        "SFT stages, target +10 each".format(*RL_GAINS[s])) for s in SEEDS])
def test_each_rl_stage_beats_its_sft_stage(tmp_path_factory, seed):
  """(b): every RL stage >= the SFT checkpoint it started from + 10 points (issue 19)."""
  _, stages = _default_run(tmp_path_factory, seed)
  for rl, sft in (("rl_d", "drp_sft"), ("rl_c", "crp_sft")):
    assert stages[rl]["rumination"]["accuracy"] - stages[sft]["rumination"]["accuracy"] >= 0.10, (rl, stages)
