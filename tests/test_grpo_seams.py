"""The GRPO stage's reward wiring, end to end through the Runner: a scripted correct row per group gets the
accuracy reward and the positive advantage, in the train batch, on that row.

The rollout is the real jitted one; afterwards each row's generated tokens are replaced by a scripted final answer,
chosen from the row's own prompt (its record tag), so no row order is assumed by the script. The stage must pair
every row with its own prompt's golds.
"""
import contextlib
import io

import jax
import numpy as np
import pytest

from scripted_policy import Tagged, row_tag
from train_fixtures import small_config
from videor4_jax.rumination.trajectory import Trajectory


def _script_rows(tok, traj: Trajectory, answer_for_row):
  """(trajectory, row tags): each row's generation replaced by `answer_for_row(b, tag)`'s text; no tool call,
  positions continuing the prompt's text positions, behaviour log-prob -1 per token."""
  t = jax.tree.map(np.array, jax.device_get(traj))
  rows, S = t.tokens.shape
  tags = []
  for b in range(rows):
    n = int(np.flatnonzero(t.loss_mask[b] > 0)[0])        # the prompt fills slots [0, n)
    tags.append(row_tag(tok, t.tokens[b, :n]))
    gen = tok.encode(answer_for_row(b, tags[-1]))
    t.tokens[b, n:] = tok.pad_id
    t.tokens[b, n:n + len(gen)] = gen
    t.valid[b] = np.arange(S) < n + len(gen)
    t.loss_mask[b] = 0
    t.loss_mask[b, n:n + len(gen)] = 1
    t.logp[b] = -t.loss_mask[b]
    t.forced[b] = False
    t.mm_types[b, n:] = 0
    t.positions[:, b, n:] = t.positions[:, b, n - 1:n] + 1 + np.arange(S - n)
    t.length[b], t.num_generated[b] = n + len(gen), len(gen)
  for a in ("called", "kind", "error", "num_frames"):
    getattr(t.actions, a)[:] = 0
  t.obs_valid[:], t.obs_grid[:], t.region_mask[:], t.last_clip_groups[:], t.answered[:] = 0, 0, False, False, True
  return t, tags


def test_scripted_correct_row_gets_the_reward_and_the_advantage(tmp_path, monkeypatch):
  """2 prompts x G=2 rows. For each prompt the LAST row carrying its tag answers its gold, the other row answers
  wrongly: accuracy is [0, 1, 0, 1] and the train batch's advantages are [-a, a, -a, a], a = 0.5 / (0.5 + eps)
  (population std of {0.2, 1.2} is 0.5; format 1 everywhere, no actions: the other terms are 0). A stage pairing
  rows with golds in another order (e.g. tiled, row % B) gives the wrong rows the reward."""
  from videor4_jax.data.sources import make_source_fn
  from videor4_jax.rl import rewards
  from videor4_jax.train import context
  from videor4_jax.train.curriculum import Runner
  cfg = small_config(tmp_path / "data", rl_d=1)
  cfg.curriculum = "rl_d"
  G, B = cfg.grpo.num_generations, cfg.stages.rl_d.batch_size
  assert (G, B) == (2, 2)
  real_source_fn = make_source_fn(cfg.data)
  golds = lambda i: [chr(ord("A") + i) * 3]    # distinct golds with no common character: ANLS 0 across records
  source_fn = lambda split: Tagged(real_source_fn(split), golds)
  seen = dict(tags=[], acc=[], adv=[])

  def make_scripted(env, **kw):
    real = real_make_rollout_fn(env, **kw)

    def fn(params, prompts, key):
      traj = real(params, prompts, key)
      host_tags = [row_tag(tok, np.asarray(r)) for r in jax.device_get(prompts["input_ids"])]
      last_row = {tag: b for b, tag in enumerate(np.repeat(host_tags, G))}

      def answer(b, tag):
        text = golds(tag)[0] if last_row[tag] == b else "zz"
        return f"<think>r</think><answer>{text}</answer><|im_end|>"
      scripted, tags = _script_rows(tok, traj, answer)
      seen["tags"].append(tags)
      return scripted
    return fn

  def spy_score_texts(*a, **kw):
    out = real_score_texts(*a, **kw)
    seen["acc"].append(out[0])
    return out

  def spy_grpo_step(config, gcfg, state, batch, ref_params=None):
    jax.debug.callback(lambda adv: seen["adv"].append(np.asarray(adv)), batch["advantages"])
    return real_grpo_step(config, gcfg, state, batch, ref_params)

  real_make_rollout_fn, real_score_texts, real_grpo_step = (context.make_rollout_fn, rewards.score_texts,
                                                            context.grpo_step)
  monkeypatch.setattr(context, "make_rollout_fn", make_scripted)
  monkeypatch.setattr(rewards, "score_texts", spy_score_texts)
  monkeypatch.setattr(context, "grpo_step", spy_grpo_step)
  runner = Runner(cfg, str(tmp_path / "run"), source_fn)
  tok = runner.tok
  with contextlib.redirect_stdout(io.StringIO()):
    runner.run()
  tags = seen["tags"][0]
  assert tags[0] == tags[1] != tags[2] == tags[3], tags     # the rollout repeats each prompt G times, in a row
  np.testing.assert_array_equal(seen["acc"][0], [0, 1, 0, 1])
  assert len(seen["tags"]) == 1       # every group informative: dynamic sampling stopped after one rollout batch
  a = 0.5 / (0.5 + cfg.grpo.adv_eps)
  np.testing.assert_allclose(seen["adv"][0], [-a, a, -a, a], rtol=1e-6)
