"""Each reward on hand-computed cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from videor4_jax.processing import chat
from videor4_jax.rl import rewards


def test_accuracy_and_format():
  final = "<think>the sign says 42</think> <answer>42</answer><|im_end|>"
  assert chat.extract_answer(final) == "42"
  assert rewards.accuracy_reward("42", ["42"]) == 1.0
  assert rewards.accuracy_reward("421", ["42"], "anls") == pytest.approx(2 / 3)
  assert rewards.accuracy_reward("421", ["42"], "exact_match") == 0.0
  assert rewards.format_reward(final, [0, 0]) == 1.0
  assert rewards.format_reward(final, [0, 3]) == 0.0                     # a tool call failed
  assert rewards.format_reward("<answer>42</answer>", []) == 0.0         # no think
  assert rewards.format_reward("<think>x</think><answer>4", []) == 0.0   # unclosed


def test_diversity_hand_computed():
  f = jnp.array([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [9.0, 9.0]]])
  m = jnp.array([[True, True, True, False]])
  # pairwise cosine distances: (1,2): 1, (1,3): 2, (2,3): 1 -> mean over ordered pairs = 8/6
  np.testing.assert_allclose(np.asarray(rewards.diversity_reward(f, m)), [4 / 3], atol=1e-6)
  assert float(rewards.diversity_reward(f, jnp.array([[True, False, False, False]]))[0]) == 0.0


def test_representativeness_hand_computed():
  v = jnp.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 5.0]]])     # normalized: e1, e2, e1, e2
  sel = jnp.array([[True, False, False, False]])
  # distances to the nearest selected (e1): 0, sqrt2, 0, sqrt2 -> mean sqrt2/2
  np.testing.assert_allclose(np.asarray(rewards.representativeness_reward(v, sel)), [np.exp(-np.sqrt(2) / 2)],
                             atol=1e-6)
  both = jnp.array([[True, True, False, False]])
  np.testing.assert_allclose(np.asarray(rewards.representativeness_reward(v, both)), [1.0], atol=1e-6)
  assert float(rewards.representativeness_reward(v, jnp.zeros((1, 4), bool))[0]) == 0.0


def test_curiosity_hand_computed():
  n = jnp.array([0, 0, 0, 2, 1, 1, 1, 1])       # group 1: rapr 0.25; group 2: rapr 1.0
  r = rewards.curiosity_reward(n, 4, h=0.3, n=1, alpha=0.5, beta=0.05)
  want = [0, 0, 0, 0.5 * 0.05 - 0.05, 0, 0, 0, 0]
  np.testing.assert_allclose(np.asarray(r), want, atol=1e-6)


def test_total_is_the_weighted_sum_with_every_term_non_zero():
  """Row 0 has every term non-zero and non-default weights on all of them, so dropping or swapping any weight
  changes its total; the expected values are worked out by hand from the inputs, not from the function's terms."""
  cfg = rewards.RewardConfig(w_format=0.5, w_div=0.3, w_rep=0.2, w_cur=2.0)
  out = rewards.total_reward(
      cfg, acc_b=[1.0, 0.25], fmt_b=[1.0, 0.0],
      # crops: row 0 two orthogonal regions (1 - cos = 1), row 1 two at 45 degrees (1 - 1/sqrt2)
      region_feats=jnp.array([[[1.0, 0.0], [0.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]]),
      region_mask=jnp.ones((2, 2), bool),
      # global groups e1, e2 with the last clip on group 0 -> mean nearest distance sqrt2 / 2; row 1 on e1, e1
      video_feats=jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [4.0, 0.0]]]),
      last_clip=jnp.array([[True, False], [False, True]]),
      # one group of 2: rapr = 0.5 > H, so only the efficiency penalty: 0.05 * min(1 - 3, 0) = -0.1 on row 0
      num_actions_b=jnp.array([3, 0]), group_size=2)
  div, rep, cur = [1.0, 1 - 1 / np.sqrt(2)], [np.exp(-np.sqrt(2) / 2), 1.0], [-0.1, 0.0]
  for k, v in (("diversity", div), ("representativeness", rep), ("curiosity", cur)):
    np.testing.assert_allclose(np.asarray(out[k]), v, atol=1e-6, err_msg=k)
  want = [1.0 + 0.5 * 1.0 + 0.3 * 1.0 + 0.2 * np.exp(-np.sqrt(2) / 2) + 2.0 * -0.1,    # 1.698614
          0.25 + 0.5 * 0.0 + 0.3 * (1 - 1 / np.sqrt(2)) + 0.2 * 1.0 + 2.0 * 0.0]     # 0.537868
  np.testing.assert_allclose(np.asarray(out["total"]), want, atol=1e-6)
