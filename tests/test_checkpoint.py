"""Checkpoint round trip, keep-N, fallback from a corrupt latest step, restore onto other meshes, grain resume."""
import logging
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from videor4_jax.parallel.sharding import make_mesh
from videor4_jax.train.checkpoint import Checkpointer, abstract_like


def _state(seed=0):
  k = jax.random.key(seed)
  return {"params": {"w": jax.random.normal(k, (8, 16)), "b": jnp.arange(16.0)}, "step": jnp.int32(seed)}


def test_round_trip_keep_n_and_corrupt_fallback(tmp_path, caplog):
  ck = Checkpointer(str(tmp_path), keep=2)
  for s in (1, 2, 3):
    ck.save(s, _state(s), {"stage": "drp_sft", "step_in_stage": s})
  ck.wait()
  assert sorted(ck.manager.all_steps()) == [2, 3]
  step, state, meta, _ = ck.restore_latest(abstract_like(_state()))
  assert step == 3 and meta["stage"] == "drp_sft"
  jax.tree.map(np.testing.assert_array_equal, state, _state(3))
  # Truncate every data file of the newest step: restore falls back to step 2.
  for root, _, files in os.walk(tmp_path / "3"):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "r+b") as fh:
        fh.truncate(max(0, os.path.getsize(p) // 3))
  with caplog.at_level(logging.WARNING, logger="videor4_jax.train.checkpoint"):
    step, state, _, _ = Checkpointer(str(tmp_path), keep=2).restore_latest(abstract_like(_state()))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, state, _state(2))
  warned = [r.getMessage() for r in caplog.records if r.name == "videor4_jax.train.checkpoint"]
  assert any(f"checkpoint {tmp_path}/3 is unreadable" in m and "falling back" in m for m in warned), warned


def test_unfinalized_newest_step_is_ignored_with_a_message(tmp_path, caplog):
  """A save killed midway leaves `<step>.orbax-checkpoint-tmp-<time>` with partial files (Orbax renames it to
  `<step>` only when complete): restore takes the last complete step and the warning names the directory and
  the step that was lost."""
  ck = Checkpointer(str(tmp_path), keep=3)
  for s in (1, 2):
    ck.save(s, _state(s), {"stage": "rl_d", "step_in_stage": s})
  ck.wait()
  # What a kill during the save of step 3 leaves: step 2's layout, the array metadata not yet written and one
  # data file cut short.
  tmp = tmp_path / "3.orbax-checkpoint-tmp-1764000000123456"
  shutil.copytree(tmp_path / "2", tmp)
  os.remove(tmp / "state" / "_METADATA")
  data = sorted(p for p in (tmp / "state").rglob("*") if p.is_file() and p.parent.name == "d")
  data[0].write_bytes(data[0].read_bytes()[:7])
  with caplog.at_level(logging.WARNING, logger="videor4_jax.train.checkpoint"):
    step, state, meta, _ = Checkpointer(str(tmp_path), keep=3).restore_latest(abstract_like(_state()))
  assert step == 2 and meta == {"stage": "rl_d", "step_in_stage": 2}
  jax.tree.map(np.testing.assert_array_equal, state, _state(2))
  warned = [r.getMessage() for r in caplog.records if r.name == "videor4_jax.train.checkpoint"]
  assert len(warned) == 1, warned
  assert f"checkpoint {tmp_path}/3 was never finalized" in warned[0]
  assert str(tmp) in warned[0] and "newest finalized step is 2" in warned[0]
  # A later complete save of step 3 supersedes the leftover: no warning any more.
  ck = Checkpointer(str(tmp_path), keep=3)
  ck.save(3, _state(3), {"stage": "rl_d", "step_in_stage": 3})
  ck.wait()
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="videor4_jax.train.checkpoint"):
    assert Checkpointer(str(tmp_path), keep=3).restore_latest(abstract_like(_state()))[0] == 3
  assert not [r for r in caplog.records if r.name == "videor4_jax.train.checkpoint"]


def test_restore_onto_other_mesh_shapes(tmp_path):
  mesh = make_mesh((2, 2, 2))
  sh = {"params": {"w": NamedSharding(mesh, P("fsdp", "tensor")), "b": NamedSharding(mesh, P("tensor"))},
        "step": NamedSharding(mesh, P())}
  state = jax.device_put(_state(5), sh)
  ck = Checkpointer(str(tmp_path))
  ck.save(5, state, {"stage": "x"})
  ck.wait()
  for shape in ((1, 4, 2), (8, 1, 1)):
    m2 = make_mesh(shape)
    sh2 = {"params": {"w": NamedSharding(m2, P(("data", "fsdp"), None)), "b": NamedSharding(m2, P(None))},
           "step": NamedSharding(m2, P())}
    _, restored, _, _ = ck.restore_latest(abstract_like(state, sh2))
    assert restored["params"]["w"].sharding == sh2["params"]["w"]
    jax.tree.map(np.testing.assert_array_equal, restored, _state(5))


def test_grain_iterator_resumes_identically(tmp_path):
  ds = grain.MapDataset.range(100).shuffle(seed=3).map(lambda x: x * 2).batch(4).to_iter_dataset()
  it = iter(ds)
  for _ in range(3):
    next(it)
  ck = Checkpointer(str(tmp_path))
  ck.save(3, _state(), {"stage": "s"}, data_iter=it)
  ck.wait()
  want = [next(it).tolist() for _ in range(3)]
  it2 = iter(ds)
  ck.restore_latest(abstract_like(_state()), data_iter=it2)
  assert [next(it2).tolist() for _ in range(3)] == want
