"""Issue 11 acceptance (slow): `python train.py` on the default tiny config learns to ruminate.

(a) held-out accuracy with rumination beats single-pass by >= 30 points; (b) the last RL stage is >= 5 points
above the SFT stage before it; the report carries rumination and invalid-action rates. The default config does
NOT meet (a)/(b) yet (see the README's results section for the measured figures); this test is the target.
"""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_config_learns_to_ruminate(tmp_path):
  proc = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path}", f"--config.data.data_dir={tmp_path}/data"],
                        capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  stages = report["stages"]
  last = list(stages)[-1]
  ru, sp = stages[last]["rumination"], stages[last]["single_pass"]
  assert ru["accuracy"] - sp["accuracy"] >= 0.30, stages
  assert stages["rl_c"]["rumination"]["accuracy"] - stages["crp_sft"]["rumination"]["accuracy"] >= 0.05, stages
  assert all("rumination_rate" in r["rumination"] and "invalid_action_rate" in r["rumination"]
             for r in stages.values())
