"""`python -m videor4_jax.data.build`: builds each dataset from a manual dir in its official layout (subprocess),
reads it back through data/sources.py, reports skipped records by name and reason, refuses bad requests with
errors naming what is wrong, and never leaves a failed build where a dataset would be read."""
import json
import os

import ml_collections
import pytest

import fixtures_data as fx
from videor4_jax.data import build, schema
from videor4_jax.data.sources import make_source_fn


def _source(name, data_dir, split):
  return make_source_fn(ml_collections.ConfigDict({"name": name, "data_dir": data_dir}))(split)


def _ok(out):
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def test_build_m4_vitevqa(tmp_path):
  fx.write_m4_manual_dir(str(tmp_path / "manual"))
  data_dir = str(tmp_path / "tfds")
  stdout = _ok(fx.run_build("m4_vitevqa/task1_split1", data_dir, str(tmp_path / "manual")))
  # The skip report names each bad record and says why.
  assert "train: 3 records, 3 skipped" in stdout and "validation: 3 records, 0 skipped" in stdout
  assert "qid=103 video_id=bad" in stdout and "unreadable video" in stdout
  assert "qid=104 video_id=gone: video gone.mp4 not found under the manual dir" in stdout
  assert "ViteVQA_0.0.2_t1s1train.json[5]: missing field(s) ['answers']" in stdout
  with open(tmp_path / "manual" / "ViteVQA_0.0.2_t1s1val.json") as f:
    ann = {r["question_id"]: r for r in json.load(f)["data"]}
  src = _source("m4_vitevqa/task1_split1", data_dir, "validation")
  assert len(src) == 3 and len(_source("m4_vitevqa/task1_split1", data_dir, "train")) == 3
  for i in range(3):
    r = src[i]
    a = ann[int(r["question_id"])]
    assert r["question"].decode() == a["question"] and [x.decode() for x in r["answers"]] == a["answers"]
    with open(tmp_path / "manual" / "videos" / "sub" / f"{a['video_id']}.mp4", "rb") as f:
      assert r["video"] == f.read()
  # Built before: the command says so and reports the same counts instead of building again.
  again = _ok(fx.run_build("m4_vitevqa/task1_split1", data_dir, str(tmp_path / "manual")))
  assert "exists (built before)" in again and "train: 3 records, 3 skipped" in again


def test_build_videor4_trajectories(tmp_path):
  fix = fx.write_trajectory_manual_dir(str(tmp_path / "manual"))
  data_dir = str(tmp_path / "tfds")
  stdout = _ok(fx.run_build("videor4_trajectories", data_dir, str(tmp_path / "manual")))
  assert "train: 6 records, 2 skipped" in stdout
  assert "train train.jsonl:7:" in stdout and "'kind'" in stdout            # the line numbers of the bad rows
  assert "train train.jsonl:8:" in stdout and "corrupt.mp4: unreadable video" in stdout
  src = _source("videor4_trajectories", data_dir, "train")
  got = {src[i]["qid"].decode(): schema.from_json(src[i]["trajectory"].decode()) for i in range(len(src))}
  assert got == {r.qid: r for r in fix["records"]}


def test_build_page_sequences(tmp_path):
  fix = fx.write_pages_manual_dir(str(tmp_path / "manual"))
  with open(tmp_path / "manual" / "train.jsonl", "a") as f:   # a line that is no object; answers not a list
    f.write('42\n{"qid": "qs", "doc_id": "d", "question": "?", "answers": "abc", "pages": ["pages/doc0_p0.png"]}\n')
  data_dir = str(tmp_path / "tfds")
  stdout = _ok(fx.run_build("page_sequences", data_dir, str(tmp_path / "manual")))
  assert "train: 3 records, 4 skipped" in stdout
  assert "train train.jsonl:4: page pages/broken.png: undecodable image" in stdout
  assert "train train.jsonl:5:" in stdout and "missing.png" in stdout
  assert "train train.jsonl:6: expected a JSON object, got int" in stdout
  assert "train train.jsonl:7: field 'answers' must be a non-empty list" in stdout
  src = _source("page_sequences", data_dir, "train")
  assert sorted((src[i]["video_id"].decode(), int(src[i]["num_frames"])) for i in range(len(src))) == \
      sorted((doc, len(pages)) for doc, pages in fix["docs"].items())


def test_build_real_format_data_helper(tmp_path):
  data_dir = fx.build_real_format_data(tmp_path, n_videos=2, n_trajectories=4)
  assert [len(_source("m4_vitevqa/task1_split1", data_dir, s)) for s in ("train", "validation", "test")] == [2, 2, 2]
  traj = _source("videor4_trajectories", data_dir, "train")
  assert sorted(traj[i]["kind"].decode() for i in range(len(traj))).count("rl") == 2 and len(traj) == 4


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown dataset 'nope'; known: m4_vitevqa, page_sequences, synthetic_textvideo, video_mcqa, "
               "videor4_trajectories"),
    (["m4_vitevqa/task9"], "unknown config 'task9' of m4_vitevqa; its configs: task1_split1, task1_split2, task2"),
    (["page_sequences/x"], "unknown config 'x' of page_sequences; its configs: none"),
    (["m4_vitevqa"], "m4_vitevqa/task1_split1 needs --manual_dir"),
    (["videor4_trajectories", "--manual_dir", "{tmp}/absent"], "{tmp}/absent is not a directory"),
    (["m4_vitevqa/task2", "--manual_dir", "{tmp}"], "none of ['ViteVQA_0.0.2_t2train.json', "
                                                    "'ViteVQA_0.0.2_t2val.json', 'ViteVQA_0.0.2_t2test.json']"),
    (["videor4_trajectories", "--manual_dir", "{tmp}"], "none of ['train.jsonl', 'validation.jsonl', 'test.jsonl']"),
    (["video_mcqa/embedded", "--manual_dir", "{tmp}"], "no annotation file <split>.json[l] or <split>/*.json[l]"),
])
def test_bad_requests_name_what_is_wrong(tmp_path, capsys, args, message):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  assert build.main(args + ["--data_dir", str(tmp_path / "tfds")]) == 1
  assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
  assert not (tmp_path / "tfds").exists()


def test_annotations_without_videos_are_refused(tmp_path, capsys):
  fx.write_m4_manual_dir(str(tmp_path / "manual"))
  for root, _, names in os.walk(tmp_path / "manual"):
    for n in names:
      if n.endswith(".mp4"):
        os.remove(os.path.join(root, n))
  assert build.main(["m4_vitevqa", "--manual_dir", str(tmp_path / "manual"), "--data_dir", str(tmp_path)]) == 1
  assert "no video files (<video_id>.mp4) anywhere below manual dir" in capsys.readouterr().err


def _version_dir_files(data_dir):
  d = os.path.join(data_dir, "m4_vitevqa", "task1_split1")
  return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_failed_build_leaves_nothing_and_overwrite_keeps_the_old_build(tmp_path, capsys):
  manual, data_dir = tmp_path / "manual", str(tmp_path / "tfds")
  fx.write_m4_manual_dir(str(manual))
  good = (manual / "ViteVQA_0.0.2_t1s1test.json").read_text()
  (manual / "ViteVQA_0.0.2_t1s1test.json").write_text('{"data": [')            # the last split's file is cut
  argv = ["m4_vitevqa", "--manual_dir", str(manual), "--data_dir", data_dir]
  assert build.main(argv) == 1
  err = capsys.readouterr().err
  assert "ViteVQA_0.0.2_t1s1test.json: not valid JSON" in err and "nothing was written" in err
  assert _version_dir_files(data_dir) == []              # neither a version dir nor an incomplete one is left
  (manual / "ViteVQA_0.0.2_t1s1test.json").write_text(good)
  assert build.main(argv) == 0 and _version_dir_files(data_dir) == ["0.0.2"]
  (manual / "ViteVQA_0.0.2_t1s1test.json").write_text('{"data": [')
  assert build.main(argv + ["--overwrite"]) == 1
  assert "the previous build is kept" in capsys.readouterr().err
  assert _version_dir_files(data_dir) == ["0.0.2"] and len(_source("m4_vitevqa", data_dir, "test")) == 3


def test_build_without_manual_dir_for_the_synthetic_task(tmp_path, capsys):
  assert build.main(["synthetic_textvideo/tiny", "--data_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "train: 16 records, 0 skipped" in out and "test: 4 records, 0 skipped" in out
  r = _source("synthetic_textvideo/tiny", str(tmp_path), "validation")[0]
  assert schema.from_json(r["trajectory"].decode()).qid == r["qid"].decode()
