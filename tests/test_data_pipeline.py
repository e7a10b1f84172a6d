"""grain pipeline: static shapes, determinism, shards that tile a split, Orbax-restorable iterator state."""
import numpy as np
import grain
import pytest
import tensorflow_datasets as tfds

from videor4_jax.data import features, pipeline
from videor4_jax.data.builders import SyntheticTextvideo


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  b = SyntheticTextvideo(config="tiny", data_dir=str(d), file_format="array_record")
  b.download_and_prepare()
  return b.data_dir


def _cfg(**kw):
  return pipeline.PipelineConfig(**{"batch_size": 4, "max_answers": 2, "max_answer_bytes": 32, **kw})


def _qids(batch):
  return [features.decode_strings(q)[0] for q in batch["qid"]]


def test_static_shapes_and_answers(synth_dir):
  src = pipeline.open_source(synth_dir, "train")
  cfg = _cfg()
  b = next(iter(pipeline.make_dataset(src, cfg, features.AnswersFeaturizer(cfg))))
  assert b["answers"].shape == (4, 2, 32) and b["answers"].dtype == np.uint8
  assert b["qid"].shape == (4, 32) and b["num_answers"].shape == (4,)
  # The answers in the batch are those of the stored rows with those qids.
  by_qid = {src[i]["qid"].decode(): [a.decode() for a in src[i]["answers"]] for i in range(len(src))}
  for q, a, n in zip(_qids(b), b["answers"], b["num_answers"]):
    assert features.decode_strings(a, n) == by_qid[q]


def test_deterministic_given_seed(synth_dir):
  src = pipeline.open_source(synth_dir, "train")
  run = lambda seed: [_qids(b) for b, _ in zip(pipeline.make_dataset(src, _cfg(seed=seed),  # noqa: E731
                                                                      features.AnswersFeaturizer(_cfg())), range(6))]
  assert run(1) == run(1)
  assert run(1) != run(2)
  epoch1, epoch2 = sum(run(1)[:4], []), sum(run(1)[4:6], [])
  assert sorted(epoch1) == sorted(set(epoch1)) and len(epoch1) == 16  # an epoch sees every record once
  assert epoch2 != epoch1[:8]  # reshuffled next epoch


def test_two_process_shards_tile_the_split(synth_dir):
  src = pipeline.open_source(synth_dir, "train")
  cfg = _cfg(num_epochs=1, batch_size=3)
  shards = []
  for p in range(2):
    ds = pipeline.make_dataset(src, cfg, features.AnswersFeaturizer(cfg),
                               shard=grain.sharding.ShardOptions(shard_index=p, shard_count=2))
    shards.append([q for b in ds for q in _qids(b)])
  all_qids = {src[i]["qid"].decode() for i in range(len(src))}
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == all_qids and len(shards[0]) + len(shards[1]) == len(all_qids)
  # Three processes over 16 records: 6 + 5 + 5, still disjoint and complete.
  idx = [list(pipeline.shard_indices(16, grain.sharding.ShardOptions(p, 3))) for p in range(3)]
  assert sorted(sum(idx, [])) == list(range(16)) and [len(i) for i in idx] == [6, 5, 5]


def test_iterator_state_restores_through_orbax(synth_dir, tmp_path):
  src = pipeline.open_source(synth_dir, "train")
  cfg = _cfg()
  make = lambda: iter(pipeline.make_dataset(src, cfg, features.AnswersFeaturizer(cfg)))  # noqa: E731
  it = make()
  for _ in range(5):  # past the first epoch boundary
    next(it)
  pipeline.save_iterator(str(tmp_path / "ckpt"), 5, it)
  expected = [next(it) for _ in range(4)]
  it2 = pipeline.restore_iterator(str(tmp_path / "ckpt"), 5, make())
  for want in expected:   # every array of every batch, not only the qids
    got = next(it2)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert len({tuple(_qids(b)) for b in expected}) == 4            # the four batches differ from each other


def test_worker_processes_match_in_process(synth_dir):
  src = pipeline.open_source(synth_dir, "train")
  cfg = _cfg()
  ref = [_qids(b) for b, _ in zip(pipeline.make_dataset(src, cfg, features.AnswersFeaturizer(cfg)), range(3))]
  cfg_w = _cfg(worker_count=2)
  got = [_qids(b) for b, _ in zip(pipeline.make_dataset(src, cfg_w, features.AnswersFeaturizer(cfg_w)), range(3))]
  assert got == ref


def test_errors_are_clear():
  with pytest.raises(ValueError, match="max 1"):
    features.encode_strings(["a", "b"], 1, 8, where="row qid='q'")
  with pytest.raises(ValueError, match="row qid='q'.*static length 2"):
    features.pad_tokens([1, 2, 3], 2, 0, "left", where="row qid='q'")
  ids, mask = features.pad_tokens([7, 8], 4, 0, "left")
  assert ids.tolist() == [0, 0, 7, 8] and mask.tolist() == [0, 0, 1, 1]
  ids, mask = features.pad_tokens([7, 8], 4, 0, "right")
  assert ids.tolist() == [7, 8, 0, 0] and mask.tolist() == [1, 1, 0, 0]
