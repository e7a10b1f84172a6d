"""Loading never executes code: checkpoints are safetensors + JSON, data is JSON / TFDS records, model output is
parsed by the grammar (json.loads of a matched span) and never evaluated. This test reads the package source."""
import pathlib
import re

import pytest

ROOTS = [pathlib.Path("videor4_jax"), pathlib.Path("train.py"), pathlib.Path("eval.py")]
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


def test_checkpoint_loader_reads_only_safetensors_and_json(tmp_path):
  """A directory holding only a pickle file is refused with a clear error, never unpickled."""
  import pickle
  from videor4_jax.convert.hf import CheckpointError, from_pretrained
  (tmp_path / "config.json").write_text("{}")
  with open(tmp_path / "pytorch_model.bin", "wb") as f:
    pickle.dump({"x": 1}, f)
  with pytest.raises((CheckpointError, ValueError, FileNotFoundError, KeyError)) as e:
    from_pretrained(str(tmp_path))
  assert "safetensors" in str(e.value) or "config" in str(e.value)
