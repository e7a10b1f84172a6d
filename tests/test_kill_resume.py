"""kill -9 of train.py inside the SFT stage, during a checkpoint save and inside the GRPO stage (grpo.beta > 0, so
the resumed stage must restore its KL reference); each run resumes from the newest complete checkpoint, and the
run ends with the same metrics and final params as an uninterrupted run of the same seed (bitwise).

Kill points are chosen from what the run is doing, not from wall time: a metrics line `[drp_sft k]` / `[rl_d k]`
on stdout (k drawn at random), or an Orbax `<step>.orbax-checkpoint-tmp-*` directory appearing (a save in
progress). A persistent compilation cache shared by the runs keeps each restart short.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from train_fixtures import small_config, train_py_flags

pytestmark = pytest.mark.slow

SFT, RL = 8, 4          # steps of drp_sft and rl_d; global steps 0..7 are SFT, 8..11 GRPO
TMP = ".orbax-checkpoint-tmp"


def _flags(cfg, workdir):
  return train_py_flags(cfg, workdir, checkpoint_every=1)


def _final(workdir):
  from videor4_jax.convert.hf import from_pretrained
  return from_pretrained(os.path.join(workdir, "final_hf"))[1]


def _metrics(workdir):
  out = {}
  for line in open(os.path.join(workdir, "logs", "metrics.jsonl")):
    rec = json.loads(line)
    out.update({(rec["step"], k): v for k, v in rec.items() if k not in ("time", "step") and "tokens_per_s" not in k})
  return out


def _saving(ckpt_dir):
  """Steps whose save is in progress (Orbax writes `<step>.orbax-checkpoint-tmp-*`, renamed when complete)."""
  try:
    return sorted(n for n in os.listdir(ckpt_dir) if TMP in n)
  except FileNotFoundError:
    return []


def _run(cmd, env, *, kill_on_line=None, kill_on_save_after=None, ckpt_dir=None):
  """Runs `cmd`; SIGKILLs it at the first stdout line matching `kill_on_line`, or (after a line matching
  `kill_on_save_after`) as soon as a checkpoint save is in progress. Returns (stdout, killed_at or None)."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
  lines, killed, armed = [], [], threading.Event()
  before = set(_saving(ckpt_dir)) if ckpt_dir else set()

  def kill(why):
    if not killed:
      os.kill(proc.pid, signal.SIGKILL)
      killed.append(why)

  def watch_saves():          # polls every 2 ms: a tiny-state async save stays in its tmp dir for ~100 ms
    while proc.poll() is None and not killed:
      new = [n for n in _saving(ckpt_dir) if n not in before] if armed.is_set() else []
      if new:
        kill(f"save {new[0]}")
        return
      time.sleep(0.002)

  watcher = threading.Thread(target=watch_saves, daemon=True)
  if kill_on_save_after:
    watcher.start()
  for line in proc.stdout:
    lines.append(line)
    if kill_on_line and re.search(kill_on_line, line):
      kill(line.split("]")[0] + "]")
    if kill_on_save_after and re.search(kill_on_save_after, line):
      armed.set()
  proc.wait(timeout=1200)
  if kill_on_save_after:
    watcher.join(timeout=5)
  out = "".join(lines)
  if not killed:
    assert proc.returncode == 0, out[-3000:]
  return out, (killed[0] if killed else None)


def test_kill_9_in_sft_during_save_and_in_grpo_then_resume_matches_uninterrupted(tmp_path):
  cfg = small_config(tmp_path / "data", drp_sft=SFT, rl_d=RL)
  cmd = [sys.executable, "train.py"]
  env = dict(os.environ, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  out, _ = _run(cmd + _flags(cfg, tmp_path / "a"), env)             # uninterrupted reference
  assert "resuming" not in out
  rng = np.random.default_rng(0)
  k_sft, k_rl = int(rng.integers(2, 5)), int(rng.integers(SFT + 1, SFT + RL - 1))
  b, ckpt = cmd + _flags(cfg, tmp_path / "b"), tmp_path / "b" / "checkpoints"
  outs, kills = [], []
  for kw in (dict(kill_on_line=rf"^\[drp_sft {k_sft}\]"),                           # 1: inside SFT
             dict(kill_on_save_after=rf"^\[drp_sft {k_sft + 2}\]", ckpt_dir=ckpt),   # 2: during an SFT save
             dict(kill_on_line=rf"^\[rl_d {k_rl}\]"),                               # 3: inside GRPO
             {}):                                                                  # 4: to the end
    o, k = _run(b, env, **kw)
    outs.append(o)
    kills.append(k)
  print("kills:", kills, "k_sft:", k_sft, "k_rl:", k_rl)
  assert kills[0] == f"[drp_sft {k_sft}]" and kills[2] == f"[rl_d {k_rl}]" and kills[3] is None
  assert kills[1] is not None and kills[1].startswith("save "), kills
  # Every restart resumed from a checkpoint of the stage it was killed in (never from scratch).
  resumed = [re.findall(r"resuming at stage '(\w+)' step (\d+)", o) for o in outs]
  print("resumed:", resumed)
  assert [r[0][0] if r else None for r in resumed] == [None, "drp_sft", "drp_sft", "rl_d"], resumed
  assert 0 < int(resumed[3][0][1]) < RL          # mid-GRPO: the KL reference comes from kl_reference/rl_d
  # The save killed midway left its tmp directory; the next run names it and falls back to the previous step.
  lost = int(kills[1].split()[1].split(".")[0])
  assert f"checkpoints/{lost} was never finalized" in outs[2], outs[2][-2000:]
  assert int(resumed[2][0][1]) == lost - 1, (resumed[2], lost)
  want, got = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
  assert any(k == "rl_d/kl" and v > 0 for (_, k), v in want.items())
  assert set(want) == set(got) and len({s for s, _ in want}) == SFT + RL
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff
  import jax
  jax.tree.map(np.testing.assert_array_equal, _final(tmp_path / "a"), _final(tmp_path / "b"))
