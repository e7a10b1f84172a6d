"""Each TFDS builder builds from a code-generated fixture, reads back losslessly, and skips bad records."""
import io
import json

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fixtures_data as fx
from videor4_jax.data import schema, synthetic, video_bytes
from videor4_jax.data.builders import M4Vitevqa, PageSequences, SyntheticTextvideo, Videor4Trajectories, common


def _decode(data: bytes) -> np.ndarray:
  with av.open(io.BytesIO(data)) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _build(cls, tmp_path, config=None, manual=None):
  b = cls(config=config, data_dir=str(tmp_path / "tfds"), file_format="array_record")
  dl = tfds.download.DownloadConfig(manual_dir=str(manual)) if manual else None
  b.download_and_prepare(download_config=dl)
  return b


def test_encode_mp4_is_lossless():
  frames, data = fx.tiny_video(0)
  np.testing.assert_array_equal(_decode(data), frames)
  assert video_bytes.probe_mp4(data) == (4, 112, 112)
  with pytest.raises(ValueError, match="unreadable"):
    video_bytes.probe_mp4(fx.CORRUPT_MP4)


def test_synthetic_textvideo(tmp_path):
  b = _build(SyntheticTextvideo, tmp_path, config="tiny")
  cfg = b.builder_config
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == \
      {"train": 16, "validation": 4, "test": 4}
  src = b.as_data_source("train")
  qids = set()
  for i in (0, 5, 15):
    r = src[i]
    t = schema.from_json(r["trajectory"].decode())
    idx = int(t.qid.rsplit("-", 1)[1])
    ex = synthetic.generate(cfg.task, cfg.seed, idx, split="train")
    np.testing.assert_array_equal(_decode(r["video"]), ex.frames_fhw3)  # lossless pixels
    assert t == ex.trajectory and r["answers"] == [a.encode() for a in t.answers]
    qids.add(t.qid)
  val = {b.as_data_source("validation")[i]["video_id"] for i in range(4)}
  assert all(v.startswith(b"syn0-validation") for v in val)
  assert common.read_skipped(b.data_dir) == []


# The official annotation file tags of each config (M4-ViteVQA v0.0.2 release).
M4_TAGS = {"task1_split1": "t1s1", "task1_split2": "t1s2", "task2": "t2"}


@pytest.mark.parametrize("config", sorted(M4_TAGS))
def test_m4_vitevqa_skips_corrupt_and_missing(tmp_path, config):
  fix = fx.write_m4_manual_dir(str(tmp_path / "manual"))
  tag = M4_TAGS[config]
  for split in ("train", "val", "test"):    # only this config's files exist, so reading another's would fail
    (tmp_path / "manual" / f"ViteVQA_0.0.2_t1s1{split}.json").rename(
        tmp_path / "manual" / f"ViteVQA_0.0.2_{tag}{split}.json")
  b = _build(M4Vitevqa, tmp_path, config=config, manual=tmp_path / "manual")
  assert {s: b.info.splits[s].num_examples for s in ("train", "validation", "test")} == \
      {"train": 3, "validation": 3, "test": 3}
  skipped = common.read_skipped(b.data_dir)
  reasons = {s["key"].split("video_id=")[-1] if "video_id=" in s["key"] else "noanswers": s["reason"]
             for s in skipped}
  assert set(reasons) == {"bad", "gone", "noanswers"}
  assert "unreadable video" in reasons["bad"] and "not found" in reasons["gone"]
  assert "answers" in reasons["noanswers"]
  assert all(s["split"] == "train" for s in skipped)
  src = b.as_data_source("train")
  rows = sorted((src[i] for i in range(len(src))), key=lambda r: r["question_id"])
  with open(tmp_path / "manual" / f"ViteVQA_0.0.2_{tag}train.json") as f:
    ann = json.load(f)["data"]
  for r, a in zip(rows, ann):
    assert r["question_id"] == a["question_id"] and r["answers"] == [x.encode() for x in a["answers"]]
    assert r["source1"].decode() == a["source1"] and r["video_width"] == 112
    with open(tmp_path / "manual" / "videos" / "sub" / f"{a['video_id']}.mp4", "rb") as f:
      assert r["video"] == f.read()  # byte-identical storage


def test_videor4_trajectories(tmp_path):
  fix = fx.write_trajectory_manual_dir(str(tmp_path / "manual"))
  b = _build(Videor4Trajectories, tmp_path, manual=tmp_path / "manual")
  src = b.as_data_source("train")
  got = sorted(schema.from_json(src[i]["trajectory"].decode()).dumps() for i in range(len(src)))
  assert got == sorted(r.dumps() for r in fix["records"])
  kinds = sorted(src[i]["kind"].decode() for i in range(len(src)))
  assert kinds.count("rl") == 3
  skipped = common.read_skipped(b.data_dir)
  assert len(skipped) == 2
  assert any("'kind'" in s["reason"] for s in skipped) and any("unreadable" in s["reason"] for s in skipped)


def test_page_sequences(tmp_path):
  fix = fx.write_pages_manual_dir(str(tmp_path / "manual"))
  b = _build(PageSequences, tmp_path, manual=tmp_path / "manual")
  src = b.as_data_source("train")
  assert len(src) == 3
  for i in range(3):
    r = src[i]
    pages = [np.asarray(Image.open(io.BytesIO(p))) for p in r["pages"]]
    ref = fix["docs"][r["video_id"].decode()]
    assert r["num_frames"] == len(ref) == len(pages)
    for p, q in zip(pages, ref):
      np.testing.assert_array_equal(p, q)
  skipped = common.read_skipped(b.data_dir)
  assert sorted(s["key"] for s in skipped) == ["train.jsonl:4", "train.jsonl:5"]
  assert any("undecodable" in s["reason"] for s in skipped)
