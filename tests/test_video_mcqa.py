"""video_mcqa: annotation layouts (Video-MME nested / flat, MVBench), skip reasons, windows, the eval source and
prompt, and eval.py --mcqa end to end with the tiny model."""
import json
import math
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from videor4_jax.data.builders.common import read_skipped
from videor4_jax.data.builders.video_mcqa import formats
from videor4_jax.data.builders.video_mcqa.builder import VideoMcqa
from videor4_jax.data import pipeline
from videor4_jax.eval import mcqa
from videor4_jax.processing.video import VideoClip, VideoDecodeError, sample_frames


def write_clip(path, n=20, fps=10, value0=0):
  """n frames whose red channel is value0 + 5*i (frame i readable after decoding: lossless RGB H.264)."""
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264rgb", rate=fps)
    s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
    s.options = {"crf": "0", "bf": "2", "g": "6"}
    for i in range(n):
      img = np.zeros((48, 64, 3), np.uint8)
      img[..., 0] = value0 + 5 * i
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def make_manual(root):
  """Video-MME-style test split (nested) + MVBench-style task files in validation/, with bad records."""
  (root / "data").mkdir(parents=True)
  write_clip(root / "data" / "vidA.mp4")
  write_clip(root / "data" / "vidB.mp4", n=40)
  (root / "data" / "broken.mp4").write_bytes(b"\x00not a video" * 40)
  (root / "a" ).mkdir()
  (root / "b").mkdir()
  write_clip(root / "a" / "twin.mp4")
  write_clip(root / "b" / "twin.mp4")
  opts = ["A. red", "B. blue", "C. green", "D. white"]
  test = [
      {"video_id": "001", "videoID": "vidA", "duration": "short", "questions": [
          {"question_id": "001-1", "question": "Colour?", "options": opts, "answer": "A"},
          {"question_id": "001-2", "question": "Colour again?", "options": opts, "answer": "(C)"}]},
      {"videoID": "vidB", "questions": [
          {"question_id": "002-1", "question": "Which?", "options": opts, "answer": "B. blue"},
          {"question_id": "002-2", "question": "Bad answer", "options": opts, "answer": "E"},
          {"question_id": "002-3", "question": "No options"},
          {"question_id": "001-1", "question": "Duplicate id", "options": opts, "answer": "A"}]},
      {"videoID": "missing_vid", "questions": [{"question_id": "003-1", "question": "?", "options": opts,
                                                "answer": "A"}]},
      {"videoID": "broken", "questions": [{"question_id": "004-1", "question": "?", "options": opts,
                                           "answer": "A"}]},
      {"videoID": "twin", "questions": [{"question_id": "005-1", "question": "?", "options": opts, "answer": "A"}]},
  ]
  (root / "test.json").write_text(json.dumps(test))
  (root / "validation").mkdir()
  mv = [{"video": "vidB.mp4", "question": "What happens?", "candidates": ["it fades", "it brightens", "nothing"],
         "answer": "it brightens", "start": 1.0, "end": 2.5},
        {"video": "vidB.mp4", "question": "Outside?", "candidates": ["x", "y"], "answer": "x", "start": 30,
         "end": 40}]
  (root / "validation" / "action_sequence.json").write_text(json.dumps(mv))
  (root / "validation" / "counting.jsonl").write_text(
      json.dumps({"video": "data/vidA.mp4", "question": "How many?", "options": {"A": "1", "B": "2"},
                  "answer_idx": 1}) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("manual")
  make_manual(root)
  data_dir = tmp_path_factory.mktemp("tfds")
  out = {}
  for cfg in ("embedded", "by_path"):
    b = VideoMcqa(config=cfg, data_dir=str(data_dir), file_format="array_record")
    b.download_and_prepare(download_config=__import__("tensorflow_datasets").download.DownloadConfig(
        manual_dir=str(root)))
    out[cfg] = b.data_dir
  return out, root, data_dir


def test_builder_parses_layouts_and_reports_skips(built):
  dirs, root, _ = built
  src = pipeline.open_source(dirs["embedded"], "test")
  rows = {r["qid"].decode(): r for r in (src[i] for i in range(len(src)))}
  assert sorted(rows) == ["001-1", "001-2", "002-1"]
  assert [o.decode() for o in rows["001-1"]["options"]] == ["red", "blue", "green", "white"]
  assert {q: r["answer"].decode() for q, r in rows.items()} == {"001-1": "A", "001-2": "C", "002-1": "B"}
  assert rows["001-1"]["video"] == (root / "data" / "vidA.mp4").read_bytes()
  assert rows["001-1"]["start_s"] == 0 and math.isinf(rows["001-1"]["end_s"])
  reasons = {r["key"]: r["reason"] for r in read_skipped(dirs["embedded"]) if r["split"] == "test"}
  assert len(reasons) == 6, reasons
  text = "\n".join(f"{k}: {v}" for k, v in reasons.items())
  for needle in ("qid=002-2: field 'answer': letter E but only 4 options", "[1].questions[2] qid=002-3: no options",
                 "duplicate question id '001-1'", "'missing_vid' not found", "broken.mp4: cannot decode video",
                 "'twin' is ambiguous: 2 files"):
    assert needle in text, (needle, text)
  val = pipeline.open_source(dirs["embedded"], "validation")
  vrows = {r["qid"].decode(): r for r in (val[i] for i in range(len(val)))}
  assert sorted(vrows) == ["action_sequence/[0]", "counting/[0]"]     # several files: ids get the file's stem
  r = vrows["action_sequence/[0]"]
  assert r["answer"] == b"B" and (r["start_s"], r["end_s"]) == (1.0, 2.5) and r["task"] == b""
  assert vrows["counting/[0]"]["answer"] == b"B"
  vskip = [s for s in read_skipped(dirs["embedded"]) if s["split"] == "validation"]
  assert len(vskip) == 1 and "no frame inside the window 30-40 s" in vskip[0]["reason"]
  bp = pipeline.open_source(dirs["by_path"], "test")[0]
  assert bp["video"] in (b"", "") and os.path.isfile(bp["video_path"].decode())


@pytest.mark.parametrize("raw,err", [
    ({"video": "v", "question": "q", "options": ["a", "b"], "answer": "a"}, None),
    ({"video": "v", "question": "q", "options": ["a", "A"], "answer": "A"}, "ambiguous"),
    ({"video": "v", "question": "q", "options": ["a"], "answer": "A"}, "1 options"),
    ({"video": "v", "question": "q", "options": ["a", "b"], "answer": "C"}, "only 2 options"),
    ({"video": "v", "question": "q", "options": {"B": "a", "A": "b"}, "answer": "A"}, "not A, B, C"),
    ({"video": "v", "question": "q", "A": "x", "B": "y", "answer": "B", "end": 0}, "start < end"),
    ({"question": "q", "options": ["a", "b"], "answer": "A"}, "no video"),
    ({"video": "v", "question": "q", "options": ["a", "b"], "answer": 1}, "0- or 1-based"),
    ({"video": "v", "question": "q", "options": ["a", "b"], "answer": "c"}, "neither an option letter"),
])
def test_record_parsing_errors_name_the_field(raw, err):
  if err is None:
    assert formats.parse_record(raw, "[0]")["answer"] == "A"
  else:
    with pytest.raises(formats.RecordError, match=err):
      formats.parse_record(raw, "[0]")


def test_option_prefixes_stripped_only_when_all_carry_their_letter():
  assert formats.parse_options({"options": ["A. x", "B. y"]}) == ["x", "y"]
  assert formats.parse_options({"options": ["A. x", "y"]}) == ["A. x", "y"]


def test_window_sampling_stays_inside(tmp_path):
  write_clip(tmp_path / "w.mp4", n=40)          # 4 s at 10 fps; red = 5 * frame
  t, idx, frames = sample_frames(VideoClip(str(tmp_path / "w.mp4"), 1.0, 2.5), num_frames=4)
  assert idx.tolist() == [10, 15, 20, 25] and frames[:, 0, 0, 0].tolist() == [50, 75, 100, 125]
  with pytest.raises(VideoDecodeError, match="w.mp4: .*no frame inside the window 5-6 s"):
    sample_frames(VideoClip(str(tmp_path / "w.mp4"), 5.0, 6.0), num_frames=4)


def test_mcqa_source_prompt_and_score(built):
  dirs, _, _ = built
  src = mcqa.McqaSource(pipeline.open_source(dirs["by_path"], "validation"))
  row = next(src[i] for i in range(len(src)) if src[i]["qid"] == b"action_sequence/[0]")
  assert row["question"] == ("What happens?\nA. it fades\nB. it brightens\nC. nothing\n" + mcqa.INSTRUCTION)
  assert row["answers"] == ["B"] and isinstance(row["video"], VideoClip)
  assert (row["video"].start_s, row["video"].end_s) == (1.0, 2.5) and os.path.isfile(row["video"].source)
  assert mcqa.score("The answer is (B).", ["B"]) == 1.0 and mcqa.score("A", ["B"]) == 0.0
  with pytest.raises(ValueError, match="no field.*video_mcqa builder"):
    mcqa.McqaSource([{"qid": b"1", "question": b"q", "answers": [b"x"], "video": b""}])


def test_eval_cli_mcqa_end_to_end(built, tmp_path):
  """eval.py --mcqa with the tiny random model: the prompt carries the options, golds are letters, and the
  summary's accuracy is the mean of the option-letter metric."""
  import jax
  from train_fixtures import small_config
  from videor4_jax.convert.hf import save_pretrained
  from videor4_jax.model import vlm
  from videor4_jax.convert.resolve import build_model_config, make_processor
  _, _, data_dir = built
  cfg = small_config(tmp_path / "unused")
  processor = make_processor(cfg)
  config = build_model_config(cfg, processor.tokenizer)
  ckpt = str(tmp_path / "ckpt")
  save_pretrained(ckpt, config, vlm.init_params(config, jax.random.key(0)), processor=processor)
  out = tmp_path / "mc.json"
  cmd = [sys.executable, "eval.py", "--checkpoint", ckpt, "--dataset", "video_mcqa/embedded", "--split", "test",
         "--mcqa", "--mode", "single_pass", "--output", str(out), f"--config.data.data_dir={data_dir}",
         "--config.eval.batch_size=4", "--config.pipeline.max_prompt_tokens=256", "--config.rollout.max_steps=1",
         "--config.rollout.max_step_tokens=16", "--config.rollout.cache_len=512"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=os.getcwd())
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  s, qs = res["summary"], res["questions"]
  assert s["metric"] == "multiple_choice_accuracy" and s["num_questions"] == len(qs) == 3
  assert sorted(q["golds"][0] for q in qs) == ["A", "B", "C"]
  assert all("\nA. red\nB. blue\nC. green\nD. white\n" in q["question"] for q in qs)
  for q in qs:
    assert q["accuracy"] == mcqa.score(q["prediction"], q["golds"])
  assert s["accuracy"] == pytest.approx(sum(q["accuracy"] for q in qs) / 3)
