"""The trace report draws each crop box where the action put it, links every PNG it writes, and renders in Chromium."""
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from videor4_jax.eval.trace import BOX_COLOR, screenshot, write_trace_report


def _record():
  rng = np.random.default_rng(0)
  src = rng.integers(0, 60, size=(4, 100, 200, 3), dtype=np.uint8)   # dark frames: the box colour stands out
  return {"qid": "q-1", "question": "What is written on the red sign?", "golds": ["42"], "prediction": "42",
          "correct": True, "global_frames": src[:, ::4, ::4], "source_frames": src,
          "steps": [{"text": "<think>the red sign is top left</think>",
                     "action": {"name": "crop", "frame": 2, "bbox_2d": [0.25, 0.5, 0.75, 1.0]}, "error": None,
                     "observation": src[1:2, 50:, 50:150]},
                    {"text": "<think>check frames</think>", "action": {"name": "clip", "frames": [1, 3]},
                     "error": None, "observation": src[[0, 2]]},
                    {"text": "<think>bad</think>", "action": {"name": "crop", "frame": 9, "bbox_2d": [0.5, 0.5, 0.1, 0.1]},
                     "error": "frame out of range", "observation": None},
                    {"text": "<answer>42</answer>", "action": None, "error": None, "observation": None}]}


def test_trace_report_draws_boxes_and_links_pngs(tmp_path):
  path = write_trace_report(str(tmp_path), [_record()])
  page = open(path, encoding="utf-8").read()
  srcs = re.findall(r"src='([^']+)'", page)
  assert srcs and all(os.path.exists(tmp_path / s) for s in srcs)
  assert "frame out of range" in page and "What is written on the red sign?" in page
  box = np.asarray(Image.open(tmp_path / "q0_s0_box.png"))
  red = np.all(box == BOX_COLOR, axis=-1)
  ys, xs = np.nonzero(red)
  # Box (0.25, 0.5)-(0.75, 1.0) on a 200x100 frame: x in [49.75, 149.25], y in [49.5, 99].
  assert abs(xs.min() - 50) <= 2 and abs(xs.max() - 149) <= 2
  assert abs(ys.min() - 50) <= 2 and ys.max() >= 97
  assert not red[:45].any() and not red[:, :45].any()
  assert os.path.exists(tmp_path / "q0_s1_clip.png") and os.path.exists(tmp_path / "q0_s0_obs.png")


_BROWSER = next((n for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_BROWSER is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_trace_page_renders_in_headless_chromium(tmp_path):
  """The page renders in a real browser: the screenshot is not blank, and the PNGs load (the crop box colour and the
  dark frames appear in the rendered pixels, not only in the files)."""
  path = write_trace_report(str(tmp_path), [_record()])
  png = screenshot(path, str(tmp_path / "shot.png"), width=800, height=900, timeout=60)
  shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
  assert shot.shape == (900, 800, 3)
  assert shot.std() > 20                                            # not a blank page
  near_box = (np.abs(shot - np.array(BOX_COLOR)).max(-1) <= 12).sum()
  dark = (shot.max(-1) < 70).sum()
  assert near_box > 200, near_box                                   # the drawn crop box and clip outlines
  assert dark > 50_000, dark                                        # the embedded frames (values < 60)


def test_trace_records_pair_rows_with_questions_by_qid():
  """A batch row whose record failed to load is absent from `questions`; every later trace still shows its own
  question's frames (pairing by position would shift them by one)."""
  import types
  from videor4_jax.data.features import encode_strings
  from videor4_jax.eval.trace_records import trace_records
  rng = np.random.default_rng(0)
  src = rng.integers(0, 255, size=(3, 2, 28, 28, 3), dtype=np.uint8)
  qids, _ = encode_strings(["bad", "q1", "q2"], 3, 16)
  batch = {"source_frames": src, "qid": qids, "row_ok": np.array([False, True, True])}
  questions = [{"qid": q, "question": f"question {q}", "golds": ["1"], "prediction": "1", "accuracy": 1.0,
                "actions": [], "text": "<think></think><answer>1</answer>"} for q in ("q1", "q2")]
  env = types.SimpleNamespace(rollout=types.SimpleNamespace(obs_hw=(28, 28), max_clip_frames=2, crop_margin=0.0,
                                                            crop_min_px=8))
  recs = trace_records([(batch, None, 3)], questions, None, env, limit=8)
  assert [r["qid"] for r in recs] == ["q1", "q2"]
  np.testing.assert_array_equal(recs[0]["source_frames"], src[1])
  np.testing.assert_array_equal(recs[1]["source_frames"], src[2])
