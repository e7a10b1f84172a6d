"""Loading never executes code: checkpoints are safetensors + JSON, data is JSON / TFDS records, model output is
parsed by the grammar (json.loads of a matched span) and never evaluated. This test reads the package source."""
import pathlib
import re

import pytest

ROOTS = [pathlib.Path("videor4_jax"), pathlib.Path("bench"), pathlib.Path("configs"), pathlib.Path("train.py"),
         pathlib.Path("eval.py")]
FORBIDDEN = {
    r"\bimport pickle\b|\bfrom pickle\b|\bcloudpickle\b|\bdill\b": "pickle-family deserialization",
    r"\btorch\.load\(": "torch.load (pickle inside)",
    r"allow_pickle\s*=\s*True": "numpy pickle loading",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"\byaml\.load\((?!.*SafeLoader)": "unsafe yaml",
    r"\bsubprocess\.[a-z_]+\([^)]*shell\s*=\s*True": "shell=True",
}


def _sources():
  for root in ROOTS:
    yield from ([root] if root.is_file() else sorted(root.rglob("*.py")))


@pytest.mark.parametrize("pattern, what", list(FORBIDDEN.items()))
def test_no_code_executing_loaders(pattern, what):
  hits = [f"{p}:{i}" for p in _sources() for i, line in enumerate(p.read_text().splitlines(), 1)
          if re.search(pattern, line) and not line.lstrip().startswith("#")]
  assert not hits, f"{what} in {hits}"


def test_roots_are_searched():
  files = {str(p) for p in _sources()}
  assert {"train.py", "eval.py", "videor4_jax/convert/hf.py", "videor4_jax/train/checkpoint.py"} <= files
  assert any(f.startswith("bench/") for f in files) and any(f.startswith("configs/") for f in files)


class _Payload:
  """Unpickling this calls Path(sentinel).touch(): proof that a loader executed code from the file."""

  def __init__(self, sentinel):
    self.sentinel = sentinel

  def __reduce__(self):
    return pathlib.Path.touch, (pathlib.Path(self.sentinel),)


def _valid_config_json(path):
  import json
  import sys
  sys.path.insert(0, "configs")
  import tiny
  from videor4_jax.convert.hf import config_to_hf_dict
  from videor4_jax.model.config import model_config_from_dict
  m = tiny.get_config().model.to_dict()
  (path / "config.json").write_text(json.dumps(config_to_hf_dict(model_config_from_dict(m))))


def test_checkpoint_loader_never_unpickles(tmp_path):
  """A checkpoint directory with a valid config.json whose weights are a pickle (pytorch_model.bin, as old HF
  checkpoints ship them) is refused with an error asking for safetensors, and the pickle's payload never runs."""
  import pickle
  from videor4_jax.convert.hf import CheckpointError, from_pretrained
  armed = tmp_path / "armed"
  pickle.loads(pickle.dumps(_Payload(armed)))       # the payload is live: unpickling it does create the file
  assert armed.exists()
  ckpt, sentinel = tmp_path / "ckpt", tmp_path / "sentinel"
  ckpt.mkdir()
  _valid_config_json(ckpt)
  (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(sentinel)}))
  with pytest.raises(CheckpointError, match=rf"{ckpt}: no \*\.safetensors files"):
    from_pretrained(str(ckpt))
  assert not sentinel.exists()


def test_train_checkpoint_restore_uses_no_pickle(tmp_path, monkeypatch):
  """Orbax state + JSON meta + grain iterator restore with every pickle entry point disabled."""
  import pickle
  import grain
  import jax.numpy as jnp
  from videor4_jax.train.checkpoint import Checkpointer, abstract_like
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(4)}
  it = iter(grain.MapDataset.range(20).shuffle(seed=1).batch(2).to_iter_dataset())
  next(it)
  ck = Checkpointer(str(tmp_path))
  ck.save(4, state, {"stage": "drp_sft", "step_in_stage": 4}, data_iter=it)
  ck.wait()
  want = next(it).tolist()

  def refuse(*a, **k):
    raise AssertionError("pickle used during restore")
  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  it2 = iter(grain.MapDataset.range(20).shuffle(seed=1).batch(2).to_iter_dataset())
  step, got, meta, _ = Checkpointer(str(tmp_path)).restore_latest(abstract_like(state), data_iter=it2)
  assert step == 4 and meta["step_in_stage"] == 4 and got["w"].tolist() == state["w"].tolist()
  assert next(it2).tolist() == want
