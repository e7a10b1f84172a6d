"""kill -9 of train.py at random points (inside SFT and GRPO stages, possibly mid-checkpoint), several times; the
resumed run ends with the same metrics and final params as an uninterrupted run of the same seed (bitwise)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train_fixtures import small_config

pytestmark = pytest.mark.slow


def _flags(cfg, workdir):
  out = [f"--workdir={workdir}", "--config.curriculum=drp_sft,rl_d", "--config.mesh_shape=(1,1,1)"]
  for k in ("data_dir", "num_train", "num_validation", "num_test"):
    out.append(f"--config.data.{k}={cfg.data[k]}")
  for k in ("max_steps", "max_step_tokens", "cache_len"):
    out.append(f"--config.rollout.{k}={cfg.rollout[k]}")
  for st in ("drp_sft", "rl_d"):
    out += [f"--config.stages.{st}.steps={cfg.stages[st].steps}", f"--config.stages.{st}.batch_size=2"]
  out += ["--config.pipeline.max_seq_tokens=512", "--config.grpo.num_generations=2", "--config.log_every=1",
          "--config.checkpoint_every=1", "--config.eval.num_examples=0"]
  return out


def _final(workdir):
  from videor4_jax.convert.hf import from_pretrained
  return from_pretrained(os.path.join(workdir, "final_hf"))[1]


def _metrics(workdir):
  out = {}
  for line in open(os.path.join(workdir, "logs", "metrics.jsonl")):
    rec = json.loads(line)
    out.update({(rec["step"], k): v for k, v in rec.items() if k not in ("time", "step") and "tokens_per_s" not in k})
  return out


def test_kill_9_and_resume_matches_uninterrupted(tmp_path):
  cfg = small_config(tmp_path / "data", drp_sft=12, rl_d=6)
  cmd = [sys.executable, "train.py"]
  env = dict(os.environ, XLA_FLAGS="")           # one CPU device per process
  t0 = time.time()
  done = subprocess.run(cmd + _flags(cfg, tmp_path / "a"), env=env, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  t_run = time.time() - t0            # kill points are fractions of an uninterrupted run: past start-up
  rng = np.random.default_rng(0)
  kills, logs = 0, []
  for attempt in range(4):                    # three kill -9 at random times, then run to the end
    proc = subprocess.Popen(cmd + _flags(cfg, tmp_path / "b"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
      out, _ = proc.communicate(timeout=float(rng.uniform(0.45, 0.85) * t_run) if attempt < 3 else 1200)
    except subprocess.TimeoutExpired:
      os.kill(proc.pid, signal.SIGKILL)
      out, _ = proc.communicate()
      kills += 1
      logs.append(out)
      continue
    assert proc.returncode == 0, out[-3000:]
    logs.append(out)
  assert kills == 3 and os.path.exists(tmp_path / "b" / "report.json")
  assert sum("resuming at stage" in o for o in logs) >= 2, [o[-500:] for o in logs]
  want, got = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
  assert want == got
  import jax
  jax.tree.map(np.testing.assert_array_equal, _final(tmp_path / "a"), _final(tmp_path / "b"))
