"""colab/quickstart.ipynb runs top to bottom (at a reduced size) in a fresh kernel."""
import os

import nbformat
import pytest
from nbclient import NotebookClient


@pytest.mark.slow   # 2 min: it runs the tiny curriculum, which the default suite runs through the Runner
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  nb = nbformat.read("colab/quickstart.ipynb", as_version=4)
  monkeypatch.setenv("VIDEOR4_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("VIDEOR4_ROOT", os.getcwd())
  monkeypatch.setenv("VIDEOR4_WORKDIR", str(tmp_path / "run"))
  NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "final checkpoint:" in outputs and "logits (1," in outputs
  assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
  assert (tmp_path / "run" / "trace" / "index.html").exists()
