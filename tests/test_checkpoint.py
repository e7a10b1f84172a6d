"""Checkpoint round trip, keep-N, fallback from a corrupt latest step, restore onto other meshes, grain resume."""
import os

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


def test_round_trip_keep_n_and_corrupt_fallback(tmp_path):
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
  step, state, _, _ = Checkpointer(str(tmp_path), keep=2).restore_latest(abstract_like(_state()))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, state, _state(2))


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
