"""learning.png: drawn from report.json and the GRPO steps of metrics.jsonl (train/plots.py)."""
import json

import numpy as np
from PIL import Image

from videor4_jax.train import plots


def _summary(acc):
  return {"accuracy": acc}


def test_learning_png_from_a_workdir(tmp_path):
  stages = {"drp_sft": (0.4, 0.0), "rl_d": (0.7, 0.0), "crp_sft": (0.5, 0.1), "rl_c": (0.9, 0.1)}
  report = {"stages": {s: {"rumination": _summary(a), "single_pass": _summary(b)} for s, (a, b) in stages.items()}}
  (tmp_path / "report.json").write_text(json.dumps(report))
  (tmp_path / "logs").mkdir()
  recs = [{"step": 5, "drp_sft/loss": 1.0}]
  recs += [{"step": 400 + i, "rl_d/reward/total": 0.2 + 0.05 * i, "rl_d/reward/accuracy": 0.1 * i} for i in range(5)]
  recs += [{"step": 402, "rl_d/reward/total": 0.5, "rl_d/reward/accuracy": 0.3}]    # a resumed step: the last wins
  recs += [{"step": 600 + i, "rl_c/reward/total": 1.0, "rl_c/reward/accuracy": 0.8} for i in range(3)]
  (tmp_path / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  rewards = plots.grpo_rewards(str(tmp_path / "logs" / "metrics.jsonl"))
  assert list(rewards) == ["rl_d", "rl_c"] and len(rewards["rl_d"]) == 5 and len(rewards["rl_c"]) == 3
  assert rewards["rl_d"][2] == (0.5, 0.3)
  path = plots.write_for_workdir(str(tmp_path))
  img = np.asarray(Image.open(path).convert("RGB"))
  assert img.shape == (plots.H, plots.W, 3)
  has = lambda region, colour: bool(np.all(region == colour, -1).any())
  left, right = img[:, :550], img[:, 550:]
  assert has(left, plots.BLUE) and has(left, plots.ORANGE)       # both accuracy curves
  assert has(right, plots.GREEN) and has(right, plots.BLUE)      # total and accuracy reward curves
