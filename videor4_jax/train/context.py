"""What every stage of a run shares, built once and checked before anything trains: `RunContext` (configs,
processor, environment, mesh, shardings), the jitted step functions (`make_steps`), and the loop's position.

`build_context` reads no data and writes no files, so an AOT path can call it (and `make_steps`) and lower the
steps with abstract arrays. The Runner (train/curriculum.py) opens the metrics writer and the checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from videor4_jax.convert import resolve
from videor4_jax.data import pipeline, schema
from videor4_jax.data.features import check_observation_shapes
from videor4_jax.parallel import distributed
from videor4_jax.parallel.sharding import batch_sharding, make_mesh, param_shardings, row_shards
from videor4_jax.rl import grpo, rewards
from videor4_jax.rumination import config as rollout_settings
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.env import make_env
from videor4_jax.rumination.rollout import make_rollout_fn
from videor4_jax.train.optim import OptimConfig, make_optimizer
from videor4_jax.train.steps import grpo_step, sft_step

STAGE_KINDS = ("sft", "grpo")


@dataclasses.dataclass(frozen=True)
class RunContext:
  """The resolved, checked run: one processor and model config for every consumer, the curriculum's stage names,
  GRPO and reward settings, static rollout and pipeline shapes, the environment, the mesh and the param shardings."""
  cfg: Any                                   # the ml_collections config the run was started with
  workdir: str
  stages: tuple[str, ...]
  processor: Any                             # processing.processor.Processor
  config: Any                                # model.config.ModelConfig
  init_dir: str | None                       # the HF directory the run starts from (config.init_from), if any
  gcfg: grpo.GRPOConfig | None               # None without GRPO stages
  reward_cfgs: dict[str, rewards.RewardConfig]
  rollout_cfg: RolloutConfig
  pcfg: pipeline.PipelineConfig
  env: Any                                   # rumination.env.RuminationEnv
  mesh: jax.sharding.Mesh
  param_shardings: Any

  @property
  def tok(self):
    return self.processor.tokenizer


@dataclasses.dataclass
class LoopState:
  """Where the run is. `stage_index` / `step_in_stage`: the stage and the step it (re)starts at; `global_step`
  counts batches over all stages; `resumed_from`: the checkpoint step the run resumed from (its grain state
  restores the resumed stage's iterator), None for a fresh run."""
  stage_index: int = 0
  step_in_stage: int = 0
  global_step: int = 0
  resumed_from: int | None = None
  skipped_steps: int = 0


def validate_curriculum(cfg) -> tuple[str, ...]:
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
  return tuple(names)


def _dataclass_from(cls, d: dict, where: str):
  """`cls(**d)` with errors that name the config field; absent keys keep the dataclass defaults."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"config.{where}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
  try:
    return cls(**d)
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.{where}: {e}") from e


def validate_grpo(cfg, stages) -> tuple[grpo.GRPOConfig | None, dict[str, rewards.RewardConfig]]:
  """(GRPOConfig, {stage: RewardConfig}) for the curriculum's GRPO stages; raises ValueError naming the field."""
  rl = [s for s in stages if cfg.stages[s].kind == "grpo"]
  if not rl:
    return None, {}
  reward = lambda s: cfg.stages[s].get("rewards")      # noqa: E731
  return _dataclass_from(grpo.GRPOConfig, cfg.grpo.to_dict(), "grpo"), {
      s: _dataclass_from(rewards.RewardConfig, reward(s).to_dict() if reward(s) is not None else {},
                         f"stages.{s}.rewards") for s in rl}


def stage_optimizer(cfg, stage: str):
  """The stage's optimizer. Stage `steps` and `warmup_steps` count batches; the schedule counts optimizer
  updates: batches x grpo.num_inner_steps (GRPO) / grad_accum (optax.MultiSteps averages grad_accum batches)."""
  s = cfg.stages[stage]
  accum = int(s.get("grad_accum", 1))
  per_batch = int(cfg.grpo.get("num_inner_steps", 1)) if s.kind == "grpo" else 1
  updates = lambda n: -(-n * per_batch // max(accum, 1))    # noqa: E731
  total = max(updates(s.steps), 1)
  # A stage shortened from the command line keeps a valid schedule: warmup never exceeds the stage.
  warmup = min(updates(s.get("warmup_steps", 0)), total)
  try:
    return make_optimizer(OptimConfig(lr=s.lr, warmup_steps=warmup, total_steps=total, grad_accum=accum,
                                      clip_norm=cfg.clip_norm, weight_decay=cfg.weight_decay,
                                      freeze_vision=bool(s.get("freeze_vision", False))))
  except ValueError as e:
    raise ValueError(f"config.stages.{stage}: {e}") from e


def stage_frozen(cfg, stage: str) -> tuple:
  """The param subtrees the stage does not train (TrainState.frozen): ("visual",) with freeze_vision."""
  return ("visual",) if cfg.stages[stage].get("freeze_vision", False) else ()


def run_mesh(cfg, devices=None) -> jax.sharding.Mesh:
  """`config.mesh_shape` over `devices` (default: every device; train/aot.py passes a TPU topology's)."""
  return make_mesh(tuple(cfg.get("mesh_shape", (-1, 1, 1))), devices=devices)


def rollout_config(cfg, mesh) -> RolloutConfig:
  """The static rollout shapes and settings of the run (the GRPO rollouts, the SFT featurizer, evaluation), for
  rollouts on `mesh`: row compaction is off when the rows are split over devices (rumination/config.py)."""
  return rollout_settings.from_config(cfg.rollout.to_dict(), row_shards(mesh))


def check_divisible(cfg, stages, mesh) -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  sizes = {f"stages.{k}.batch_size": cfg.stages[k].batch_size for k in stages}
  sizes.update({f"stages.{k}.batch_size x grpo.num_generations": cfg.stages[k].batch_size *
                cfg.grpo.num_generations for k in stages if cfg.stages[k].kind == "grpo"})
  sizes["eval.batch_size"] = cfg.eval.batch_size
  bad = {k: v for k, v in sizes.items() if v % n}
  if bad:
    raise ValueError(f"batch sizes {bad} are not divisible by the mesh's data x fsdp = {n} "
                     f"(mesh_shape={tuple(mesh.shape.values())}); change the batch sizes or config.mesh_shape")


def build_context(cfg, workdir: str, explicit=(), devices=None) -> RunContext:
  """Resolves and checks everything a run needs before any data is built or anything compiled.

  explicit: the config keys set on the command line (train.py); with `config.init_from`, an explicit model value
  that differs from the checkpoint's config.json is an error (convert/resolve.py)."""
  processor = resolve.make_processor(cfg, None, explicit)
  init_dir = cfg.get("init_from") or None
  config = resolve.make_model_config(cfg, processor, init_dir, explicit)
  stages = validate_curriculum(cfg)
  # Every stage's GRPO, reward and optimizer settings are checked now, before any stage runs.
  gcfg, reward_cfgs = validate_grpo(cfg, stages)
  for stage in stages:
    stage_optimizer(cfg, stage)
  mesh = run_mesh(cfg, devices)
  rollout_cfg = rollout_config(cfg, mesh)
  pcfg = pipeline.PipelineConfig(**cfg.pipeline.to_dict())
  check_observation_shapes(pcfg, rollout_cfg)
  resolve.check_compatible(config, processor, rollout_cfg)
  check_divisible(cfg, stages, mesh)
  env = make_env(config, rollout_cfg, processor.tokenizer, pcfg.num_frames)
  # Weights by the logical rules, batches over ("data", "fsdp"); jit propagates the rest (optimizer state).
  return RunContext(cfg=cfg, workdir=workdir, stages=stages, processor=processor, config=config,
                    init_dir=init_dir, gcfg=gcfg, reward_cfgs=reward_cfgs, rollout_cfg=rollout_cfg, pcfg=pcfg,
                    env=env, mesh=mesh, param_shardings=param_shardings(config, mesh))


@dataclasses.dataclass(frozen=True)
class Steps:
  """The jitted programs of the training loop. sft: (state, batch) -> (state, metrics); grpo: (state, batch,
  ref_params) -> (state, metrics); rollout: (params, prompts, key) -> Trajectory with batch x G rows. The GRPO
  ones are None when the curriculum has no GRPO stage."""
  sft: Callable
  grpo: Callable | None
  rollout: Callable | None


def make_steps(ctx: RunContext) -> Steps:
  sft = jax.jit(functools.partial(sft_step, ctx.config))
  if ctx.gcfg is None:
    return Steps(sft=sft, grpo=None, rollout=None)
  return Steps(sft=sft, grpo=jax.jit(functools.partial(grpo_step, ctx.config, ctx.gcfg)),
               rollout=make_rollout_fn(ctx.env, num_generations=ctx.gcfg.num_generations,
                                       temperature=ctx.gcfg.temperature))


def init_params(ctx: RunContext):
  """The run's starting params on the mesh: `config.init_from`'s weights, else a random init of `config.seed`."""
  if ctx.init_dir:
    from videor4_jax.convert.hf import load_params
    # Each device's shard read from disk for it (no whole-model copy on the host or on one device).
    return load_params(ctx.init_dir, ctx.config, jnp.dtype(ctx.config.param_dtype), ctx.param_shardings)
  from videor4_jax.model import vlm
  params = vlm.init_params(ctx.config, jax.random.key(ctx.cfg.seed))
  # Every process made the same values (same key), so each can put them onto the global mesh.
  return jax.device_put(params, ctx.param_shardings)


def place_state(ctx: RunContext, state):
  """Every state leaf on the mesh: params keep their rule shardings, other leaves not yet there replicate."""
  rep = NamedSharding(ctx.mesh, PartitionSpec())

  def put(x):
    sh = getattr(x, "sharding", None)
    return x if isinstance(sh, NamedSharding) and sh.mesh == ctx.mesh else jax.device_put(x, rep)
  return jax.tree.map(put, state)


def shard_batch(ctx: RunContext, batch: dict, global_batch: int) -> dict:
  """This process's rows of a batch -> global arrays on the mesh, split over ("data", "fsdp") on the batch axis
  (axis 1 of positions); `global_batch` rows in all."""
  def put(k, v):
    axis = 1 if k == "positions" and np.ndim(v) == 3 and np.shape(v)[0] == 3 else 0
    return distributed.to_global(batch_sharding(ctx.mesh, np.ndim(v), axis), v, global_batch, axis)
  return {k: put(k, v) for k, v in batch.items()}


def warn_if_skipped(loop: LoopState, stage: str, step: int, metrics) -> None:
  if int(metrics["skipped"]):
    loop.skipped_steps += 1
    print(f"WARNING: {stage} step {step}: non-finite loss ({float(metrics['loss'])}); the update was skipped "
          f"({loop.skipped_steps} skipped so far)", flush=True)
