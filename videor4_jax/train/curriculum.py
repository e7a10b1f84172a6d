"""The four-stage curriculum runner (DRP-SFT -> RL_d -> CRP-SFT -> RL_c), resumable at any stage and step.

Each stage is `sft` (teacher forcing on gold trajectories of one kind: deliberate or compositional) or `grpo`
(rollouts with G generations on prompts of one kind or all, Video-R4 rewards, group advantages, mu updates per
rollout batch). Parameters carry over between stages; each stage has its own optimizer, schedule and reward
weights. Checkpoints hold params, optimizer state, stage, step and the grain iterator; after every stage the
held-out split is evaluated with and without rumination, and `report.json` collects the results. A SIGTERM
saves a checkpoint at the next step boundary and stops the run (train/preemption.py).

`Runner.run` reads top to bottom: resolve (train/context.py) -> place or resume -> for each stage: run its kind
-> evaluate -> checkpoint -> report -> export. The stage kinds are plain functions (`run_sft` here,
`grpo_stage.run_grpo`) given the context, the jitted steps, the loop state and an `after_step` callback.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.data import pipeline
from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
from videor4_jax.eval.loop import evaluate
from videor4_jax.parallel import distributed
from videor4_jax.parallel.sharding import batch_sharding, use_mesh
from videor4_jax.train import checkpoint as ckpt_lib
from videor4_jax.train import grpo_stage
from videor4_jax.train.context import (LoopState, RunContext, Steps, build_context, init_params, make_steps,
                                       place_state, shard_batch, stage_frozen, stage_optimizer, validate_curriculum,
                                       warn_if_skipped)
from videor4_jax.train.metrics_writer import MetricsWriter
from videor4_jax.train.preemption import Preempted, PreemptionGuard
from videor4_jax.train.steps import TrainState

__all__ = ["Runner", "validate_curriculum", "train_examples", "sft_stream", "rl_stream", "run_sft"]


# ---- data streams ----------------------------------------------------------------------------------------------
class Subset:
  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


def train_examples(cfg, source_fn, stage: str):
  """The training split restricted to the stage's `trajectories` kind ("all": every example). SFT stages train
  on those gold trajectories; GRPO stages sample their prompts from them."""
  want = cfg.stages[stage].get("trajectories", "all")
  dataset = cfg.stages[stage].get("data")               # the stage's data set, else config.data.name
  src = source_fn("train", dataset) if dataset else source_fn("train")
  if want == "all":
    return src
  kinds = [str(src[i]["kind"], "utf-8") if isinstance(src[i]["kind"], bytes) else src[i]["kind"]
           for i in range(len(src))]
  idx = [i for i, k in enumerate(kinds) if k == want]
  if not idx:
    raise ValueError(f"stage {stage!r}: no '{want}' trajectories in the training split "
                     f"(kinds present: {sorted(set(kinds))}); set config.stages.{stage}.trajectories")
  return Subset(src, idx)


def eval_source(cfg, source_fn):
  dataset = cfg.eval.get("data")                        # the evaluation's data set, else config.data.name
  return source_fn(cfg.eval.split, dataset) if dataset else source_fn(cfg.eval.split)


def _process_rows(ctx: RunContext, global_batch: int) -> dict:
  """Pipeline arguments: this process's rows of every global batch (one global order for any process count)."""
  import grain
  rows = distributed.process_rows(batch_sharding(ctx.mesh, 1), (global_batch,))
  return dict(shard=grain.sharding.NoSharding(), rows=rows)


def sft_stream(ctx: RunContext, source_fn, stage: str):
  cfg = dataclasses.replace(ctx.pcfg, batch_size=ctx.cfg.stages[stage].batch_size, seed=ctx.cfg.seed)
  featurizer = SftFeaturizer(cfg, ctx.processor, ctx.rollout_cfg, ctx.config)
  return iter(pipeline.make_dataset(train_examples(ctx.cfg, source_fn, stage), cfg, featurizer,
                                    **_process_rows(ctx, cfg.batch_size)))


def rl_stream(ctx: RunContext, source_fn, stage: str):
  cfg = dataclasses.replace(ctx.pcfg, batch_size=ctx.cfg.stages[stage].batch_size, seed=ctx.cfg.seed + 1)
  return iter(pipeline.make_dataset(train_examples(ctx.cfg, source_fn, stage), cfg, RlFeaturizer(cfg, ctx.processor),
                                    **_process_rows(ctx, cfg.batch_size)))


# ---- the SFT stage kind ----------------------------------------------------------------------------------------
_SFT_KEYS = ("tokens", "positions", "valid", "mm_types", "loss_mask", "video_pixels", "video_grid", "obs_pixels",
             "obs_grid")


def _sft_batch(b):
  out = {k: np.asarray(b[k]) for k in _SFT_KEYS}        # host arrays: `shard_batch` assembles the global batch
  out["positions"] = np.swapaxes(out["positions"], 0, 1)     # [B, 3, S] -> [3, B, S]
  return out


def run_sft(ctx: RunContext, steps: Steps, stage: str, state: TrainState, data_iter, loop: LoopState, writer,
            after_step) -> TrainState:
  """Steps `loop.step_in_stage` .. the stage's `steps` of teacher forcing; `after_step(stage, step_in_stage,
  state, data_iter)` ends each one (counts it, checkpoints, may stop the run)."""
  s = ctx.cfg.stages[stage]
  for step in range(loop.step_in_stage, s.steps):
    t0 = time.time()
    with use_mesh(ctx.mesh):
      state, m = steps.sft(state, shard_batch(ctx, _sft_batch(next(data_iter)), s.batch_size))
    m = jax.device_get(m)
    warn_if_skipped(loop, stage, step, m)
    m["tokens_per_s"] = float(m["tokens"]) / max(time.time() - t0, 1e-6)
    if step % ctx.cfg.log_every == 0 or step == s.steps - 1:
      writer.write(loop.global_step, m, prefix=f"{stage}/")
    after_step(stage, step + 1, state, data_iter)
  return state


STAGE_KINDS = {"sft": (sft_stream, run_sft), "grpo": (rl_stream, grpo_stage.run_grpo)}   # kind: (stream, loop)


# ---- resume, evaluation, report, export --------------------------------------------------------------------------
def resume(ctx: RunContext, ckpt: ckpt_lib.Checkpointer, params) -> tuple[LoopState, TrainState | None]:
  """The newest readable checkpoint's position and state on the mesh; (LoopState(), None) when there is none."""
  def target(meta):     # the saved stage's optimizer decides the tree (e.g. freeze_vision adds a masked state)
    if meta.get("stage") not in ctx.stages:
      raise ckpt_lib.CheckpointMismatch(
          f"checkpoint meta {meta} names stage {meta.get('stage')!r}, which is not in config.curriculum "
          f"{list(ctx.stages)}: resume with the curriculum the run was started with, or start a new workdir")
    tx = stage_optimizer(ctx.cfg, meta["stage"])
    return ckpt_lib.abstract_like({"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)})

  restored = ckpt.restore_latest(target)
  if restored is None:
    return LoopState(), None
  ckpt_step, saved, meta, _ = restored
  loop = LoopState(stage_index=ctx.stages.index(meta["stage"]), step_in_stage=meta["step_in_stage"],
                   global_step=meta["global_step"], resumed_from=ckpt_step)
  print(f"resuming at stage {meta['stage']!r} step {loop.step_in_stage} (global step {loop.global_step})",
        flush=True)
  state = TrainState(step=saved["step"], params=jax.device_put(saved["params"], ctx.param_shardings),
                     opt_state=saved["opt_state"], tx=stage_optimizer(ctx.cfg, meta["stage"]),
                     frozen=stage_frozen(ctx.cfg, meta["stage"]))
  return loop, place_state(ctx, state)


def evaluate_stage(ctx: RunContext, source_fn, params, stage: str, writer, global_step: int) -> dict:
  """{mode: summary} on the held-out split, with and without rumination; each summary is also logged."""
  out = {}
  for mode in ("rumination", "single_pass"):
    with use_mesh(ctx.mesh):
      res = evaluate(ctx.env, params, ctx.processor, eval_source(ctx.cfg, source_fn), dataclasses.replace(
        ctx.pcfg, batch_size=ctx.cfg.eval.batch_size), mode=mode, num_examples=ctx.cfg.eval.num_examples)
    out[mode] = res["summary"]
    writer.write(global_step, res["summary"], prefix=f"eval_{mode}/{stage}/")
    write_eval_questions(os.path.join(ctx.workdir, "eval", f"{stage}_{mode}.jsonl"), res["questions"])
  return out


def write_eval_questions(path: str, questions: list[dict]) -> None:
  """One JSON line per held-out question (qid, question, golds, prediction, scores, actions, generated text: the
  record of eval/loop.py), written whole or not at all (a temporary file, then a rename)."""
  if not distributed.is_primary():
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    for q in questions:
      f.write(json.dumps(q) + "\n")
  os.replace(path + ".tmp", path)


def read_report(path: str, cfg) -> dict:
  """The report of this run: the config, and the stages already evaluated (by an earlier, interrupted start)."""
  report = {"config": cfg.to_dict(), "stages": {}}
  if os.path.exists(path):
    with open(path) as f:
      report["stages"] = json.load(f).get("stages", {})
  return report


def write_report(path: str, report: dict) -> None:
  if not distributed.is_primary():
    return
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
  os.replace(path + ".tmp", path)


def export_final(ctx: RunContext, params) -> str:
  """The final params as a complete HF directory `<workdir>/final_hf` (written by process 0)."""
  from videor4_jax.convert.hf import checkpoint_dtype, save_pretrained
  final = os.path.join(ctx.workdir, "final_hf")
  host_params = distributed.to_host(params)      # collective: every process takes part
  if distributed.is_primary():
    # config.export_dtype, else the dtype of the checkpoint the run started from, else the param dtype.
    dtype = ctx.cfg.get("export_dtype") or (checkpoint_dtype(ctx.init_dir) if ctx.init_dir else None) or \
        ctx.config.param_dtype
    save_pretrained(final, ctx.config, host_params, processor=ctx.processor, dtype=dtype,
                    max_shard_bytes=int(ctx.cfg.get("export_max_shard_mb", 4096)) << 20)
  return final


class _NoWriter:
  """Processes other than 0 log nothing (process 0 writes the metrics of the global batch)."""

  def write(self, *a, **kw):
    pass

  def close(self):
    pass


# ---- the runner ------------------------------------------------------------------------------------------------
class Runner:
  """The curriculum's stage loop. explicit: the config keys set on the command line (train.py); with
  `config.init_from`, an explicit model value that differs from the checkpoint's config.json is an error.
  Everything is resolved and checked here (train/context.py), before any data is built or anything written;
  `source_fn(split)` (settable after construction) gives the data sources when the run starts."""

  def __init__(self, cfg, workdir: str, source_fn, explicit=()):
    self.ctx = build_context(cfg, workdir, explicit)
    self.cfg, self.workdir, self.source_fn = cfg, workdir, source_fn
    self.report_path = os.path.join(workdir, "report.json")

  # The resolved pieces callers evaluate or featurize with (the same objects the run uses).
  processor = property(lambda self: self.ctx.processor)
  tok = property(lambda self: self.ctx.tok)
  config = property(lambda self: self.ctx.config)
  env = property(lambda self: self.ctx.env)
  pcfg = property(lambda self: self.ctx.pcfg)
  mesh = property(lambda self: self.ctx.mesh)
  param_shardings = property(lambda self: self.ctx.param_shardings)

  def run(self) -> dict:
    """Trains every stage not yet done, evaluates after each, exports; returns the report. Raises `Preempted`
    after a SIGTERM, once its checkpoint is saved."""
    ctx = self.ctx
    self.writer = MetricsWriter(os.path.join(self.workdir, "logs")) if distributed.is_primary() else _NoWriter()
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(self.workdir, "checkpoints"), keep=ctx.cfg.keep_checkpoints)
    try:
      with PreemptionGuard() as self.guard:
        steps = make_steps(ctx)
        report = read_report(self.report_path, ctx.cfg)
        params = init_params(ctx)
        self.loop, state = resume(ctx, self.ckpt, params)
        for i in range(self.loop.stage_index, len(ctx.stages)):
          stage = ctx.stages[i]
          if state is None or i > self.loop.stage_index:    # a stage from its first step: its own optimizer
            self.loop.stage_index, self.loop.step_in_stage = i, 0
            state = place_state(ctx, TrainState.create(params if state is None else state.params,
                                                       stage_optimizer(ctx.cfg, stage), stage_frozen(ctx.cfg, stage)))
          state = self.train_stage(steps, stage, state)
          if stage not in report["stages"] and ctx.cfg.eval.num_examples:   # 0: evaluation off (e.g. tests)
            report["stages"][stage] = evaluate_stage(ctx, self.source_fn, state.params, stage, self.writer,
                                                     self.loop.global_step)
            write_report(self.report_path, report)
          self.stop_if_preempted()
        self.ckpt.wait()
        report["final_checkpoint"] = export_final(ctx, state.params)
        write_report(self.report_path, report)
        return report
    finally:
      self.writer.close()
      self.ckpt.close()

  def train_stage(self, steps: Steps, stage: str, state: TrainState) -> TrainState:
    """Runs the stage's kind from `loop.step_in_stage` to its end (nothing when a checkpoint of its end was
    resumed) and checkpoints its end."""
    s = self.ctx.cfg.stages[stage]
    print(f"=== stage {self.loop.stage_index + 1}/{len(self.ctx.stages)}: {stage} ({s.kind}, {s.steps} steps)",
          flush=True)
    if self.loop.step_in_stage >= s.steps:
      return state
    make_stream, run_kind = STAGE_KINDS[s.kind]
    data_iter = make_stream(self.ctx, self.source_fn, stage)
    if self.loop.step_in_stage > 0 and self.loop.resumed_from is not None:   # where the checkpoint left it
      self.ckpt.restore_data_iter(self.loop.resumed_from, data_iter)
    state = run_kind(self.ctx, steps, stage, state, data_iter, self.loop, self.writer, self.after_step)
    self.save(stage, s.steps, state, force=True)
    return state

  def after_step(self, stage: str, step_in_stage: int, state: TrainState, data_iter) -> None:
    """Ends every training step (`step_in_stage` steps of the stage are done): counts it, saves the periodic
    checkpoint, and after a SIGTERM saves this step and stops."""
    self.loop.global_step += 1
    self.save(stage, step_in_stage, state, data_iter)
    if self.guard.stop_requested():
      self.save(stage, step_in_stage, state, data_iter, force=True)
      self.stop()

  def stop_if_preempted(self) -> None:
    """At a stage boundary (the stage's end is saved): stops after a SIGTERM on any process."""
    if self.guard.stop_requested():
      self.stop()

  def stop(self) -> None:
    """Waits until the checkpoint of this step is complete, says so and raises `Preempted`."""
    self.ckpt.wait()
    print(f"preempted: checkpoint of global step {self.loop.global_step} saved; stopping (the next start resumes "
          f"from it)", flush=True)
    raise Preempted(self.loop.global_step)

  def save(self, stage: str, step_in_stage: int, state: TrainState, data_iter=None, force: bool = False):
    """Saves every `checkpoint_every` steps of a stage, or now with `force`; never the same global step twice."""
    if self.ckpt.latest_step() == self.loop.global_step:      # e.g. the stage's last step was saved in the loop
      return
    if force or step_in_stage % self.ctx.cfg.checkpoint_every == 0:
      self.ckpt.save(self.loop.global_step, {"params": state.params, "opt_state": state.opt_state, "step": state.step},
                     {"stage": stage, "step_in_stage": step_in_stage, "global_step": self.loop.global_step},
                     data_iter=data_iter, force=force)
