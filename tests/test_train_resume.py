"""Interrupted and resumed curriculum training gives the same later metrics and final params as a run that was
never interrupted (crashes inside the SFT stage and inside the GRPO stage, between checkpoints)."""
import json

import jax
import numpy as np
import pytest

from train_fixtures import small_config
from videor4_jax.data.sources import make_source_fn
from videor4_jax.train.checkpoint import CheckpointMismatch
from videor4_jax.train.context import stage_optimizer
from videor4_jax.train.curriculum import Runner, train_examples

VOLATILE = ("time", "tokens_per_s")


class Crash(Exception):
  pass


class CrashingRunner(Runner):
  """Dies (before saving) when the global step reaches `crash_at`: the work since the last checkpoint is lost."""

  def __init__(self, *a, crash_at, **kw):
    super().__init__(*a, **kw)
    self.crash_at = crash_at

  def after_step(self, *a, **kw):
    if self.loop.global_step + 1 == self.crash_at:      # the step that ends at global step `crash_at` is lost
      self.ckpt.wait()
      raise Crash(self.crash_at)
    return super().after_step(*a, **kw)


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
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def cfg(data_dir):
  c = small_config(data_dir, drp_sft=4, rl_d=3)
  c.curriculum = "drp_sft,rl_d"
  return c


@pytest.mark.slow   # 6 min; the default suite holds mid-SFT and mid-GRPO crash resumes to identical metrics below
def test_interrupted_run_resumes_to_identical_metrics(cfg, tmp_path):
  source_fn = make_source_fn(cfg.data)
  straight = Runner(cfg, str(tmp_path / "a"), source_fn).run()
  crashes = []
  for crash_at in (3, 6):        # step 3: inside drp_sft (saved at 2); step 6: inside rl_d (saved at 4)
    with pytest.raises(Crash):
      CrashingRunner(cfg, str(tmp_path / "b"), source_fn, crash_at=crash_at).run()
    crashes.append(crash_at)
  resumed = Runner(cfg, str(tmp_path / "b"), source_fn).run()
  want, got = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
  assert set(want) == set(got)
  assert len({s for s, _ in want}) == 7 and any("reward/total" in k for _, k in want)
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff                                     # bitwise: same programs, same restored state
  from videor4_jax.convert.hf import from_pretrained
  _, p_a = from_pretrained(straight["final_checkpoint"])
  _, p_b = from_pretrained(resumed["final_checkpoint"])
  jax.tree.map(np.testing.assert_array_equal, p_a, p_b)


def _straight_crash_resume(c, tmp_path, crash_at, capsys):
  """Uninterrupted run in a/, a crash at global step `crash_at` then a resume in b/; returns (a, b, resume stdout)."""
  source_fn = make_source_fn(c.data)
  Runner(c, str(tmp_path / "a"), source_fn).run()
  with pytest.raises(Crash):
    CrashingRunner(c, str(tmp_path / "b"), source_fn, crash_at=crash_at).run()
  capsys.readouterr()
  Runner(c, str(tmp_path / "b"), source_fn).run()
  return _metrics(tmp_path / "a"), _metrics(tmp_path / "b"), capsys.readouterr().out


def test_mid_grpo_resume_keeps_the_stage_start_kl_reference(data_dir, tmp_path, capsys):
  """grpo.beta > 0: the KL reference of a GRPO stage resumed mid-way is the stage's starting policy (saved when
  the stage started), not the resumed policy, so the resumed metrics (kl, loss, rewards) equal the straight run's."""
  c = small_config(data_dir, rl_d=3)
  c.curriculum, c.grpo.beta, c.checkpoint_every = "rl_d", 0.04, 1
  c.stages.rl_d.warmup_steps = 0     # update 0 must move the policy away from the reference
  c.grpo.skip_uninformative = False  # ... even on a batch without reward variance (likely at random init)
  want, got, out = _straight_crash_resume(c, tmp_path, 2, capsys)    # saved after rl_d step 1, dies after step 2
  assert "resuming at stage 'rl_d' step 1 (global step 1)" in out
  assert want[(1, "rl_d/kl")] > 0 and want[(0, "rl_d/kl")] == 0     # step 0 is the reference itself
  assert set(want) == set(got)
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff


def test_resume_in_a_stage_with_another_optimizer_structure(data_dir, tmp_path, capsys):
  """crp_sft freezes the vision tower (an extra optax.masked state) and drp_sft does not: a crash inside crp_sft
  resumes inside crp_sft (the restore target is built from the checkpointed stage's optimizer), with the same
  metrics. Resuming with a config whose optimizer differs raises an actionable error instead of silently falling
  back to an older checkpoint."""
  c = small_config(data_dir, drp_sft=1, crp_sft=3)
  c.curriculum, c.checkpoint_every = "drp_sft,crp_sft", 1
  c.stages.drp_sft.freeze_vision, c.stages.crp_sft.freeze_vision = False, True
  source_fn = make_source_fn(c.data)
  Runner(c, str(tmp_path / "a"), source_fn).run()
  with pytest.raises(Crash):       # saved at global steps 1 (drp_sft end) and 2 (crp_sft step 1), dies after 3
    CrashingRunner(c, str(tmp_path / "b"), source_fn, crash_at=3).run()
  wrong = small_config(data_dir, drp_sft=1, crp_sft=3)
  wrong.curriculum, wrong.checkpoint_every = "drp_sft,crp_sft", 1
  wrong.stages.drp_sft.freeze_vision = wrong.stages.crp_sft.freeze_vision = False
  with pytest.raises(CheckpointMismatch, match=r"checkpoints/2 .*'crp_sft'.*freeze_vision.*new workdir"):
    Runner(wrong, str(tmp_path / "b"), source_fn).run()
  capsys.readouterr()
  Runner(c, str(tmp_path / "b"), source_fn).run()
  assert "resuming at stage 'crp_sft' step 1 (global step 2)" in capsys.readouterr().out
  want, got = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
  assert set(want) == set(got) and len({s for s, _ in want}) == 4
  diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  assert not diff, diff


@pytest.mark.parametrize("override,match", [
    (lambda c: setattr(c.grpo, "num_generations", 1), r"config\.grpo: GRPO needs num_generations >= 2.*"
                                                       r"set grpo\.num_generations"),
    (lambda c: c.grpo.update(filter_zero_varience=True), r"config\.grpo: unknown field.*filter_zero_varience"),
    (lambda c: c.grpo.update(aggregation="mean"), r"config\.grpo: aggregation='mean'"),
    (lambda c: setattr(c.stages.rl_d.rewards, "accuracy", "bleu"), r"config\.stages\.rl_d\.rewards: .*'bleu'"),
    (lambda c: c.stages.rl_d.update(grad_accum=0), r"config\.stages\.rl_d: optimizer.*grad_accum"),
    (lambda c: setattr(c.stages.rl_d, "trajectories", "atomic"), r"config\.stages\.rl_d\.trajectories='atomic'"),
])
def test_runner_rejects_bad_stage_config_before_any_stage_runs(data_dir, tmp_path, override, match):
  """The GRPO / reward / optimizer settings of every stage are checked when the Runner is built, not when the
  stage starts (here rl_d comes after drp_sft, which would otherwise train first)."""
  c = small_config(data_dir)
  c.curriculum = "drp_sft,rl_d"
  override(c)
  with pytest.raises(ValueError, match=match):
    Runner(c, str(tmp_path / "w"), make_source_fn(c.data))
  assert not (tmp_path / "w").exists()


def test_stage_grad_accum_reaches_the_optimizer(data_dir, tmp_path):
  import jax.numpy as jnp
  import optax
  c = small_config(data_dir, rl_d=4)
  c.curriculum = "drp_sft,rl_d"
  c.stages.rl_d.update(grad_accum=2)
  Runner(c, str(tmp_path / "w"), make_source_fn(c.data))        # the config the Runner accepts
  params = {"w": jnp.ones(3)}
  assert isinstance(stage_optimizer(c, "rl_d").init(params), optax.MultiStepsState)
  assert not isinstance(stage_optimizer(c, "drp_sft").init(params), optax.MultiStepsState)


def test_stage_trajectories_pick_the_training_examples(data_dir, tmp_path):
  """SFT stages train on, and GRPO stages draw prompts from, the training examples of the stage's kind."""
  c = small_config(data_dir)
  c.stages.rl_d.trajectories, c.stages.rl_c.trajectories = "compositional", "all"
  c.stages.crp_sft.trajectories = "compositional"        # the tiny config's CRP-SFT takes "all"
  source_fn = make_source_fn(c.data)
  Runner(c, str(tmp_path / "w"), source_fn)
  kind = lambda ex: ex["kind"].decode() if isinstance(ex["kind"], bytes) else ex["kind"]   # noqa: E731
  def kinds(stage):
    src = train_examples(c, source_fn, stage)
    return [kind(src[i]) for i in range(len(src))]
  everything = kinds("rl_c")
  assert {"deliberate", "compositional"} <= set(everything)
  assert set(kinds("drp_sft")) == {"deliberate"} and set(kinds("rl_d")) == {"compositional"}
  assert len(kinds("drp_sft")) + len(kinds("crp_sft")) == everything.count("deliberate") + everything.count(
      "compositional")
