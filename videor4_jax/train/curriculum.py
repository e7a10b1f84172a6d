"""The four-stage curriculum runner (DRP-SFT -> RL_d -> CRP-SFT -> RL_c), resumable at any stage and step.

Each stage is `sft` (teacher forcing on gold trajectories of one kind: deliberate or compositional) or `grpo`
(rollouts with G generations on prompts of one kind or all, Video-R4 rewards, group advantages, mu updates per
rollout batch). Parameters carry
over between stages; each stage has its own optimizer, schedule and reward weights. Checkpoints hold params,
optimizer state, stage, step and RNG; after every stage the held-out split is evaluated with and without
rumination, and `report.json` collects the results.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.data import pipeline, schema
from videor4_jax.data.features import RlFeaturizer, SftFeaturizer, check_observation_shapes
from videor4_jax.eval.loop import evaluate
from videor4_jax.model import vlm
from videor4_jax.convert import resolve
from videor4_jax.parallel import distributed
from videor4_jax.parallel.sharding import batch_sharding, make_mesh, param_shardings, row_shards
from videor4_jax.rumination import config as rollout_config
from videor4_jax.rumination.env import make_env
from videor4_jax.train import checkpoint as ckpt_lib
from videor4_jax.train import grpo_stage
from videor4_jax.train.metrics_writer import MetricsWriter
from videor4_jax.train.optim import OptimConfig, make_optimizer
from videor4_jax.train.steps import TrainState, sft_step

STAGE_KINDS = ("sft", "grpo")


class Subset:
  def __init__(self, source, indices):
    self.source, self.indices = source, list(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


def validate_curriculum(cfg):
  names = [s for s in cfg.curriculum.split(",") if s]
  if not names:
    raise ValueError("config.curriculum is empty; e.g. 'drp_sft,rl_d,crp_sft,rl_c'")
  for n in names:
    if n not in cfg.stages:
      raise ValueError(f"unknown stage {n!r} in config.curriculum; defined stages: {sorted(cfg.stages.keys())}")
    if cfg.stages[n].kind not in STAGE_KINDS:
      raise ValueError(f"stage {n!r}: kind={cfg.stages[n].kind!r}; expected one of {STAGE_KINDS}")
    want = cfg.stages[n].get("trajectories", "all")
    if want not in schema.KINDS + ("all",):
      raise ValueError(f"config.stages.{n}.trajectories={want!r}; expected one of {schema.KINDS + ('all',)}")
  return names


def stage_optimizer(cfg, stage):
  """The stage's optimizer. Stage `steps` and `warmup_steps` count batches; the schedule counts optimizer
  updates: batches x grpo.num_inner_steps (GRPO) / grad_accum (optax.MultiSteps averages grad_accum batches)."""
  s = cfg.stages[stage]
  accum = int(s.get("grad_accum", 1))
  per_batch = int(cfg.grpo.get("num_inner_steps", 1)) if s.kind == "grpo" else 1
  updates = lambda n: -(-n * per_batch // max(accum, 1))
  total = max(updates(s.steps), 1)
  # A stage shortened from the command line keeps a valid schedule: warmup never exceeds the stage.
  warmup = min(updates(s.get("warmup_steps", 0)), total)
  try:
    return make_optimizer(OptimConfig(lr=s.lr, warmup_steps=warmup, total_steps=total, grad_accum=accum,
                                      clip_norm=cfg.clip_norm, weight_decay=cfg.weight_decay,
                                      freeze_vision=bool(s.get("freeze_vision", False))))
  except ValueError as e:
    raise ValueError(f"config.stages.{stage}: {e}") from e


def check_divisible(cfg, stages, mesh):
  """Every global batch (SFT rows, GRPO prompts and rollouts, eval rows) splits evenly over data x fsdp."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  sizes = {f"stages.{k}.batch_size": cfg.stages[k].batch_size for k in stages}
  sizes.update({f"stages.{k}.batch_size x grpo.num_generations": cfg.stages[k].batch_size *
                cfg.grpo.num_generations for k in stages if cfg.stages[k].kind == "grpo"})
  sizes["eval.batch_size"] = cfg.eval.batch_size
  bad = {k: v for k, v in sizes.items() if v % n}
  if bad:
    raise ValueError(f"batch sizes {bad} are not divisible by the mesh's data x fsdp = {n} "
                     f"(mesh_shape={tuple(mesh.shape.values())}); change the batch sizes or config.mesh_shape")


def _sft_batch(b):
  keys = ("tokens", "positions", "valid", "mm_types", "loss_mask", "video_pixels", "video_grid", "obs_pixels",
          "obs_grid")
  out = {k: np.asarray(b[k]) for k in keys}        # host arrays: `_shard` assembles the global batch
  out["positions"] = np.swapaxes(out["positions"], 0, 1)     # [B, 3, S] -> [3, B, S]
  return out


class _NoWriter:
  """Processes other than 0 log nothing (process 0 writes the metrics of the global batch)."""

  def write(self, *a, **kw):
    pass

  def close(self):
    pass


class Runner:
  """explicit: the config keys set on the command line (train.py); with `config.init_from`, an explicit model
  value that differs from the checkpoint's config.json is an error (convert/resolve.py)."""

  def __init__(self, cfg, workdir: str, source_fn, explicit=()):
    self.cfg, self.workdir = cfg, workdir
    # One processor (tokenizer, chat template, vision settings) and one model config for every consumer: the
    # checkpoint directory's when there is one. Checked before any data is built or anything compiled.
    self.processor = resolve.make_processor(cfg, None, explicit)
    self.tok = self.processor.tokenizer
    self.init_dir = cfg.get("init_from") or None
    self.config = resolve.make_model_config(cfg, self.processor, self.init_dir, explicit)
    self.stages = validate_curriculum(cfg)
    # Every stage's GRPO, reward and optimizer settings are checked now, before any stage runs.
    self.gcfg, self.reward_cfgs = grpo_stage.validate(cfg, self.stages)
    for stage in self.stages:
      self._optimizer(stage)
    # Weights by the logical rules, batches over ("data", "fsdp"); jit propagates the rest (optimizer state).
    self.mesh = make_mesh(tuple(cfg.get("mesh_shape", (-1, 1, 1))))
    self.param_shardings = param_shardings(self.config, self.mesh)
    self.rollout_cfg = rollout_config.from_config(cfg.rollout.to_dict(), row_shards(self.mesh))
    self.pcfg = pipeline.PipelineConfig(**cfg.pipeline.to_dict())
    check_observation_shapes(self.pcfg, self.rollout_cfg)
    resolve.check_compatible(self.config, self.processor, self.rollout_cfg)
    self.env = make_env(self.config, self.rollout_cfg, self.tok, self.pcfg.num_frames)
    self.source_fn = source_fn
    self.writer = MetricsWriter(os.path.join(workdir, "logs")) if distributed.is_primary() else _NoWriter()
    self.ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    self.report_path = os.path.join(workdir, "report.json")
    self.skipped_steps = 0
    check_divisible(cfg, self.stages, self.mesh)

  # ---- state ---------------------------------------------------------------------------------------------------
  def _optimizer(self, stage):
    return stage_optimizer(self.cfg, stage)

  def _init_params(self):
    if self.init_dir:
      from videor4_jax.convert.hf import load_params
      # Each device's shard read from disk for it (no whole-model copy on the host or on one device).
      return load_params(self.init_dir, self.config, jnp.dtype(self.config.param_dtype), self.param_shardings)
    else:
      params = vlm.init_params(self.config, jax.random.key(self.cfg.seed))
    # Every process made the same values (same file / key), so each can put them onto the global mesh.
    return jax.device_put(params, self.param_shardings)

  def _export_dtype(self):
    """config.export_dtype, else the dtype of the checkpoint the run started from, else the param dtype."""
    from videor4_jax.convert.hf import checkpoint_dtype
    return self.cfg.get("export_dtype") or (checkpoint_dtype(self.init_dir) if self.init_dir else None) or \
        self.config.param_dtype

  # ---- stages ----------------------------------------------------------------------------------------------------
  def _train_examples(self, stage):
    """The training split restricted to the stage's `trajectories` kind ("all": every example). SFT stages train
    on those gold trajectories; GRPO stages sample their prompts from them."""
    want = self.cfg.stages[stage].get("trajectories", "all")
    dataset = self.cfg.stages[stage].get("data")          # the stage's data set, else config.data.name
    src = self.source_fn("train", dataset) if dataset else self.source_fn("train")
    if want == "all":
      return src
    kinds = [str(src[i]["kind"], "utf-8") if isinstance(src[i]["kind"], bytes) else src[i]["kind"]
             for i in range(len(src))]
    idx = [i for i, k in enumerate(kinds) if k == want]
    if not idx:
      raise ValueError(f"stage {stage!r}: no '{want}' trajectories in the training split "
                       f"(kinds present: {sorted(set(kinds))}); set config.stages.{stage}.trajectories")
    return Subset(src, idx)

  def _sft_stream(self, stage):
    cfg = dataclasses.replace(self.pcfg, batch_size=self.cfg.stages[stage].batch_size, seed=self.cfg.seed)
    return iter(pipeline.make_dataset(self._train_examples(stage), cfg, SftFeaturizer(cfg, self.processor, self.rollout_cfg, self.config),
                                      **self._rows(cfg.batch_size)))

  def _rl_stream(self, stage):
    cfg = dataclasses.replace(self.pcfg, batch_size=self.cfg.stages[stage].batch_size, seed=self.cfg.seed + 1)
    return iter(pipeline.make_dataset(self._train_examples(stage), cfg, RlFeaturizer(cfg, self.processor),
                                      **self._rows(cfg.batch_size)))

  def _rows(self, global_batch):
    """Pipeline arguments: this process's rows of every global batch (one global order for any process count)."""
    import grain
    rows = distributed.process_rows(batch_sharding(self.mesh, 1), (global_batch,))
    return dict(shard=grain.sharding.NoSharding(), rows=rows)

  def run_sft(self, stage, state, start_step):
    s = self.cfg.stages[stage]
    step_fn = jax.jit(functools.partial(sft_step, self.config))
    it = self._resume_iter(self._sft_stream(stage), start_step)
    for step in range(start_step, s.steps):
      t0 = time.time()
      with jax.set_mesh(self.mesh):
        state, m = step_fn(state, self._shard(_sft_batch(next(it)), s.batch_size))
      m = jax.device_get(m)
      self._warn_if_skipped(stage, step, m)
      m["tokens_per_s"] = float(m["tokens"]) / max(time.time() - t0, 1e-6)
      if step % self.cfg.log_every == 0 or step == s.steps - 1:
        self.writer.write(self.global_step, m, prefix=f"{stage}/")
      self.global_step += 1
      self._maybe_save(stage, step + 1, state, it)
    return state

  def run_grpo(self, stage, state, start_step):
    return grpo_stage.run_grpo(self, stage, state, start_step)

  def _place(self, state):
    """Every state leaf on the mesh: params keep their rule shardings, other leaves not yet there replicate."""
    from jax.sharding import NamedSharding, PartitionSpec
    rep = NamedSharding(self.mesh, PartitionSpec())
    def put(x):
      sh = getattr(x, "sharding", None)
      return x if isinstance(sh, NamedSharding) and sh.mesh == self.mesh else jax.device_put(x, rep)
    return jax.tree.map(put, state)

  def _shard(self, batch, global_batch):
    """This process's rows of a batch -> global arrays on the mesh, split over ("data", "fsdp") on the batch axis
    (axis 1 of positions); `global_batch` rows in all."""
    def put(k, v):
      axis = 1 if k == "positions" and np.ndim(v) == 3 and np.shape(v)[0] == 3 else 0
      return distributed.to_global(batch_sharding(self.mesh, np.ndim(v), axis), v, global_batch, axis)
    return {k: put(k, v) for k, v in batch.items()}

  def _warn_if_skipped(self, stage, step, m):
    if int(m["skipped"]):
      self.skipped_steps += 1
      print(f"WARNING: {stage} step {step}: non-finite loss ({float(m['loss'])}); the update was skipped "
            f"({self.skipped_steps} skipped so far)", flush=True)

  # ---- checkpoints and evaluation --------------------------------------------------------------------------------
  def _resume_iter(self, it, start_step):
    """The stage's data iterator, restored to where the checkpoint left it (grain state saved with it)."""
    if start_step > 0 and self._resume_ckpt_step is not None:
      self.ckpt.restore_data_iter(self._resume_ckpt_step, it)
    return it

  def _maybe_save(self, stage, step_in_stage, state, data_iter=None, force=False):
    if self.ckpt.latest_step() == self.global_step:      # the stage's last step was just saved in the loop
      return
    if force or step_in_stage % self.cfg.checkpoint_every == 0:
      self.ckpt.save(self.global_step, {"params": state.params, "opt_state": state.opt_state, "step": state.step},
                     {"stage": stage, "step_in_stage": step_in_stage, "global_step": self.global_step},
                     data_iter=data_iter, force=force)

  def _evaluate(self, params, stage, report):
    if self.cfg.eval.num_examples == 0:       # evaluation switched off (e.g. in tests)
      return
    out = {}
    for mode in ("rumination", "single_pass"):
      with jax.set_mesh(self.mesh):
        res = evaluate(self.env, params, self.processor, self._eval_source(), dataclasses.replace(
          self.pcfg, batch_size=self.cfg.eval.batch_size), mode=mode, num_examples=self.cfg.eval.num_examples)
      out[mode] = res["summary"]
      self.writer.write(self.global_step, res["summary"], prefix=f"eval_{mode}/{stage}/")
    report["stages"][stage] = out
    self._write_report(report)

  def _eval_source(self):
    dataset = self.cfg.eval.get("data")
    return self.source_fn(self.cfg.eval.split, dataset) if dataset else self.source_fn(self.cfg.eval.split)

  def _write_report(self, report):
    if not distributed.is_primary():
      return
    tmp = self.report_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, self.report_path)

  def run(self):
    report = {"config": self.cfg.to_dict(), "stages": {}}
    if os.path.exists(self.report_path):
      with open(self.report_path) as f:
        report["stages"] = json.load(f).get("stages", {})
    params = self._init_params()
    self.global_step = 0
    stage_i, start_step = 0, 0

    def target(meta):     # the saved stage's optimizer decides the tree (e.g. freeze_vision adds a masked state)
      if meta.get("stage") not in self.stages:
        raise ckpt_lib.CheckpointMismatch(
            f"checkpoint meta {meta} names stage {meta.get('stage')!r}, which is not in config.curriculum "
            f"{self.stages}: resume with the curriculum the run was started with, or start a new workdir")
      tx = self._optimizer(meta["stage"])
      return ckpt_lib.abstract_like({"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)})

    restored = self.ckpt.restore_latest(target)
    state = None
    self._resume_ckpt_step = None
    if restored is not None:
      self._resume_ckpt_step, saved, meta, _ = restored
      stage_i, start_step, self.global_step = self.stages.index(meta["stage"]), meta["step_in_stage"], \
          meta["global_step"]
      print(f"resuming at stage {meta['stage']!r} step {start_step} (global step {self.global_step})", flush=True)
      tx = self._optimizer(meta["stage"])
      state = self._place(TrainState(step=saved["step"], params=jax.device_put(saved["params"],
                                                                                self.param_shardings),
                                     opt_state=saved["opt_state"], tx=tx))
    for i in range(stage_i, len(self.stages)):
      stage = self.stages[i]
      if i != stage_i or restored is None:
        state = self._place(TrainState.create(params if state is None else state.params, self._optimizer(stage)))
        start_step = 0 if i != stage_i else start_step
      kind = self.cfg.stages[stage].kind
      print(f"=== stage {i + 1}/{len(self.stages)}: {stage} ({kind}, {self.cfg.stages[stage].steps} steps)", flush=True)
      if start_step < self.cfg.stages[stage].steps:
        state = (self.run_sft if kind == "sft" else self.run_grpo)(stage, state, start_step)
        self._maybe_save(stage, self.cfg.stages[stage].steps, state, force=True)
      if stage not in report["stages"]:
        self._evaluate(state.params, stage, report)
      start_step = 0
    self.ckpt.wait()
    final = os.path.join(self.workdir, "final_hf")
    from videor4_jax.convert.hf import save_pretrained
    host_params = distributed.to_host(state.params)      # collective: every process takes part
    if distributed.is_primary():
      save_pretrained(final, self.config, host_params, processor=self.processor, dtype=self._export_dtype(),
                      max_shard_bytes=int(self.cfg.get("export_max_shard_mb", 4096)) << 20)
    report["final_checkpoint"] = final
    self._write_report(report)
    self.writer.close()
    self.ckpt.close()
    return report
