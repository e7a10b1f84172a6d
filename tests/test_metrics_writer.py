"""Metrics go to stdout (one line), JSONL and TensorBoard event files; a Runner GRPO stage logs every quantity the
issue asks for; a non-finite GRPO loss is skipped with a WARNING line and training goes on.

The TensorBoard files are read back with a TFRecord reader written here from the format (length, masked CRC-32C
of the length, payload, masked CRC-32C of the payload) and tensorboardX's Event proto, so a corrupt or empty
event file fails the test.
"""
import contextlib
import io
import json
import math
import os
import struct

import numpy as np
import pytest

from train_fixtures import small_config
from videor4_jax.train.metrics_writer import MetricsWriter


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(tb_dir):
  """{tag: {step: value}} from every event file under tb_dir, checking each record's framing and CRCs."""
  from tensorboardX.proto import event_pb2
  out = {}
  files = [os.path.join(r, f) for r, _, fs in os.walk(tb_dir) for f in fs if "tfevents" in f]
  assert files, f"no event file under {tb_dir}"
  for path in files:
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (n,), (len_crc,) = struct.unpack_from("<Q", data, pos), struct.unpack_from("<I", data, pos + 8)
      assert len_crc == _masked(_crc32c(data[pos:pos + 8])), f"{path}: bad length CRC at byte {pos}"
      payload = data[pos + 12:pos + 12 + n]
      (data_crc,) = struct.unpack_from("<I", data, pos + 12 + n)
      assert data_crc == _masked(_crc32c(payload)), f"{path}: bad payload CRC at byte {pos}"
      pos += 12 + n + 4
      ev = event_pb2.Event.FromString(payload)
      for v in ev.summary.value:
        out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


def test_writer_stdout_jsonl_and_tensorboard(tmp_path, capsys):
  w = MetricsWriter(str(tmp_path))
  w.write(3, {"loss": 0.5, "clip_frac": np.float32(0.25), "note": "x"}, prefix="rl_d/")
  w.write(4, {"loss": float("nan"), "clip_frac": 0.125}, prefix="rl_d/")
  w.close()
  lines = capsys.readouterr().out.splitlines()
  assert lines == ["[rl_d 3] loss=0.5 clip_frac=0.25 note=x", "[rl_d 4] loss=nan clip_frac=0.125"]
  recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [set(r) for r in recs] == [{"step", "time", "rl_d/loss", "rl_d/clip_frac", "rl_d/note"},
                                    {"step", "time", "rl_d/loss", "rl_d/clip_frac"}]
  assert recs[0]["rl_d/loss"] == 0.5 and recs[0]["rl_d/note"] == "x" and math.isnan(recs[1]["rl_d/loss"])
  # TensorBoard gets the finite scalars only (a NaN would break its plots); strings are not scalars.
  assert read_scalars(tmp_path / "tb") == {"rl_d/loss": {3: 0.5}, "rl_d/clip_frac": {3: 0.25, 4: 0.125}}


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
  """A 2-step GRPO stage (beta > 0, every reward term weighted) whose first update gets NaN advantages."""
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.processing.tokenizer import Tokenizer
  from videor4_jax.rl import grpo
  from videor4_jax.train.curriculum import Runner
  cfg = small_config(tmp_path_factory.mktemp("data"), rl_d=2)
  cfg.curriculum = "rl_d"
  cfg.grpo.beta = 0.04
  cfg.stages.rl_d.rewards.update(w_format=0.2, w_div=0.1, w_rep=0.1, w_cur=1.0)
  workdir = str(tmp_path_factory.mktemp("run"))
  real, calls = grpo.group_advantages, []

  def poisoned(*a, **kw):       # the first rollout batch gets NaN advantages: a non-finite loss
    calls.append(1)
    adv = real(*a, **kw)
    return adv * float("nan") if len(calls) == 1 else adv

  out = io.StringIO()
  mp = pytest.MonkeyPatch()
  mp.setattr(grpo, "group_advantages", poisoned)
  try:
    with contextlib.redirect_stdout(out):
      Runner(cfg, workdir, make_source_fn(cfg.data)).run()
  finally:
    mp.undo()
  recs = [json.loads(line) for line in open(os.path.join(workdir, "logs", "metrics.jsonl"))]
  return workdir, out.getvalue(), recs


def test_runner_grpo_stage_logs_every_quantity(grpo_run):
  workdir, _, recs = grpo_run
  assert [r["step"] for r in recs] == [0, 1]
  want = {"loss", "clip_frac", "kl", "tokens_per_s", "rumination_rate", "actions_per_rollout", "invalid_action_rate",
          "grad_norm", "skipped", "zero_variance_frac", "uninformative", "informative_frac", "sampling_draws"}
  want |= {f"reward/{k}" for k in ("total", "accuracy", "format", "diversity", "representativeness", "curiosity")}
  for r in recs:
    assert {f"rl_d/{k}" for k in want} <= set(r), sorted({f"rl_d/{k}" for k in want} - set(r))
  last = recs[1]
  assert np.isfinite(last["rl_d/loss"]) and last["rl_d/kl"] >= 0 and last["rl_d/tokens_per_s"] > 0
  assert 0 <= last["rl_d/rumination_rate"] <= 1 and 0 <= last["rl_d/invalid_action_rate"] <= 1
  r = {k[len("rl_d/reward/"):]: v for k, v in last.items() if k.startswith("rl_d/reward/")}
  w = dict(accuracy=1.0, format=0.2, diversity=0.1, representativeness=0.1, curiosity=1.0)   # the fixture's weights
  assert r["total"] == pytest.approx(sum(w[k] * r[k] for k in w), abs=1e-5)
  tb = read_scalars(os.path.join(workdir, "logs", "tb"))
  assert {f"rl_d/{k}" for k in want} <= set(tb)
  assert tb["rl_d/loss"] == {1: pytest.approx(last["rl_d/loss"])}       # step 0's NaN loss is not plotted


def test_nan_grpo_loss_is_skipped_with_a_warning(grpo_run):
  _, stdout, recs = grpo_run
  warnings = [line for line in stdout.splitlines() if line.startswith("WARNING")]
  assert warnings == ["WARNING: rl_d step 0: non-finite loss (nan); the update was skipped (1 skipped so far)"]
  assert recs[0]["rl_d/skipped"] == 1 and math.isnan(recs[0]["rl_d/loss"])
  assert recs[1]["rl_d/skipped"] == 0 and np.isfinite(recs[1]["rl_d/loss"])     # training went on
