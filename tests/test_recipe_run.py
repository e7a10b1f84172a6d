"""configs/videor4_7b.py end to end on 8 CPU devices, changed by command-line flags only: model dims shrunk to a
tiny real-format checkpoint (real vocabulary, real chat template, HF-saved sharded bf16), shapes shrunk for CPU,
data built by `python -m videor4_jax.data.build` from the official M4-ViteVQA annotation layout and a
trajectories file. Every stage runs 2 steps with the config's mesh axes (FSDP over all 8 devices) and evaluates."""
import json
import os
import re
import subprocess
import sys

import pytest

from fixtures_data import build_real_format_data
from qwen_real import make_real_format_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny checkpoint's architecture (tests/qwen_real.py TINY_REAL), given as flags: the checkpoint's config.json
# must agree with every one of them (an explicit flag that disagrees is an error, convert/resolve.py).
MODEL_FLAGS = {
    "model.text.vocab_size": 151936, "model.text.hidden_size": 64, "model.text.intermediate_size": 128,
    "model.text.num_hidden_layers": 2, "model.text.num_attention_heads": 4, "model.text.num_key_value_heads": 2,
    "model.text.max_position_embeddings": 4096, "model.text.mrope_section": "(2,3,3)",
    "model.vision.depth": 2, "model.vision.hidden_size": 32, "model.vision.intermediate_size": 64,
    "model.vision.num_heads": 2, "model.vision.out_hidden_size": 64, "model.vision.fullatt_block_indexes": "(1,)",
    "model.tie_word_embeddings": True}
# CPU shapes: 4 frames of 112x112 (a 56x56 global view), 56x56 observations, 2 rumination steps of 16 tokens.
SHAPE_FLAGS = {
    "processor_overrides.video_max_pixels": 56 * 56, "pipeline.num_frames": 4, "pipeline.source_hw": "(112,112)",
    "pipeline.max_prompt_tokens": 256, "pipeline.max_seq_tokens": 512, "pipeline.obs_hw": "(56,56)",
    "pipeline.max_observations": 2, "pipeline.max_clip_frames": 4, "rollout.max_steps": 2,
    "rollout.max_step_tokens": 16, "rollout.cache_len": 512, "rollout.obs_hw": "(56,56)",
    "rollout.max_clip_frames": 4, "rollout.crop_min_px": 8, "grpo.num_generations": 2,
    "eval.batch_size": 8, "eval.num_examples": 8, "log_every": 1}


# A device late by this long is stuck, not slow: every collective of these programs takes milliseconds.
COLLECTIVE_TIMEOUT_S = 300
_ABORT = re.compile(r"Termination timeout for `(all[- ]\w+|reduce[- ]scatter|collective[- ]permute)[^`]*` "
                    r"of \d+ seconds exceeded.*?only \d+ of them arrived on time")


def is_xla_cpu_collective_abort(stderr: str) -> bool:
  """The process ended because XLA:CPU's in-process rendezvous waited past its terminate timeout."""
  return _ABORT.search(stderr) is not None


def _abort_lines(stderr: str) -> str:
  return " | ".join(m.group(0)[:200] for m in _ABORT.finditer(stderr))


def run_resuming_once(cmd, env, timeout=3000) -> subprocess.CompletedProcess:
  """Runs `cmd`; after an XLA:CPU collective abort (only), runs it once more: train.py resumes from the workdir's
  newest checkpoint, as after a preemption. XLA:CPU's in-process collectives, 8 devices on 2 cores, can leave one
  device in a collective that the other 7 are not in, never to come (docs/DESIGN.md, "8 CPU devices"); a deadlock
  of our own program would come back at the same step and fail the second run too."""
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  if r.returncode != 0 and is_xla_cpu_collective_abort(r.stderr):
    print("XLA:CPU collective abort, resuming:", _abort_lines(r.stderr), file=sys.stderr)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return r


# 6.5 min; the default suite compiles this config's functions (test_recipe.py) and runs sharded steps
@pytest.mark.slow
def test_videor4_7b_recipe_runs_every_stage_on_8_devices(tmp_path, qwen_tokenizer_dir):
  ckpt = make_real_format_checkpoint(str(tmp_path / "Qwen2.5-VL-tiny"), qwen_tokenizer_dir)
  data_dir = build_real_format_data(tmp_path)
  flags = {**MODEL_FLAGS, **SHAPE_FLAGS, "init_from": ckpt, "data.data_dir": data_dir}
  for stage in ("drp_sft", "rl_d", "crp_sft", "rl_c"):
    flags[f"stages.{stage}.steps"], flags[f"stages.{stage}.batch_size"] = 2, 8
  cmd = [sys.executable, "train.py", "--config", "configs/videor4_7b.py", "--workdir", str(tmp_path / "run")]
  cmd += [f"--config.{k}={v}" for k, v in flags.items()]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                                   f"--xla_cpu_collective_call_terminate_timeout_seconds={COLLECTIVE_TIMEOUT_S}")
  r = run_resuming_once(cmd, env)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
  with open(tmp_path / "run" / "report.json") as f:
    report = json.load(f)
  assert list(report["stages"]) == ["drp_sft", "rl_d", "crp_sft", "rl_c"]
  for stage, res in report["stages"].items():
    assert res["rumination"]["num_questions"] == 3, (stage, res)       # the built test split's 3 questions
    assert res["single_pass"]["num_questions"] == 3
    for mode in ("rumination", "single_pass"):         # each question's record, as eval/loop.py makes it
      lines = [json.loads(x) for x in open(tmp_path / "run" / "eval" / f"{stage}_{mode}.jsonl")]
      assert len(lines) == 3 and len({q["qid"] for q in lines}) == 3, (stage, mode, lines)
      assert sum(q["accuracy"] for q in lines) / 3 == pytest.approx(res[mode]["accuracy"]), (stage, mode)
  logged = [json.loads(line) for line in open(tmp_path / "run" / "logs" / "metrics.jsonl")]
  for stage in ("drp_sft", "rl_d", "crp_sft", "rl_c"):
    assert any(f"{stage}/loss" in m for m in logged), stage
  final = tmp_path / "run" / "final_hf"
  with open(final / "config.json") as f:
    assert json.load(f)["text_config"]["vocab_size"] == 151936
  with open(final / "tokenizer.json") as a, open(os.path.join(ckpt, "tokenizer.json")) as b:
    assert json.load(a) == json.load(b)                                  # the checkpoint's own tokenizer


# XLA:CPU's abort as CI printed it (stop 29), and errors that must not be taken for it.
_CI_ABORT = (
    "F1203 12:51:59.805540   14247 rendezvous.cc:161] [id=3] Termination timeout for `all gather RendezvousKey{"
    "run_id=RunId: -23391235, global_devices=[0, 1, 2, 3, 4, 5, 6, 7], num_local_participants=8, "
    "collective_op_kind=cross_module, op_id=141}` of 1200 seconds exceeded. Exiting to ensure a consistent program "
    "state. Expected 8 threads to join the rendezvous, but only 7 of them arrived on time.\n")


@pytest.mark.parametrize("stderr,abort", [
    (_CI_ABORT, True),
    (_CI_ABORT.replace("all gather", "all reduce").replace("7 of them", "1 of them"), True),
    ("E1203 rendezvous.cc:98] This thread has been waiting for `all gather ...` for 20 seconds and may be stuck. "
     "Expected 8 threads to join the rendezvous, but not all of them arrived on time.", False),   # a warning only
    ("Traceback ...\nValueError: config.rollout.max_steps=0 must be >= 1\n", False),
    ("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", False),
])
def test_only_xla_cpu_collective_aborts_are_resumed(stderr, abort):
  assert is_xla_cpu_collective_abort(stderr) is abort


_FAKE_RUN = """
import os, sys
marker = sys.argv[1]
runs = int(open(marker).read()) + 1 if os.path.exists(marker) else 1
open(marker, "w").write(str(runs))
if runs <= int(sys.argv[2]):
  sys.stderr.write(sys.argv[3])
  sys.exit(134)
print("finished on run", runs)
"""


@pytest.mark.parametrize("failures,message,runs,ok", [
    (0, "", 1, True),
    (1, _CI_ABORT, 2, True),                 # one abort: resumed once, and it finishes
    (2, _CI_ABORT, 2, False),                # aborts again: no third run, the failure stands
    (1, "ValueError: bad config\n", 1, False),   # any other failure: not rerun
])
def test_the_recipe_run_is_resumed_once_and_only_after_a_collective_abort(tmp_path, failures, message, runs, ok):
  marker = str(tmp_path / "runs")
  r = run_resuming_once([sys.executable, "-c", _FAKE_RUN, marker, str(failures), message], dict(os.environ), 60)
  assert (r.returncode == 0) is ok and int(open(marker).read()) == runs
