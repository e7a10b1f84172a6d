"""The row-group rollout (rumination/row_groups.py: prompts split over devices, one independent copy of the rollout
per device) against the ungrouped rollout."""
import jax
import numpy as np
import pytest

from rumination_fixtures import make_prompts, make_setup
from videor4_jax.rumination.rollout import make_rollout_fn
from videor4_jax.rumination.row_groups import make_row_group_rollout_fn


@pytest.fixture(scope="module")
def setup():
  return make_setup()


def test_row_groups_give_the_ungrouped_rollout(setup):
  """Sampled (not greedy), 4 prompts x 2 generations in 2 groups on 2 CPU devices: every row gets the tokens,
  actions and log-probs it gets in the ungrouped rollout, because a group's rows draw their keys by their index in
  the whole batch (a group keyed by its own row indices would repeat group 0's samples in group 1). The work counts
  add up over the groups."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=3)
  key = jax.random.key(3)
  want = make_rollout_fn(env, num_generations=2)(params, prompts, key)
  got = make_row_group_rollout_fn(env, jax.devices()[:2], num_generations=2)(params, prompts, key)
  assert len(got.tokens.sharding.device_set) == 2
  assert np.asarray(want.actions.called).any() and not np.asarray(want.answered).all()
  for field in ("tokens", "valid", "loss_mask", "forced", "positions", "mm_types", "length", "num_generated",
                "answered", "obs_valid", "obs_grid", "region_mask", "last_clip_groups"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)), err_msg=field)
  for a, b in zip(jax.tree.leaves(got.actions), jax.tree.leaves(want.actions)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for field in ("logp", "obs_pixels", "video_feats", "region_feats"):
    np.testing.assert_allclose(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)), atol=1e-5,
                               rtol=1e-5, err_msg=field)
  gw, ww = jax.device_get(got.work), jax.device_get(want.work)
  for field in ("prompt_token_rows", "prompt_patches", "decoding_rows_r", "decode_iterations_r"):
    np.testing.assert_array_equal(getattr(gw, field), getattr(ww, field), err_msg=field)


def test_row_groups_reject_an_uneven_split(setup):
  tok, config, params, env = setup
  fn = make_row_group_rollout_fn(env, jax.devices()[:2], num_generations=2)
  with pytest.raises(ValueError, match="3 prompts do not split into 2 equal row groups"):
    fn(params, make_prompts(tok, config, 3, seed=3), jax.random.key(0))
