"""SFT overfits a small batch; GRPO on a toy reward raises the mean reward; the sharded step equals single-device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rumination_fixtures import make_prompts, make_setup
from videor4_jax.processing.tokenizer import Tokenizer
from videor4_jax.rl import grpo
from videor4_jax.rumination.rollout import make_rollout_fn
from videor4_jax.train.optim import OptimConfig, make_optimizer
from videor4_jax.train.steps import TrainState, grpo_step, sequence_logprobs, sft_step


@functools.lru_cache(maxsize=None)
def sft_batch(n=2, seed=0):
  """Teacher-forced batches from greedy rollouts of the fixture model (any trajectory is a valid SFT target).
  Rolled out once per (n, seed) for the module: the batches are immutable arrays and the rollout compile is
  the slow part."""
  tok, config, params, env = make_setup(seed=seed)
  prompts = make_prompts(tok, config, n, seed=seed)
  traj = make_rollout_fn(env, greedy=True)(params, prompts, jax.random.key(seed))
  return dict(tokens=traj.tokens, positions=traj.positions, valid=traj.valid, mm_types=traj.mm_types,
              loss_mask=traj.loss_mask, video_pixels=traj.video_pixels, video_grid=traj.video_grid,
              obs_pixels=traj.obs_pixels, obs_grid=traj.obs_grid, logp=traj.logp), traj


def test_sft_overfits_a_small_batch():
  tok, config, params, env = make_setup()
  batch, _ = sft_batch()
  # clip_norm 1: the biased fixture starts at loss ~38 with huge gradients; at clip 10 Adam overshoots and the
  # loss hovers near 0.13 after 150 steps (measured), at clip 1 it reaches 4e-4.
  state = TrainState.create(params, make_optimizer(OptimConfig(lr=1e-2, warmup_steps=10, total_steps=150,
                                                                end_lr_ratio=1.0, weight_decay=0.0,
                                                                clip_norm=1.0)))
  step = jax.jit(functools.partial(sft_step, config))
  losses = []
  for _ in range(150):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.05, losses[::15]


def _p_crop(config, params, tok, prompts):
  """Mean probability the policy gives to choosing `crop` right after `<tool_call>{"name": "` (teacher forced)."""
  from videor4_jax.model import vlm
  from videor4_jax.processing import grammar
  from videor4_jax.rumination.env import make_env
  prefix = [tok.tool_call_start_id] + tok.encode(grammar.OPEN)
  (crop_id,), (clip_id,) = tok.encode(grammar.CROP_HEAD), tok.encode(grammar.CLIP_HEAD)
  ids = prompts["input_ids"]
  n = prompts["attention_mask"].sum(1)
  rows = np.full((ids.shape[0], ids.shape[1] + len(prefix)), tok.pad_id, np.int32)
  for b in range(ids.shape[0]):
    rows[b, :n[b]] = ids[b, :n[b]]
    rows[b, n[b]:n[b] + len(prefix)] = prefix
  logits = videor4_jax_forward(config, params, rows, prompts)
  last = logits[np.arange(ids.shape[0]), n + len(prefix) - 1]
  p = jax.nn.softmax(last[:, [crop_id, clip_id]], -1)[:, 0]
  return float(p.mean())


def videor4_jax_forward(config, params, rows, prompts):
  import videor4_jax
  mask = (rows != Tokenizer.tiny().pad_id).astype(np.int32)
  return np.asarray(videor4_jax.forward(config, params, rows, mask,
                                        pixel_values_videos=prompts["pixel_values_videos"].reshape(
                                            -1, prompts["pixel_values_videos"].shape[-1]),
                                        video_grid_thw=prompts["video_grid_thw"]))


@pytest.mark.slow   # 1 min; GRPO raising held-out accuracy stays in the default suite (test_learning.py)
def test_grpo_raises_a_toy_reward():
  """Toy reward: 1 for rollouts whose first action is a crop. GRPO raises the policy's probability of choosing
  crop (measured by teacher forcing, a noise-free proxy of the expected reward).

  Measured (5 iterations; setup, prompt and key seed s): p_crop gain +0.129 (s = 1, this test: 0.493 -> 0.622),
  +0.168 (s = 2), +0.082 (s = 3), +0.111 (s = 4). Bound +0.04, about half the smallest. The sampled reward (mean
  over 32 rollouts) is not asserted: its change from the first batch to the mean of the last three was +0.31,
  -0.18, 0.00 and -0.13 on seeds 1-4, noise at this batch size."""
  tok, config, params, env = make_setup(seed=1)
  G = 4
  gcfg = grpo.GRPOConfig(num_generations=G, beta=0.0, aggregation="token_mean")
  state = TrainState.create(params, make_optimizer(OptimConfig(lr=1e-3, total_steps=100, end_lr_ratio=1.0,
                                                               weight_decay=0.0)))
  prompts = make_prompts(tok, config, 8, seed=1)
  roll = make_rollout_fn(env, num_generations=G)
  step = jax.jit(functools.partial(grpo_step, config, gcfg))
  p0 = _p_crop(config, params, tok, prompts)
  means = []
  for it in range(5):
    traj = roll(state.params, prompts, jax.random.key(100 + it))
    reward = (traj.actions.kind[:, 0] == 1).astype(jnp.float32)
    means.append(float(reward.mean()))
    batch = dict(tokens=traj.tokens, positions=traj.positions, valid=traj.valid, mm_types=traj.mm_types,
                 loss_mask=traj.loss_mask * ~traj.forced, video_pixels=traj.video_pixels,
                 video_grid=traj.video_grid, obs_pixels=traj.obs_pixels, obs_grid=traj.obs_grid, logp=traj.logp,
                 advantages=grpo.group_advantages(reward, G))
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  p1 = _p_crop(config, state.params, tok, prompts)
  assert p1 > p0 + 0.04, (p0, p1, means)


def test_grpo_ratio_is_one_at_temperature_0_7():
  """Rollout at temperature 0.7, trainer at the same GRPOConfig.temperature: the policy ratio of the first update
  (old = the rollout's recorded log-probs) is 1 on every trained token. The check has power: the same tokens'
  log-probs at temperature 1 differ from the recorded ones by far more than the bound."""
  from videor4_jax.train.steps import sequence_logprobs
  tok, config, params, env = make_setup()
  G, T = 2, 0.7
  traj = make_rollout_fn(env, num_generations=G, temperature=T)(params, make_prompts(tok, config, 2, seed=3),
                                                                jax.random.key(3))
  batch = dict(tokens=traj.tokens, positions=traj.positions, valid=traj.valid, mm_types=traj.mm_types,
               loss_mask=traj.loss_mask * ~traj.forced, video_pixels=traj.video_pixels, video_grid=traj.video_grid,
               obs_pixels=traj.obs_pixels, obs_grid=traj.obs_grid, logp=traj.logp,
               advantages=jnp.asarray([1.0, -1.0, -1.0, 1.0]))
  mask = np.asarray(batch["loss_mask"]) > 0
  assert mask.sum() > 30
  import optax
  gcfg = grpo.GRPOConfig(num_generations=G, beta=0.0, temperature=T, aggregation="token_mean")
  _, m = jax.jit(functools.partial(grpo_step, config, gcfg))(TrainState.create(params, optax.sgd(0.0)), batch)
  # fp32 teacher forcing vs the rollout's cached decode: |logp diff| <= 1e-5 on likely tokens (test_rollout.py),
  # so the ratio is 1 to ~1e-5; bound 1e-4.
  assert abs(float(m["ratio_mean"]) - 1) < 1e-4 and abs(float(m["ratio_max"]) - 1) < 1e-4, m
  assert float(m["clip_frac"]) == 0
  at_t1 = np.asarray(sequence_logprobs(config, params, batch, temperature=1.0))[mask]
  assert np.abs(at_t1 - np.asarray(traj.logp)[mask]).max() > 0.1


def test_nan_batch_is_skipped():
  tok, config, params, env = make_setup()
  batch, _ = sft_batch()
  batch = dict(batch, video_pixels=batch["video_pixels"].at[0, 0, 0].set(jnp.nan))
  state = TrainState.create(params, make_optimizer(OptimConfig(lr=1e-3, total_steps=10)))
  new, m = jax.jit(functools.partial(sft_step, config))(state, batch)
  assert int(m["skipped"]) == 1 and int(new.step) == 0
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)


def test_sharded_steps_equal_single_device():
  """SFT and GRPO steps on a (2, 2, 2) mesh (params by the logical rules, batch over data x fsdp) equal the
  single-device steps: loss, grad norm and updated params. The batch is the biased fixture's rollouts (they call
  tools, so observations are in it); the params are plain random ones, well conditioned (the biased fixture's
  constant residual direction makes some gradients sums of terms ~100x larger than the result)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from videor4_jax.model import vlm
  from videor4_jax.parallel.sharding import make_mesh, param_shardings, use_mesh
  tok, config, _, env = make_setup()
  params = vlm.init_params(config, jax.random.key(PARAMS_SEED))
  batch, traj = sft_batch(n=4)
  gbatch = dict(batch, loss_mask=batch["loss_mask"] * ~traj.forced,
                advantages=jnp.asarray([1.0, -1.0, 0.5, -0.5]), logp=batch["logp"] - 0.01)
  import optax
  tx = optax.sgd(1.0)   # params move by exactly -grad, so the param check below is a gradient check
  gcfg = grpo.GRPOConfig(num_generations=2, beta=0.04)
  steps = {"sft": functools.partial(sft_step, config), "grpo": functools.partial(grpo_step, config, gcfg)}
  mesh = make_mesh((2, 2, 2))
  sharded_params = jax.device_put(params, param_shardings(config, mesh))

  def put_batch(b):
    return {k: jax.device_put(v, NamedSharding(mesh, P(*([None] * (k == "positions")), ("data", "fsdp"))))
            for k, v in b.items()}

  for name, b in (("sft", batch), ("grpo", gbatch)):
    args = (params,) if name == "grpo" else ()
    want_state, want = jax.jit(steps[name])(TrainState.create(params, tx), b, *args)
    with use_mesh(mesh):
      sargs = (sharded_params,) if name == "grpo" else ()
      got_state, got = jax.jit(steps[name])(TrainState.create(sharded_params, tx), put_batch(b), *sargs)
    assert got_state.params["params"]["decoder"]["layers"]["mlp"]["down_proj"]["kernel"].sharding.spec != P()
    for k in want:
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=2e-5, atol=2e-6, err_msg=f"{name}/{k}")
    # Params moved by -grad: compare the gradients, relative to the largest gradient entry of each tensor (fp32
    # reductions over another device split); measured values at SHARDED_GRAD_TOL below.
    worst = []

    def close(path, got_p, want_p, p0):
      g_got, g_want = np.asarray(p0) - np.asarray(got_p), np.asarray(p0) - np.asarray(want_p)
      rel = np.abs(g_got - g_want).max() / (np.abs(g_want).max() + 1e-12)
      worst.append((rel, jax.tree_util.keystr(path)))
    jax.tree_util.tree_map_with_path(close, got_state.params, want_state.params, params)
    print(f"{name}: worst gradient error {max(worst)[0]:.2e} relative, at {max(worst)[1]}")
    assert max(worst)[0] < SHARDED_GRAD_TOL, (name, sorted(worst)[-3:])


def test_activation_constraints_apply_under_use_mesh():
  """Under parallel.sharding.use_mesh the decoder's activation constraints (q, k, v, attention output, MLP hidden,
  layer output: model/layers.constrain) are in the lowered step; under a bare jax.set_mesh there are no rules and
  flax drops them silently, which left XLA free to keep the 7B GRPO step's activations whole on every chip."""
  from videor4_jax.parallel.sharding import make_mesh, use_mesh
  tok, config, params, env = make_setup()
  batch, _ = sft_batch(n=4)
  state = TrainState.create(params, optax.sgd(1.0))
  mesh = make_mesh((2, 2, 2))

  def constraints(context):       # a new jit each time: JAX's trace cache does not key on flax's rules
    with context:
      text = jax.jit(functools.partial(sft_step, config)).lower(state, batch).as_text()
    return text.count("sdy.sharding_constraint") + text.count("@Sharding")

  assert constraints(jax.set_mesh(mesh)) == 0
  assert constraints(use_mesh(mesh)) >= 6


PARAMS_SEED = 0
# Worst gradient error relative to the tensor's largest gradient entry, measured with params seeds 0, 1, 2: SFT
# 4.3e-5, 6.1e-5, 3.3e-5; GRPO 1.2e-6, 8.3e-7, 1.3e-6 (fp32 sums in another order; no per-tensor exceptions).
SHARDED_GRAD_TOL = 1e-4


def test_frozen_vision_tower_gets_no_update_and_no_gradient():
  """A frozen tower (TrainState.frozen, as stage_frozen sets it with freeze_vision) is not updated, and its
  gradient is not computed: the clipping norm equals the unfrozen step's norm over the decoder and head alone.
  (Masking only the update left the tower's gradient in the norm, so it changed how much the decoder moved.)"""
  tok, config, params, env = make_setup()
  batch, _ = sft_batch()
  tx = make_optimizer(OptimConfig(lr=1e-2, total_steps=10, freeze_vision=True))
  step = jax.jit(functools.partial(sft_step, config))
  new, m = step(TrainState.create(params, tx, frozen=("visual",)), batch)
  jax.tree.map(np.testing.assert_array_equal, new.params["params"]["visual"], params["params"]["visual"])
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.params["params"]["decoder"],
                       params["params"]["decoder"])
  assert all(jax.tree.leaves(moved))
  grads = jax.grad(lambda p: -(sequence_logprobs(config, p, batch) * batch["loss_mask"]).sum()
                   / batch["loss_mask"].sum())(params)
  visual_norm = float(optax.tree.norm(grads["params"]["visual"]))
  rest_norm = float(optax.tree.norm({k: v for k, v in grads["params"].items() if k != "visual"}))
  assert visual_norm > 0.02 * rest_norm      # measured 0.04: the two norms differ by 8e-4, far above the rtol
  np.testing.assert_allclose(float(m["grad_norm"]), rest_norm, rtol=1e-5)
  _, m_unfrozen = step(TrainState.create(params, tx), batch)  # the optimizer mask alone: the norm counts the tower
  np.testing.assert_allclose(float(m_unfrozen["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _grpo_wiring_setup():
  """A 4-row GRPO batch (2 groups of 2) and the jitted steps of two Dr. GRPO configs (compiled once per module)."""
  tok, config, params, env = make_setup()
  batch, traj = sft_batch(n=4)
  gbatch = dict(batch, loss_mask=batch["loss_mask"] * ~traj.forced, advantages=jnp.asarray([1.0, -1.0, 0.5, -0.5]),
                logp=batch["logp"] - 0.01, keep=jnp.ones((4,), bool))
  S = int(batch["tokens"].shape[1])
  base = grpo.GRPOConfig(num_generations=2, beta=0.04, aggregation="dr_grpo", filter_zero_variance=True)
  import dataclasses
  steps = {name: jax.jit(functools.partial(grpo_step, config, g)) for name, g in
           (("max_len_0", base), ("max_len_2S", dataclasses.replace(base, max_len=2 * S)))}
  return config, params, gbatch, steps


def test_grpo_nan_loss_is_skipped():
  import optax
  _, params, gbatch, steps = _grpo_wiring_setup()
  state = TrainState.create(params, optax.sgd(1.0))
  new, m = steps["max_len_0"](state, dict(gbatch, advantages=gbatch["advantages"].at[1].set(jnp.nan)), params)
  assert not np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1 and int(new.step) == 0
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  new, m = steps["max_len_0"](state, gbatch, params)                  # the same step with finite inputs trains
  assert int(m["skipped"]) == 0 and int(new.step) == 1


def test_grpo_step_uses_max_len_and_zero_variance_mask():
  """Dr. GRPO's max_len reaches the loss (max_len = 2S halves loss and update); rows with keep=False (zero-variance
  groups) carry no weight: with none kept the loss and the update are exactly 0."""
  import optax
  _, params, gbatch, steps = _grpo_wiring_setup()
  state = TrainState.create(params, optax.sgd(1.0))
  s1, m1 = steps["max_len_0"](state, gbatch, params)
  s2, m2 = steps["max_len_2S"](state, gbatch, params)
  assert float(m1["loss"]) != 0
  np.testing.assert_allclose(float(m2["loss"]), 0.5 * float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m2["grad_norm"]), 0.5 * float(m1["grad_norm"]), rtol=1e-5)
  s0, m0 = steps["max_len_0"](state, dict(gbatch, keep=jnp.zeros((4,), bool)), params)
  assert float(m0["loss"]) == 0 and float(m0["grad_norm"]) == 0
  jax.tree.map(np.testing.assert_array_equal, s0.params, params)


def test_grad_accum_two_half_batches_equal_one_full_batch():
  """optax.MultiSteps(sgd, 2) (what OptimConfig.grad_accum=2 wraps) over rows 0-1 then rows 2-3 moves the params
  as one sgd step on all 4 rows (Dr. GRPO: the loss is a sum over rows / (B max_len), so the mean of the two
  half-batch gradients is the full-batch gradient); after the first half nothing has moved yet."""
  import optax
  config, params, gbatch, steps = _grpo_wiring_setup()
  full, _ = steps["max_len_0"](TrainState.create(params, optax.sgd(1.0)), gbatch, params)
  gcfg = grpo.GRPOConfig(num_generations=2, beta=0.04, aggregation="dr_grpo", filter_zero_variance=True)
  step = jax.jit(functools.partial(grpo_step, config, gcfg))
  half = lambda lo: {k: (v[:, lo:lo + 2] if k == "positions" else v[lo:lo + 2]) for k, v in gbatch.items()}
  acc = TrainState.create(params, optax.MultiSteps(optax.sgd(1.0), 2))
  acc, _ = step(acc, half(0), params)
  jax.tree.map(np.testing.assert_array_equal, acc.params, params)
  acc, _ = step(acc, half(2), params)

  def close(path, got, want, p0):
    d_got, d_want = np.asarray(p0) - np.asarray(got), np.asarray(p0) - np.asarray(want)
    # fp32 sums in another order, and param deltas resolved only to the ulp of the params themselves.
    tol = 1e-4 * np.abs(d_want).max() + 4 * np.finfo(np.float32).eps * np.abs(np.asarray(p0)).max()
    assert np.abs(d_got - d_want).max() <= tol, (jax.tree_util.keystr(path), np.abs(d_got - d_want).max(), tol)
  jax.tree_util.tree_map_with_path(close, acc.params, full.params, params)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), acc.params, params))
  assert sum(moved) > len(moved) // 2


def test_uninformative_batch_leaves_params_and_optimizer_state_bitwise_unchanged():
  """A GRPO step on a batch where every group has zero reward variance makes no optimizer update at all: params,
  Adam moments, count and step stay bitwise equal, although Adam's momentum from an earlier informative step
  would move the params (checked: with skip_uninformative=False the same batch changes them)."""
  tok, config, params, env = make_setup()
  batch, traj = sft_batch(n=4)
  G = 2
  base = dict(batch, loss_mask=batch["loss_mask"] * ~traj.forced, logp=batch["logp"] - 0.01)
  live = grpo.group_advantages(jnp.array([1.0, 0.0, 0.3, 0.9]), G)
  flat_rewards = jnp.array([1.0, 1.0, 0.3, 0.3])
  flat = dict(base, advantages=grpo.group_advantages(flat_rewards, G), keep=~grpo.zero_variance_groups(flat_rewards, G))
  assert not np.any(np.asarray(flat["keep"])) and np.all(np.asarray(flat["advantages"]) == 0)
  tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=10, weight_decay=0.01))
  results = {}
  for skip in (True, False):
    gcfg = grpo.GRPOConfig(num_generations=G, beta=0.04, aggregation="token_mean", skip_uninformative=skip)
    step = jax.jit(functools.partial(grpo_step, config, gcfg))
    state, m0 = step(TrainState.create(params, tx), dict(base, advantages=live, keep=jnp.ones(4, bool)), params)
    assert int(m0["uninformative"]) == 0 and int(state.step) == 1      # an informative step: momentum is set
    new, m = step(state, flat, params)
    results[skip] = (state, new, m)
  state, new, m = results[True]
  assert int(m["uninformative"]) == 1 and int(m["skipped"]) == 0
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), (state.params, state.opt_state,
                      state.step), (new.params, new.opt_state, new.step))
  assert all(jax.tree.leaves(same)), same
  state, new, _ = results[False]
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                       state.params, new.params))
  assert not all(moved) and int(new.step) == 2


@pytest.mark.parametrize("setting", ["unrolled", "cpu"])
def test_unrolled_layers_step_equals_scanned_step(setting):
  """The CPU settings take the same SFT step as the scanned default: scan_layers=False (params relaid out by
  vlm.unstack_layers), alone and with cpu_layouts=True (vlm.cpu_setting). Loss, grad norm and every updated
  parameter agree up to float summation order."""
  from videor4_jax.model import vlm
  tok, config, params, env = make_setup()
  batch, _ = sft_batch()
  tx = make_optimizer(OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10, weight_decay=0.01, clip_norm=1.0))
  run_config, run_params = vlm.cpu_setting(config, params)
  if setting == "unrolled":
    run_config = run_config.replace(cpu_layouts=False)
  s_scan, m_scan = jax.jit(functools.partial(sft_step, config))(TrainState.create(params, tx), batch)
  s_unr, m_unr = jax.jit(functools.partial(sft_step, run_config))(TrainState.create(run_params, tx), batch)
  np.testing.assert_allclose(float(m_unr["loss"]), float(m_scan["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m_unr["grad_norm"]), float(m_scan["grad_norm"]), rtol=1e-4)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), s_scan.params, params)
  assert max(jax.tree.leaves(moved)) > 1e-4                  # the step did change the weights
  expect = vlm.unstack_layers(config, s_scan.params)
  for a, b in zip(jax.tree.leaves(expect), jax.tree.leaves(s_unr.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5)
