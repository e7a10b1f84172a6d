"""SIGTERM (preemption): the run saves a complete checkpoint at the next step boundary and stops (train.py exits
0); the next start resumes there, and the run ends with the metrics and final params of an uninterrupted run
(bitwise; train.py in subprocesses, slow). The guard alone: the handler only sets a flag and is uninstalled
afterwards; with two processes, a SIGTERM to one makes both stop at the same boundary.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from train_fixtures import small_config, train_py_flags
from videor4_jax.train.preemption import Preempted, PreemptionGuard

SFT, RL = 2, 4          # global steps 0..1 are drp_sft, 2..5 rl_d


def _flags(cfg, workdir):
  # No periodic checkpoints inside a stage: the only mid-stage checkpoint is the one the SIGTERM asks for.
  return train_py_flags(cfg, workdir, checkpoint_every=1000)


def _records(workdir):
  with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _metrics(recs):
  return {(r["step"], k): v for r in recs for k, v in r.items()
          if k not in ("time", "step") and "tokens_per_s" not in k}


def _run(cmd, env, term_on_line=None):
  """Runs `cmd`; sends SIGTERM once, at the first stdout line matching `term_on_line`. Returns (rc, stdout)."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
  lines, sent = [], False
  for line in proc.stdout:
    lines.append(line)
    if term_on_line and not sent and re.search(term_on_line, line):
      proc.send_signal(signal.SIGTERM)
      sent = True
  proc.wait(timeout=1200)
  assert term_on_line is None or sent, "".join(lines)[-3000:]
  return proc.returncode, "".join(lines)


@pytest.mark.slow    # three train.py runs: 6 min wall, 2.4 min CPU on the loaded 2-core machine
def test_sigterm_mid_grpo_saves_exits_0_and_resumes_like_an_uninterrupted_run(tmp_path):
  cfg = small_config(tmp_path / "data", drp_sft=SFT, rl_d=RL)
  cmd = [sys.executable, "train.py"]
  env = dict(os.environ, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  rc, out = _run(cmd + _flags(cfg, tmp_path / "a"), env)                # uninterrupted reference
  assert rc == 0, out[-3000:]
  b = cmd + _flags(cfg, tmp_path / "b")
  rc, out = _run(b, env, term_on_line=r"^\[rl_d 2\]")                   # SIGTERM after GRPO's first step
  assert rc == 0, out[-3000:]
  saved = re.findall(r"preempted: checkpoint of global step (\d+) saved", out)
  assert len(saved) == 1 and "received SIGTERM" in out, out[-3000:]
  stop = int(saved[0])
  assert SFT < stop < SFT + RL, stop                                      # inside rl_d
  assert not os.path.exists(tmp_path / "b" / "final_hf")
  ckpts = tmp_path / "b" / "checkpoints"
  steps = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  assert steps == [SFT, stop], os.listdir(ckpts)                          # drp_sft's end, and the SIGTERM one
  assert {"state", "meta", "data_iter"} <= set(os.listdir(ckpts / str(stop)))
  # The interrupted run logged every step up to the one it saved, and nothing after it.
  assert [r["step"] for r in _records(tmp_path / "b")] == list(range(stop))

  rc, out = _run(b, env)                                                # restart: resumes at the saved step
  assert rc == 0, out[-3000:]
  assert f"resuming at stage 'rl_d' step {stop - SFT} (global step {stop})" in out, out[-3000:]
  recs_a, recs_b = _records(tmp_path / "a"), _records(tmp_path / "b")
  assert [r["step"] for r in recs_b] == [r["step"] for r in recs_a] == list(range(SFT + RL))   # no step redone
  want, got = _metrics(recs_a), _metrics(recs_b)
  assert set(want) == set(got) and any(k == "rl_d/kl" and v > 0 for (_, k), v in want.items())
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff
  import jax
  from videor4_jax.convert.hf import from_pretrained
  final = lambda w: from_pretrained(str(w / "final_hf"))[1]               # noqa: E731
  jax.tree.map(np.testing.assert_array_equal, final(tmp_path / "a"), final(tmp_path / "b"))


def test_sigterm_inside_sft_saves_that_step_and_the_restart_resumes_there(tmp_path, capsys):
  """In-process (default suite): a SIGTERM arriving as SFT step 1 ends stops the Runner after that step with a
  checkpoint of it (state, meta, grain iterator); the next Runner resumes at step 2 and runs to the end."""
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.train.curriculum import Runner
  c = small_config(tmp_path / "data", drp_sft=4)
  c.curriculum, c.checkpoint_every = "drp_sft", 1000       # no periodic checkpoint inside the stage

  class SignalledRunner(Runner):
    def after_step(self, stage, step_in_stage, *a):
      if step_in_stage == 2:                                   # the signal lands while step 1 runs
        os.kill(os.getpid(), signal.SIGTERM)
      return super().after_step(stage, step_in_stage, *a)

  source_fn = make_source_fn(c.data)
  with pytest.raises(Preempted) as stopped:
    SignalledRunner(c, str(tmp_path / "w"), source_fn).run()
  assert stopped.value.global_step == 2
  ckpts = tmp_path / "w" / "checkpoints"
  assert sorted(n for n in os.listdir(ckpts) if n.isdigit()) == ["2"]
  assert {"state", "meta", "data_iter"} <= set(os.listdir(ckpts / "2"))
  assert "preempted: checkpoint of global step 2 saved" in capsys.readouterr().out
  Runner(c, str(tmp_path / "w"), source_fn).run()
  assert "resuming at stage 'drp_sft' step 2 (global step 2)" in capsys.readouterr().out
  assert [r["step"] for r in _records(tmp_path / "w")] == [0, 1, 2, 3]         # every step once, none redone


def test_guard_turns_sigterm_into_a_flag_and_restores_the_handler():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append("outer"))
  try:
    with PreemptionGuard() as guard:
      assert not guard.stop_requested()
      os.kill(os.getpid(), signal.SIGTERM)
      assert guard.stop_requested() and not seen                   # the process lives on, the flag is set
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ["outer"]                                       # the handler from before is back
  finally:
    signal.signal(signal.SIGTERM, previous)


_TWO_PROCESSES = textwrap.dedent("""
    import os, signal, sys
    from videor4_jax.parallel import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    from videor4_jax.train.preemption import PreemptionGuard
    with PreemptionGuard() as guard:
      before = guard.stop_requested()
      if int(sys.argv[2]) == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      after = guard.stop_requested()
    print(f"before={before} after={after}", flush=True)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_sigterm_to_one_process_stops_both_at_the_same_boundary(tmp_path):
  """Process 1 alone gets the signal; both learn it at the same `stop_requested()` (an all-gather), none before."""
  script = tmp_path / "two.py"
  script.write_text(_TWO_PROCESSES)
  addr = f"localhost:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen([sys.executable, str(script), addr, str(i)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
    assert "before=False after=True" in o, o[-3000:]
