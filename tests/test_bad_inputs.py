"""The bad-input corpus: every dirty input a long run can meet gets a clear error naming the file, record or field,
or an in-graph error code; none crashes a run, hangs, or yields NaN. (More cases live beside their modules:
test_processing_video, test_data_schema, test_pixel_ops, test_grammar, test_data_builders, test_train_steps.)"""
import io
import json

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.data import schema
from videor4_jax.data.video_bytes import encode_mp4
from videor4_jax.processing import grammar
from videor4_jax.processing.grammar import ActionError
from videor4_jax.processing.video import VideoDecodeError, load_video
from videor4_jax.rumination.pixel_ops import crop

VIEWS = dict(num_frames=4, source_hw=(56, 56), global_hw=(28, 28))


def _frames(n=4, h=32, w=48, seed=0):
  return np.random.default_rng(seed).integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)


def _zero_frame_mp4() -> bytes:
  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4") as out:
    s = out.add_stream("libx264rgb", rate=2)
    s.width, s.height = 32, 32
  return buf.getvalue()


# ---- videos ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, payload", [
    ("random_bytes.mp4", lambda: bytes(np.random.default_rng(1).integers(0, 255, 4096, dtype=np.uint8))),
    ("truncated.mp4", lambda: encode_mp4(_frames(8))[:300]),
    ("empty.mp4", lambda: b""),
    ("zero_frames.mp4", _zero_frame_mp4),
])
def test_bad_video_raises_error_naming_the_file(tmp_path, name, payload):
  p = tmp_path / name
  p.write_bytes(payload())
  with pytest.raises(VideoDecodeError, match=name):
    load_video(str(p), **VIEWS)


def test_huge_resolution_video_is_resized_to_the_static_views():
  v = load_video(encode_mp4(np.full((2, 2160, 3840, 3), 90, np.uint8)), name="4k.mp4", **VIEWS)
  assert v["source_frames"].shape == (4, 56, 56, 3) and v["global_frames"].shape == (4, 28, 28, 3)


def _png_mov(frames, pix_fmt) -> bytes:
  """A lossless (PNG-in-MOV) video in `pix_fmt`: gray frames [F, H, W], rgba / rgb24 frames [F, H, W, C]."""
  buf = io.BytesIO()
  with av.open(buf, "w", format="mov") as out:
    s = out.add_stream("png", rate=2)
    s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], pix_fmt
    for f in frames:
      out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=pix_fmt)))
    out.mux(s.encode())
  return buf.getvalue()


def test_grayscale_frames_become_rgb_with_equal_channels():
  gray = _frames(3)[..., 0]
  v = load_video(_png_mov(gray, "gray"), name="gray.mov", **VIEWS)
  src = v["source_frames"]
  assert src.shape == (4, 56, 56, 3) and src.dtype == np.uint8
  np.testing.assert_array_equal(src[..., 0], src[..., 1])       # a gray pixel is (y, y, y)
  np.testing.assert_array_equal(src[..., 0], src[..., 2])
  assert src.std() > 20                                          # the picture survived (not a blank frame)


def test_alpha_frames_drop_the_alpha_channel():
  rgb = _frames(3)
  alpha = np.random.default_rng(5).integers(0, 255, rgb.shape[:3] + (1,), dtype=np.uint8)
  v = load_video(_png_mov(np.concatenate([rgb, alpha], -1), "rgba"), name="alpha.mov", **VIEWS)
  want = load_video(_png_mov(rgb, "rgb24"), name="rgb.mov", **VIEWS)
  assert v["source_frames"].shape == (4, 56, 56, 3)
  # The same pixels as the video without alpha: the alpha is dropped, not blended into the colours.
  np.testing.assert_array_equal(v["source_frames"], want["source_frames"])
  np.testing.assert_array_equal(v["global_frames"], want["global_frames"])


# ---- annotations and SFT data ---------------------------------------------------------------------------------------
GOOD = {"qid": "q1", "video_id": "v1", "question": "What is on the sign?", "answers": ["A3"], "kind": "deliberate",
        "steps": [{"think": "zoom", "action": {"name": "crop", "frame": 2, "bbox_2d": [0.1, 0.1, 0.5, 0.5]}},
                  {"think": "done", "answer": "A3"}]}


def _edited(base, **kw):
  """A deep copy of `base` with fields set (`None` removes the field)."""
  d = json.loads(json.dumps(base))
  for k, v in kw.items():
    if v is None:
      d.pop(k)
    else:
      d[k] = v
  return d


def _with(**kw):
  return _edited(GOOD, **kw)


def _step(action):
  return _with(steps=[{"think": "x", "action": action}, {"think": "y", "answer": "A3"}])


@pytest.mark.parametrize("record, field", [
    (_with(question=None), "question"),                                    # missing field
    (_with(answers="A3"), "answers"),                                      # mistyped field
    (_with(answers=[]), "answers"),                                        # empty answers
    (_with(answers=[""]), "answers"),                                      # empty answer string
    (_step({"name": "zoom", "frame": 1}), "steps[0].action.name"),         # unknown tool name
    (_step({"name": "crop", "frame": 2}), "steps[0].action"),              # malformed call (no box)
    (_step({"name": "clip", "frames": [0, 3]}), "steps[0].action.frames"),  # out-of-range frame (1-based)
    (_step({"name": "crop", "frame": 1, "bbox_2d": [0.6, 0.1, 0.2, 0.5]}), "steps[0].action.bbox_2d"),  # inverted
    (_step({"name": "crop", "frame": 1, "bbox_2d": [0.2, 0.1, 0.2, 0.5]}), "steps[0].action.bbox_2d"),  # degenerate
])
def test_bad_record_names_record_and_field(record, field):
  with pytest.raises(schema.SchemaError) as e:
    schema.from_json(record, where="train.jsonl:12", num_frames=8)
  assert "train.jsonl:12" in str(e.value) and field in str(e.value)


def test_nan_box_in_sft_data_is_rejected():
  rec = json.dumps(_step({"name": "crop", "frame": 1, "bbox_2d": [0.1, 0.1, 0.5, 0.5]})).replace("0.5, 0.5", "NaN, 0.5")
  with pytest.raises(schema.SchemaError, match="bbox_2d"):
    schema.from_json(json.loads(rec), where="r")


def test_non_utf8_line_is_reported_and_the_rest_read(tmp_path):
  p = tmp_path / "t.jsonl"
  p.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe bad bytes\n" + json.dumps(GOOD).encode() + b"\n")
  out = list(schema.read_jsonl(str(p)))
  assert isinstance(out[0][1], schema.Trajectory) and isinstance(out[2][1], schema.Trajectory)
  assert isinstance(out[1][1], schema.SchemaError) and f"{p}:2" in str(out[1][1])


# ---- M4-ViteVQA annotations (the real-data builder) --------------------------------------------------------------
M4_ROW = {"question": "what is on the sign?", "answers": ["a1", "x"], "video_id": "00000", "question_id": 100,
          "source1": "Single frame", "source2": "Text", "video_width": 112, "video_height": 112}


def _m4(**kw):
  return _edited(M4_ROW, **kw)


@pytest.mark.parametrize("row, words", [
    (_m4(question=None), ["missing", "question"]),
    (_m4(video_id=None, question_id=None), ["missing", "video_id", "question_id"]),
    (_m4(question=7), ["'question'", "string"]),
    (_m4(question="  "), ["'question'", "non-empty"]),
    (_m4(answers="a1"), ["'answers'", "list"]),
    (_m4(answers=[]), ["'answers'", "not all empty"]),
    (_m4(answers=["", " "]), ["'answers'", "not all empty"]),
    (_m4(answers=[{"text": "a1"}]), ["'answers'", "list of strings"]),
    (_m4(question_id="q-100"), ["'question_id'", "integer"]),
    (_m4(video_id=["00000"]), ["'video_id'"]),
    (_m4(video_width="wide"), ["'video_width'", "integer"]),
    (["what?", ["a1"]], ["expected an object"]),
])
def test_m4_vitevqa_row_with_missing_or_mistyped_field_is_named(row, words):
  from videor4_jax.data.builders.m4_vitevqa.builder import row_error
  assert row_error(M4_ROW) is None and row_error(_m4(question_id="100", video_width=None)) is None
  err = row_error(row)
  assert err is not None and all(w in err for w in words), err


def test_m4_vitevqa_build_skips_mistyped_rows_and_names_a_non_utf8_file(tmp_path):
  import fixtures_data as fx
  from test_data_builders import _build
  from videor4_jax.data.builders import M4Vitevqa, common
  manual = tmp_path / "manual"
  fx.write_m4_manual_dir(str(manual))
  ann = manual / "ViteVQA_0.0.2_t1s1val.json"
  d = json.loads(ann.read_text())
  good = len(d["data"])
  d["data"] += [_m4(question_id=900, answers="a1"), _m4(question_id="q901"), _m4(question_id=902, question=None)]
  ann.write_text(json.dumps(d))
  b = _build(M4Vitevqa, tmp_path, config="task1_split1", manual=manual)
  assert b.info.splits["validation"].num_examples == good          # the three bad rows are skipped, not fatal
  val = {s["key"]: s["reason"] for s in common.read_skipped(b.data_dir) if s["split"] == "validation"}
  assert len(val) == 3, val
  assert val[f"{ann.name}[{good}] qid=900 video_id=00000"].startswith("field 'answers' must be a list")
  assert "'question_id' must be an integer, got 'q901'" in val[f"{ann.name}[{good + 1}] qid=q901 video_id=00000"]
  assert val[f"{ann.name}[{good + 2}]"] == "missing field(s) ['question']"
  # A file in another encoding stops the build with an error naming the file (not a bare UnicodeDecodeError).
  bad = tmp_path / "bad_manual"
  fx.write_m4_manual_dir(str(bad))
  t = bad / "ViteVQA_0.0.2_t1s1test.json"
  t.write_bytes(t.read_text().replace("what is on", "qu'y a-t-il écrit sur").encode("latin-1"))
  with pytest.raises(ValueError, match=rf"{t}: not UTF-8 \(byte \d+: invalid continuation byte\)"):
    _build(M4Vitevqa, tmp_path / "b", config="task1_split1", manual=bad)


# ---- model output: parsed only by the grammar, never evaluated ------------------------------------------------------
@pytest.mark.parametrize("text, err", [
    ('<tool_call>{"name": "zoom", "arguments": {"frame": 1}}</tool_call>', ActionError.UNKNOWN_TOOL),
    ('<tool_call>{"name": "crop", "arguments": {"frame": 1, "bbox_2d": [0.1, 0.2]}}</tool_call>',
     ActionError.MALFORMED),
    ('<tool_call>__import__("os").system("rm -rf /")</tool_call>', ActionError.MALFORMED),
    ('<tool_call>{"name": "clip", "arguments": {"frames": [1, 2, 3, 4, 5, 6]}}</tool_call>',
     ActionError.TOO_MANY_FRAMES),
    ('<tool_call>{"name": "crop", "arguments": {"frame": 40, "bbox_2d": [0.1, 0.1, 0.5, 0.5]}}</tool_call>',
     ActionError.FRAME_OUT_OF_RANGE),
])
def test_garbage_model_output_gives_error_codes(text, err):
  _, e = grammar.parse_action_text(text, num_frames=8, max_frames=4)
  assert e == err


@pytest.mark.parametrize("box", [[0.5, 0.5, 0.5, 0.5], [0.7, 0.2, 0.1, 0.9], [np.nan, 0.1, 0.5, 0.5],
                                 [np.inf, 0.1, 0.5, 0.5]])
def test_degenerate_inverted_nan_boxes_in_graph(box):
  src = jnp.asarray(_frames(4, 64, 64))
  px, e = jax.jit(lambda b: crop(src, 1, b, out_hw=(28, 28)))(jnp.asarray(box, jnp.float32))
  assert int(e) == ActionError.BOX_INVALID and np.all(np.isfinite(np.asarray(px)))


# ---- configs --------------------------------------------------------------------------------------------------------
def test_config_errors_are_actionable():
  from videor4_jax.data.synthetic import SyntheticConfig
  from videor4_jax.parallel.sharding import make_mesh
  from videor4_jax.rl.grpo import GRPOConfig
  from videor4_jax.train.curriculum import validate_curriculum
  import ml_collections
  with pytest.raises(ValueError, match="num_generations >= 2"):
    GRPOConfig(num_generations=1)
  with pytest.raises(ValueError, match=r"needs 64 devices but 8 are available"):
    make_mesh((4, 4, 4))
  cfg = ml_collections.ConfigDict(dict(curriculum="drp_sft,rl_x", stages=dict(drp_sft=dict(kind="sft"))))
  with pytest.raises(ValueError, match=r"unknown stage 'rl_x'.*defined stages: \['drp_sft'\]"):
    validate_curriculum(cfg)
  with pytest.raises(ValueError, match="global view"):
    SyntheticConfig(crop_text_px=8)


# ---- a long run never dies on one bad sample ----------------------------------------------------------------------
def test_pipeline_skips_counts_and_reports_a_bad_record(caplog):
  import grain
  from videor4_jax.data import pipeline

  class Featurize(grain.transforms.Map):
    def map(self, row):
      if row["qid"] == b"bad-3":
        raise ValueError("video bytes are not an mp4")
      return {"x": np.full((2,), row["v"], np.int32)}

  source = [{"qid": b"bad-3" if i == 3 else f"ok-{i}".encode(), "v": i} for i in range(6)]
  cfg = pipeline.PipelineConfig(batch_size=3, shuffle=False, num_epochs=1)
  with caplog.at_level("WARNING"):
    batches = list(pipeline.make_dataset(source, cfg, Featurize(), shard=None))
  assert "bad-3" in pipeline.SKIPPED and "not an mp4" in pipeline.SKIPPED["bad-3"]
  assert any("skipping record bad-3" in r.getMessage() for r in caplog.records)
  assert [b["row_ok"].tolist() for b in batches] == [[True] * 3, [False, True, True]]
  assert batches[1]["x"][0].tolist() == batches[1]["x"][1].tolist() == [4, 4]   # static shape: a good row repeated
