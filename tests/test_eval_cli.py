"""eval.py end to end on the synthetic test split (CPU), both modes: the results JSON follows the documented
schema and its summary agrees with its per-question records."""
import json
import os
import subprocess
import sys

import jax
import pytest

from train_fixtures import small_config
from videor4_jax.processing.tokenizer import Tokenizer

SUMMARY_KEYS = {"mode", "num_questions", "accuracy", "anls", "rumination_rate", "actions_per_question",
                "invalid_action_rate", "answered_rate"}
QUESTION_KEYS = {"qid", "question", "kind", "golds", "prediction", "accuracy", "anls", "answered", "actions", "text"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random tiny model in HF format, with its tokenizer, as train.py exports it."""
  from videor4_jax.convert.hf import save_pretrained
  from videor4_jax.model import vlm
  from videor4_jax.convert.resolve import build_model_config, make_processor
  cfg = small_config(tmp_path_factory.mktemp("data"))
  processor = make_processor(cfg)
  config = build_model_config(cfg, processor.tokenizer)
  d = str(tmp_path_factory.mktemp("ckpt"))
  save_pretrained(d, config, vlm.init_params(config, jax.random.key(0)), processor=processor)
  return d, cfg


@pytest.mark.parametrize("mode", ["rumination", "single_pass"])
def test_eval_cli_writes_documented_results(checkpoint, mode, tmp_path):
  ckpt, cfg = checkpoint
  out = tmp_path / "results.json"
  flags = [f"--config.data.{k}={cfg.data[k]}" for k in ("data_dir", "num_train", "num_validation", "num_test")]
  flags += [f"--config.rollout.{k}={cfg.rollout[k]}" for k in ("max_steps", "max_step_tokens", "cache_len")]
  n = 4 if mode == "rumination" else 3       # single_pass also checks --num_examples (first N questions)
  cmd = [sys.executable, "eval.py", "--checkpoint", ckpt, "--split", "test", "--mode", mode, "--output", str(out),
         "--config.eval.batch_size=4", "--trace_dir", str(tmp_path / "trace"), "--num_traces", "2",
         "--num_examples", str(n), *flags]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=os.getcwd())
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "accuracy" in proc.stdout and mode in proc.stdout                       # the summary table
  res = json.loads(out.read_text())
  s, qs = res["summary"], res["questions"]
  kinds = sorted({q["kind"] for q in qs} - {""})
  assert kinds and set(s) == SUMMARY_KEYS | {f"accuracy_{k}" for k in kinds}, (s, kinds)
  assert s["mode"] == mode and s["num_questions"] == len(qs) == n
  for k in kinds:                     # the accuracy of each record kind, over that kind's questions
    mine = [q["accuracy"] for q in qs if q["kind"] == k]
    assert s[f"accuracy_{k}"] == pytest.approx(sum(mine) / len(mine))
  assert all(set(q) == QUESTION_KEYS and isinstance(q["golds"], list) and q["golds"] for q in qs)
  assert s["accuracy"] == pytest.approx(sum(q["accuracy"] for q in qs) / n)
  assert s["anls"] == pytest.approx(sum(q["anls"] for q in qs) / n)
  assert s["actions_per_question"] == pytest.approx(sum(len(q["actions"]) for q in qs) / n)
  for a in (a for q in qs for a in q["actions"]):
    keys = {"crop": {"name", "error", "frame", "bbox_2d"}, "clip": {"name", "error", "frames"}}.get(a["name"],
                                                                                                    {"name", "error"})
    assert set(a) == keys, a
  # --num_traces 2: the trace page holds exactly the first two questions.
  assert sorted(f for f in os.listdir(tmp_path / "trace") if f.endswith("_global.png")) == \
      ["q0_global.png", "q1_global.png"]
  if mode == "single_pass":
    assert s["rumination_rate"] == 0 and all(q["actions"] == [] for q in qs)
    assert all(q["text"].startswith("<think></think><answer>") for q in qs)
  assert (tmp_path / "trace" / "index.html").exists()
