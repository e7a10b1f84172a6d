"""Interrupted and resumed curriculum training gives the same later metrics and final params as a run that was
never interrupted (crashes inside the SFT stage and inside the GRPO stage, between checkpoints)."""
import json

import jax
import numpy as np
import pytest

from train_fixtures import small_config
from videor4_jax.data.sources import make_source_fn
from videor4_jax.processing.tokenizer import Tokenizer
from videor4_jax.train.curriculum import Runner

VOLATILE = ("time", "tokens_per_s")


class Crash(Exception):
  pass


class CrashingRunner(Runner):
  """Dies (before saving) when the global step reaches `crash_at`: the work since the last checkpoint is lost."""

  def __init__(self, *a, crash_at, **kw):
    super().__init__(*a, **kw)
    self.crash_at = crash_at

  def _maybe_save(self, *a, **kw):
    if self.global_step == self.crash_at:
      self.ckpt.wait()
      raise Crash(self.global_step)
    return super()._maybe_save(*a, **kw)


def _metrics(workdir):
  """Last value written for every (step, metric): a resumed run rewrites the steps it redoes."""
  out = {}
  with open(f"{workdir}/logs/metrics.jsonl") as f:
    for line in f:
      rec = json.loads(line)
      for k, v in rec.items():
        if k not in VOLATILE and not k.endswith("tokens_per_s") and k != "step":
          out[(rec["step"], k)] = v
  return out


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  c = small_config(tmp_path_factory.mktemp("data"), drp_sft=4, rl_d=3)
  c.curriculum = "drp_sft,rl_d"
  return c


def test_interrupted_run_resumes_to_identical_metrics(cfg, tmp_path):
  tok = Tokenizer.tiny()
  source_fn = make_source_fn(cfg.data)
  straight = Runner(cfg, str(tmp_path / "a"), source_fn, tok).run()
  crashes = []
  for crash_at in (3, 6):        # step 3: inside drp_sft (saved at 2); step 6: inside rl_d (saved at 4)
    with pytest.raises(Crash):
      CrashingRunner(cfg, str(tmp_path / "b"), source_fn, tok, crash_at=crash_at).run()
    crashes.append(crash_at)
  resumed = Runner(cfg, str(tmp_path / "b"), source_fn, tok).run()
  want, got = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
  assert set(want) == set(got)
  assert len({s for s, _ in want}) == 7 and any("reward/total" in k for _, k in want)
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff                                     # bitwise: same programs, same restored state
  from videor4_jax.convert.hf import from_pretrained
  _, p_a = from_pretrained(straight["final_checkpoint"])
  _, p_b = from_pretrained(resumed["final_checkpoint"])
  jax.tree.map(np.testing.assert_array_equal, p_a, p_b)
