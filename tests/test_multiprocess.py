"""Multi-process training: two local processes x 4 CPU devices (jax.distributed, gloo collectives) run the same
training steps as one process x 8 devices, on one (8, 1, 1) mesh: bitwise the same metrics and final params.

Both runs use gloo for the cross-device reductions. A one-process run with XLA's in-process CPU collectives sums
the gradient all-reduce in another order: measured against it, SFT metrics differ in the last float32 bit
(grad_norm 5.742311477 vs 5.742311000), GRPO grad_norm by 5e-5 relative, and Adam turns a GRPO step whose
gradient is pure rounding noise (norm 7e-9, all groups zero-variance) into final params 1.6e-4 apart.

The fast tests check the pieces a multi-process run is made of (which rows each process reads, global arrays
from process-local rows, the init flags); the slow test runs train.py both ways and compares the metrics, the
final params, the evaluation report and the checkpoint layout.
"""
import json
import os
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from train_fixtures import small_config
from videor4_jax.data import pipeline
from videor4_jax.parallel import distributed
from videor4_jax.parallel.sharding import batch_sharding, make_mesh


# ---- pieces (default suite) ----------------------------------------------------------------------------------------
class _Id(grain.transforms.Map):
  def map(self, r):
    return {"x": np.array(r)}


@pytest.mark.parametrize("procs", [2, 4])
def test_process_rows_of_global_batches_tile_the_single_process_stream(procs):
  """Process p's stream (rows [p*B/P, (p+1)*B/P) of each global batch) concatenated over p is the one-process
  stream, batch by batch, across epoch boundaries (10 records, B = 4)."""
  cfg = pipeline.PipelineConfig(batch_size=4, seed=3)
  one = iter(pipeline.make_dataset(list(range(10)), cfg, _Id(), shard=grain.sharding.NoSharding()))
  b = 4 // procs
  parts = [iter(pipeline.make_dataset(list(range(10)), cfg, _Id(), shard=grain.sharding.NoSharding(),
                                      rows=(p * b, (p + 1) * b))) for p in range(procs)]
  seen = []
  for _ in range(6):
    want = next(one)["x"]
    got = np.concatenate([next(it)["x"] for it in parts])
    np.testing.assert_array_equal(got, want)
    seen += want.tolist()
  assert sorted(seen[:8]) != list(range(8))        # shuffled, not the identity order
  assert sorted(seen[:10]) == list(range(10))      # first epoch: every record once


def test_rows_needs_unsharded_repeating_stream():
  cfg = pipeline.PipelineConfig(batch_size=4)
  with pytest.raises(ValueError, match="NoSharding"):
    pipeline.make_dataset(list(range(8)), cfg, _Id(), rows=(0, 2))
  with pytest.raises(ValueError, match="repeating"):
    pipeline.make_dataset(list(range(8)), pipeline.PipelineConfig(batch_size=4, num_epochs=1), _Id(),
                          shard=grain.sharding.NoSharding(), rows=(0, 2))
  with pytest.raises(ValueError, match=r"0 <= lo < hi <= batch_size=4"):
    pipeline.make_dataset(list(range(8)), cfg, _Id(), shard=grain.sharding.NoSharding(), rows=(2, 6))


def test_process_rows_and_to_global_on_one_process():
  mesh = make_mesh((8, 1, 1))
  assert distributed.process_rows(batch_sharding(mesh, 1), (16,)) == (0, 16)
  x = np.arange(3 * 16 * 5).reshape(3, 16, 5)
  g = distributed.to_global(batch_sharding(mesh, 3, 1), x, 16, axis=1)
  assert g.shape == (3, 16, 5) and len(g.addressable_shards) == 8
  np.testing.assert_array_equal(distributed.to_host(g), x)
  with pytest.raises(ValueError, match=r"holds rows \[0, 16\) of axis 0 but was given 8 rows"):
    distributed.to_global(batch_sharding(mesh, 1), np.zeros(8), 16)


def test_initialize_rejects_partial_arguments():
  with pytest.raises(ValueError, match="together"):
    distributed.initialize("localhost:1234", 2)
  with pytest.raises(ValueError, match=r"process_id=2 outside \[0, num_processes=2\)"):
    distributed.initialize("localhost:1234", 2, 2)


# ---- two processes vs one (slow) -----------------------------------------------------------------------------------
SFT, RL = 2, 2


def _flags(cfg, workdir):
  out = [f"--workdir={workdir}", "--config.curriculum=drp_sft,rl_d", "--config.mesh_shape=(8,1,1)"]
  for k in ("data_dir", "num_train", "num_validation", "num_test"):
    out.append(f"--config.data.{k}={cfg.data[k]}")
  for k in ("max_steps", "max_step_tokens", "cache_len"):
    out.append(f"--config.rollout.{k}={cfg.rollout[k]}")
  for st in ("drp_sft", "rl_d"):      # global batches of 8 (SFT) and 8 prompts x 2 generations (GRPO)
    out += [f"--config.stages.{st}.steps={cfg.stages[st].steps}", f"--config.stages.{st}.batch_size=8"]
  out += ["--config.pipeline.max_seq_tokens=512", "--config.grpo.num_generations=2", "--config.grpo.beta=0.04",
          "--config.log_every=1", "--config.checkpoint_every=1", "--config.eval.num_examples=4",
          "--config.eval.batch_size=8"]
  return out


def _metrics(workdir):
  recs = [json.loads(line) for line in open(os.path.join(workdir, "logs", "metrics.jsonl"))]
  return recs, {(r["step"], k): v for r in recs for k, v in r.items() if k != "time" and "tokens_per_s" not in k}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_4_devices_train_like_one_process_of_8(tmp_path):
  cfg = small_config(tmp_path / "data", drp_sft=SFT, rl_d=RL)
  cmd = [sys.executable, "train.py"]
  one = subprocess.run(cmd + _flags(cfg, tmp_path / "one") + [
      f"--coordinator_address=localhost:{_free_port()}", "--num_processes=1", "--process_id=0"],
      capture_output=True, text=True, timeout=1800, env=dict(os.environ,
                                                              XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert one.returncode == 0, one.stderr[-3000:]
  port = _free_port()
  env4 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(cmd + _flags(cfg, tmp_path / "two") + [
      f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      env=env4, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=1800)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o[-3000:]
  # Process 0 logged; process 1 printed no metrics lines (it computed the same global values).
  assert "[drp_sft 0]" in outs[0] and "[drp_sft 0]" not in outs[1] and "[rl_d" not in outs[1]
  recs1, want = _metrics(tmp_path / "one")
  recs2, got = _metrics(tmp_path / "two")
  train_steps = lambda recs: [r["step"] for r in recs if any(k.startswith(("drp_sft/", "rl_d/")) for k in r)]
  assert train_steps(recs2) == train_steps(recs1) == list(range(SFT + RL))        # one line per step
  assert [r["step"] for r in recs2] == [r["step"] for r in recs1]                 # and the same eval lines
  assert set(want) == set(got) and any(k == "rl_d/kl" and v > 0 for (_, k), v in want.items())
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  print("metric differences (1 process x 8 vs 2 x 4):", diff or "none (bitwise equal)")
  assert not diff, diff
  # Orbax saved collectively: each process wrote its own part of every checkpoint.
  last = os.path.join(tmp_path / "two", "checkpoints", str(SFT + RL), "state")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(last)), os.listdir(last)
  # Evaluation after each stage (every process evaluates, process 0 writes the report): the same results.
  rep1, rep2 = (json.load(open(tmp_path / w / "report.json")) for w in ("one", "two"))
  assert set(rep1["stages"]) == {"drp_sft", "rl_d"} and rep1["stages"] == rep2["stages"]
  assert rep1["stages"]["rl_d"]["rumination"]["num_questions"] == 4
  from videor4_jax.convert.hf import from_pretrained
  _, p1 = from_pretrained(str(tmp_path / "one" / "final_hf"))
  _, p2 = from_pretrained(str(tmp_path / "two" / "final_hf"))
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
