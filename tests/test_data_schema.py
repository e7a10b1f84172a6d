"""Trajectory schema: round trips, and errors that name the record and the field."""
import json

import pytest

from videor4_jax.data import schema

GOOD = {"qid": "q1", "video_id": "v1", "question": "What?", "answers": ["42"], "kind": "compositional",
        "steps": [{"think": "look", "action": {"name": "clip", "frames": [2, 3]}, "answer": None},
                  {"think": "zoom", "action": {"name": "crop", "frame": 3, "bbox_2d": [0.0, 0.5, 0.5, 1.0]},
                   "answer": None},
                  {"think": "read", "action": None, "answer": "42"}],
        "evidence": {"frames": [3]}}


def test_round_trip(tmp_path):
  t = schema.from_json(GOOD)
  assert t.to_json() == GOOD
  p = tmp_path / "a.jsonl"
  schema.write_jsonl(str(p), [t, schema.from_json(dict(GOOD, qid="q2", kind="rl", steps=[]))])
  got = [r for _, r in schema.read_jsonl(str(p))]
  assert got[0] == t and got[1].kind == "rl"


def _bad(**patch):
  d = json.loads(json.dumps(GOOD))
  for k, v in patch.items():
    d[k] = v
  return d


@pytest.mark.parametrize("rec,field", [
    (_bad(kind="mixed"), "'kind'"),
    (_bad(answers=[]), "'answers'"),
    (_bad(kind="deliberate"), "'kind'"),  # mixes clip and crop
    (_bad(kind="rl"), "'steps'"),
    ({k: v for k, v in GOOD.items() if k != "video_id"}, "'video_id'"),
    (_bad(steps=[GOOD["steps"][0], {"think": "x", "action": {"name": "crop", "frame": 1, "bbox_2d": [0.5, 0, 0.2, 1]},
                                     "answer": None}, GOOD["steps"][2]]), "steps[1].action.bbox_2d"),
    (_bad(steps=[{"think": "x", "action": {"name": "zoom"}, "answer": None}, GOOD["steps"][2]]), "steps[0].action.name"),
    (_bad(steps=GOOD["steps"][:2]), "'steps[1]'"),
])
def test_errors_name_record_and_field(rec, field):
  with pytest.raises(schema.SchemaError) as e:
    schema.from_json(rec, where="f.jsonl:7")
  assert "f.jsonl:7" in str(e.value) and field in str(e.value)


def test_frame_bound():
  with pytest.raises(schema.SchemaError, match=r"steps\[0\].action.frames"):
    schema.from_json(GOOD, num_frames=2)


def test_read_jsonl_reports_bad_line(tmp_path):
  p = tmp_path / "b.jsonl"
  p.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps(_bad(kind="x")) + "\n")
  out = list(schema.read_jsonl(str(p)))
  assert isinstance(out[0][1], schema.Trajectory)
  assert isinstance(out[1][1], schema.SchemaError) and f"{p}:2" in str(out[1][1])
  assert isinstance(out[2][1], schema.SchemaError) and f"{p}:3" in str(out[2][1])


PR_RECORD = {
    "id": 7, "answers": ["A3"],
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "video", "video": "videos/00042.mp4"},
                                     {"type": "text", "text": "<video>What is on the sign?"}]},
        {"role": "assistant", "content": "<think>Frames 2-3 show it.</think><tool_call>{\"name\": \"select_frames\", "
                                         "\"arguments\": {\"target_frames\": [2, 3]}}</tool_call>"},
        {"role": "user", "content": [{"type": "text", "text": "Here are the selected frames"}]},
        {"role": "assistant", "content": "Zoom in.<tool_call>{\"name\": \"crop_image_normalized\", \"arguments\": "
                                         "{\"bbox_2d\": [0.1, 0.2, 0.5, 0.6], \"target_image\": 3}}</tool_call>"},
        {"role": "user", "content": "Here is the cropped image"},
        {"role": "assistant", "content": "<think>It reads A3.</think><answer>A3</answer>"},
    ]}


def test_from_messages_pixel_reasoner_style(tmp_path):
  t = schema.from_messages(PR_RECORD)
  assert (t.qid, t.video_id, t.question, t.answers, t.kind) == ("7", "00042", "What is on the sign?", ("A3",),
                                                                 "compositional")
  assert [s.to_json() for s in t.steps] == [
      {"think": "Frames 2-3 show it.", "action": {"name": "clip", "frames": [2, 3]}, "answer": None},
      {"think": "Zoom in.", "action": {"name": "crop", "frame": 3, "bbox_2d": [0.1, 0.2, 0.5, 0.6]}, "answer": None},
      {"think": "It reads A3.", "action": None, "answer": "A3"}]
  p = tmp_path / "m.jsonl"
  p.write_text(json.dumps(PR_RECORD) + "\n")
  assert list(schema.read_jsonl(str(p)))[0][1] == t


def test_from_messages_errors():
  bad = json.loads(json.dumps(PR_RECORD))
  bad["messages"][2]["content"] = "<tool_call>{\"name\": \"rotate\", \"arguments\": {}}</tool_call>"
  with pytest.raises(schema.SchemaError, match=r"x.jsonl:3.*messages\[2\].tool_call.name"):
    schema.from_messages(bad, where="x.jsonl:3")
  # zoom_in is a crop in the grammar's one alias table (so here too): the error is its missing box, not its name.
  bad["messages"][2]["content"] = "<tool_call>{\"name\": \"zoom_in\", \"arguments\": {}}</tool_call>"
  with pytest.raises(schema.SchemaError, match=r"messages\[2\].tool_call.frame"):
    schema.from_messages(bad, where="x.jsonl:3")
  bad = json.loads(json.dumps(PR_RECORD))
  bad["messages"][4]["content"] = "<tool_call>{\"name\": \"crop\", \"arguments\": {\"frame\": 1, \"bbox_2d\": [0.5, 0, 0.2, 1]}}</tool_call>"
  with pytest.raises(schema.SchemaError, match=r"steps\[1\].action.bbox_2d"):
    schema.from_messages(bad)
