"""The GRPO stage kind of the curriculum: the KL reference and the rollout -> reward -> update loop.

One iteration: roll out G generations per prompt with the current policy, score them (Video-R4 rewards), form
group advantages, then take `num_inner_steps` GRPO updates on that batch. The KL reference is the policy at the
start of the stage (a frozen copy); it is written once when the stage starts so a resumed run uses the same one.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.data.features import decode_strings
from videor4_jax.eval.loop import final_segment
from videor4_jax.parallel import distributed
from videor4_jax.parallel.sharding import use_mesh
from videor4_jax.rl import grpo, rewards
from videor4_jax.train import checkpoint as ckpt_lib
from videor4_jax.train.context import LoopState, RunContext, Steps, shard_batch, warn_if_skipped
from videor4_jax.train.steps import TrainState


def kl_reference(ctx: RunContext, stage: str, state: TrainState, start_step: int):
  """The stage's starting policy. Saved when the stage starts, restored when it resumes mid-way: taking the
  resumed policy instead would change the KL term (and every later step) of a resumed run."""
  if ctx.gcfg.beta == 0:
    return None
  path = os.path.join(ctx.workdir, "kl_reference", stage)
  if start_step == 0:
    ckpt_lib.save_tree(path, state.params)
    return state.params
  try:
    return ckpt_lib.restore_tree(path, ckpt_lib.abstract_like(state.params, ctx.param_shardings))
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{e}: resuming stage {stage!r} at step {start_step} with grpo.beta={ctx.gcfg.beta} needs the KL reference "
        f"(the policy at the start of the stage), written when the stage started. Resume with the code and config "
        f"that wrote the checkpoint, or start the run in a new workdir") from None


_INPUTS = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "source_frames")


def _row_axis(key: str) -> int:
  return 1 if key == "positions" else 0      # M-RoPE positions are [3, B, S]


@jax.jit
def _take_rows(batches, rows):
  """The rows `rows` of the row-wise concatenation of `batches` (a list of dicts of arrays)."""
  return {k: jnp.take(jnp.concatenate([b[k] for b in batches], _row_axis(k)), rows, axis=_row_axis(k))
          for k in batches[0]}


def train_batch(traj, advantages_b, keep_b) -> dict:
  """The GRPO step's batch from a rollout's Trajectory: the generated tokens (forced ones excluded from the loss),
  the recorded log-probs, and per-row advantages and keep flags."""
  return dict(tokens=traj.tokens, positions=traj.positions, valid=traj.valid, mm_types=traj.mm_types,
              loss_mask=traj.loss_mask * ~traj.forced, video_pixels=traj.video_pixels, video_grid=traj.video_grid,
              obs_pixels=traj.obs_pixels, obs_grid=traj.obs_grid, logp=traj.logp, advantages=advantages_b,
              keep=keep_b)


def _draw(ctx: RunContext, rollout, stage: str, state: TrainState, data_iter, key):
  """Roll out one prompt batch and score it: (train batch dict, reward terms, host metrics)."""
  gcfg, rcfg = ctx.gcfg, ctx.reward_cfgs[stage]
  G, s = gcfg.num_generations, ctx.cfg.stages[stage]
  batch = next(data_iter)
  with use_mesh(ctx.mesh):
    traj = rollout(state.params, shard_batch(ctx, {k: batch[k] for k in _INPUTS}, s.batch_size), key)
  # The text rewards are computed on the host, for the whole global batch, identically in every process.
  host, answers = distributed.to_host((traj, shard_batch(
      ctx, {k: batch[k] for k in ("answers", "num_answers")}, s.batch_size)))
  rows = host.tokens.shape[0]
  finals = [final_segment(ctx.tok.decode(host.tokens[i][host.loss_mask[i] > 0])) for i in range(rows)]
  golds = [decode_strings(answers["answers"][i // G], int(answers["num_answers"][i // G])) for i in range(rows)]
  errors = np.where(host.actions.called, host.actions.error, 0)
  acc, fmt, _ = rewards.score_texts(rcfg, finals, golds, errors)
  n_actions = jnp.asarray(host.actions.called.sum(1))
  terms = rewards.total_reward(rcfg, acc_b=acc, fmt_b=fmt, region_feats=traj.region_feats,
                               region_mask=traj.region_mask, video_feats=traj.video_feats,
                               last_clip=traj.last_clip_groups, num_actions_b=n_actions, group_size=G)
  adv = grpo.group_advantages(terms["total"], G, std_normalize=gcfg.std_normalize, eps=gcfg.adv_eps,
                              ddof=gcfg.adv_std_ddof)
  zero_var = grpo.zero_variance_groups(terms["total"], G)
  b = train_batch(traj, adv, ~zero_var)
  called = host.actions.called
  hm = dict(called=np.asarray(called.sum(1)), errors=np.asarray((errors != 0).sum(1)),
            generated=np.asarray(host.num_generated))
  return b, terms, hm


def _sample_batch(ctx: RunContext, rollout, stage: str, step: int, state: TrainState, data_iter, key):
  """One training batch by dynamic sampling (rollout batches until `batch_size` groups have reward variance,
  at most grpo.max_draws): (batch, reward terms, host metrics, dynamic-sampling stats, generated tokens)."""
  G, batch_size = ctx.gcfg.num_generations, ctx.cfg.stages[stage].batch_size
  draws = []

  def draw(d):
    draws.append(_draw(ctx, rollout, stage, state, data_iter, key if d == 0 else jax.random.fold_in(key, d)))
    return np.asarray(distributed.to_host(draws[-1][0]["keep"])).reshape(-1, G)[:, 0]   # keep: variance > 0

  picked, ds = grpo.dynamic_sample(draw, batch_size, ctx.gcfg.max_draws if ctx.gcfg.dynamic_sampling else 1)
  generated = float(sum(d[2]["generated"].sum() for d in draws))
  if ds["draws"] == 1:
    return (*draws[0], ds, generated)
  rows = np.asarray([(d * batch_size + g) * G + j for d, g in picked for j in range(G)])   # in the order picked
  with use_mesh(ctx.mesh):
    b, terms = _take_rows([d[0] for d in draws], rows), _take_rows([d[1] for d in draws], rows)
  hm = {k: np.concatenate([d[2][k] for d in draws])[rows] for k in draws[0][2]}
  if ds["capped"]:
    print(f"{stage} step {step}: dynamic sampling stopped at its cap of {ds['draws']} rollout batches with "
          f"{ds['filled']} of {batch_size} informative groups; the rest of the batch has zero variance", flush=True)
  return b, terms, hm, ds, generated


def run_grpo(ctx: RunContext, steps: Steps, stage: str, state: TrainState, data_iter, loop: LoopState, writer,
             after_step: Callable) -> TrainState:
  """Steps `loop.step_in_stage` .. the stage's `steps` of a GRPO stage; `after_step(stage, step_in_stage, state,
  data_iter)` ends each one (counts it, checkpoints, may stop the run)."""
  G, s = ctx.gcfg.num_generations, ctx.cfg.stages[stage]
  ref_params = kl_reference(ctx, stage, state, loop.step_in_stage)
  for step in range(loop.step_in_stage, s.steps):
    t0 = time.time()
    key = jax.random.fold_in(jax.random.key(ctx.cfg.seed), loop.global_step)
    b, terms, hm, ds, generated = _sample_batch(ctx, steps.rollout, stage, step, state, data_iter, key)
    keep_groups = np.asarray(distributed.to_host(b["keep"])).reshape(-1, G)[:, 0]
    if int(keep_groups.sum()) != ds["filled"]:      # the picked rows must be the groups dynamic_sample counted
      raise RuntimeError(f"{stage} step {step}: the batch holds {int(keep_groups.sum())} informative groups, "
                         f"dynamic sampling picked {ds['filled']}")
    for _ in range(ctx.gcfg.num_inner_steps):
      with use_mesh(ctx.mesh):
        state, m = steps.grpo(state, b, ref_params)
      # Each inner step can be skipped (non-finite loss); warn per update, log the last one.
      warn_if_skipped(loop, stage, step, jax.device_get(m))
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    m.update({f"reward/{k}": float(jnp.mean(v)) for k, v in terms.items()})
    m.update(rumination_rate=float((hm["called"] > 0).mean()), actions_per_rollout=float(hm["called"].mean()),
             invalid_action_rate=float(hm["errors"].sum() / max(hm["called"].sum(), 1)),
             zero_variance_frac=float(np.mean(~np.asarray(distributed.to_host(b["keep"])))),
             informative_frac=ds["informative_groups"] / ds["drawn_groups"], sampling_draws=ds["draws"],
             tokens_per_s=generated / max(time.time() - t0, 1e-6))
    # Every GRPO step is logged (a step is seconds of rollout; the reward curve of learning.png reads them).
    writer.write(loop.global_step, m, prefix=f"{stage}/")
    after_step(stage, step + 1, state, data_iter)
  return state
