"""Ahead-of-time fit check of a training run: `python train.py --config C --aot_topology=v5p:2x2x4`.

Resolves the run as the Runner does (processor and model config from `init_from`, mesh from `mesh_shape`, rollout
settings from the mesh), then lowers and compiles for the topology's devices, with nothing materialized (every
argument a `jax.ShapeDtypeStruct` with its NamedSharding), the functions the run executes with the config's
shapes: each distinct train step (SFT; GRPO with its KL reference), each GRPO stage's rollout, and the evaluation
rollout. Reports per-chip memory (XLA's memory analysis, plus the train state that stays resident while a rollout
runs) against the chip's HBM, and the analytic roofline time per SFT step and per RL iteration (train/roofline.py).

Only a checkpoint's config and processor files are read (no weights). `topology="cpu"` compiles for this host's
devices (no HBM bound, no roofline): the same code path, testable without libtpu.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from videor4_jax.data.features import RlFeaturizer, SftFeaturizer
from videor4_jax.model import vlm
from videor4_jax.parallel.sharding import batch_sharding, row_shards, use_mesh
from videor4_jax.rumination.rollout import make_rollout_fn
from videor4_jax.train import grpo_stage, roofline
from videor4_jax.train.context import RunContext, build_context, make_steps, stage_frozen, stage_optimizer
from videor4_jax.train.curriculum import _SFT_KEYS
from videor4_jax.train.steps import TrainState

ROLLOUT_INPUTS = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "source_frames")


@dataclasses.dataclass
class GraphReport:
  """One compiled function. Bytes are per device; `resident_bytes` is train state that is live while this
  function runs but is not its argument (the optimizer state and KL reference during a rollout)."""
  graph: str
  stages: list
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  resident_bytes: int
  hbm_bytes: int | None
  compile_s: float
  error: str = ""         # XLA's out-of-memory message when it refused to compile the program

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.resident_bytes

  @property
  def fits(self) -> bool:
    return not self.error and (self.hbm_bytes is None or self.peak_bytes <= self.hbm_bytes)


def topology_devices(topology: str):
  """(devices, chip name, HBM bytes per chip or None). "cpu": this host's devices."""
  if topology == "cpu":
    return jax.devices(), "cpu", None
  from jax.experimental import topologies
  chip = topology.split(":")[0]
  if chip not in roofline.CHIPS:
    raise ValueError(f"--aot_topology={topology!r}: chip {chip!r} has no spec in train/roofline.py CHIPS "
                     f"({sorted(roofline.CHIPS)}); e.g. v5p:2x2x4, v5e:4x4, v6e:4x4")
  try:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  except Exception as e:      # no libtpu, or an unknown topology name
    raise RuntimeError(f"--aot_topology={topology!r}: cannot describe this TPU topology ({str(e).splitlines()[0]}); "
                       f"it needs libtpu: pip install -e '.[tpu-aot]' in a separate environment") from e
  return list(topo.devices), chip, int(roofline.CHIPS[chip][2])


def _sds(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard: shards are equal)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class AbstractRun:
  """The Runner's context (train/context.py build_context, the same function) and its params as shapes."""
  ctx: RunContext
  params: object          # abstract params with the rule shardings

  def __getattr__(self, name):      # cfg, processor, config, mesh, rollout_cfg, pcfg, env, stages, gcfg
    return getattr(self.ctx, name)

  def batch(self, spec: dict, rows: int, replicated: bool = False) -> dict:
    rep = NamedSharding(self.mesh, P())
    return {k: _sds((rows, *shape), dtype, rep if replicated else batch_sharding(self.mesh, 1 + len(shape)))
            for k, (shape, dtype) in spec.items()}

  def state(self, stage: str):
    tx = stage_optimizer(self.cfg, stage)
    rep = NamedSharding(self.mesh, P())
    opt = jax.eval_shape(tx.init, self.params)
    shard = optax.tree_map_params(tx, lambda _, p: p.sharding, opt, self.params, transform_non_params=lambda _: rep)
    opt = jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), opt, shard)
    return TrainState(step=_sds((), jnp.int32, rep), params=self.params, opt_state=opt, tx=tx,
                      frozen=stage_frozen(self.cfg, stage))


def abstract_run(cfg, devices, explicit=()) -> AbstractRun:
  ctx = build_context(cfg, "", explicit, devices)
  shapes = jax.eval_shape(lambda: vlm.init_params(ctx.config, jax.random.key(0)))
  params = jax.tree.map(lambda x, s: _sds(x.shape, ctx.config.param_dtype, s), shapes, ctx.param_shardings)
  return AbstractRun(ctx, params)


def _compile(run: AbstractRun, fn, args, name, stages, hbm, resident=0) -> GraphReport:
  t0 = time.perf_counter()
  try:
    with use_mesh(run.mesh):
      compiled = fn.lower(*args).compile()
  except Exception as e:      # XLA refuses a program whose temporaries exceed HBM: that is a "does not fit"
    if "RESOURCE_EXHAUSTED" not in str(e) or hbm is None:
      raise
    return GraphReport(name, list(stages), device_bytes(args), 0, 0, 0, resident, hbm,
                       round(time.perf_counter() - t0, 1), error=str(e).splitlines()[0][:500])
  mem = compiled.memory_analysis()
  get = lambda k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
  return GraphReport(name, list(stages), get("argument"), get("output"), get("alias"), get("temp"), resident, hbm,
                     round(time.perf_counter() - t0, 1))


def _sft_args(run: AbstractRun, stage: str):
  s = run.cfg.stages[stage]
  pcfg = dataclasses.replace(run.pcfg, batch_size=s.batch_size)
  spec = SftFeaturizer(pcfg, run.processor, run.rollout_cfg, run.config).output_spec()
  batch = run.batch({k: spec[k] for k in _SFT_KEYS}, s.batch_size)        # the Runner's batch (_sft_batch):
  shape_b3s, dtype = spec["positions"]                                       # positions become [3, B, S]
  batch["positions"] = _sds((shape_b3s[0], s.batch_size, *shape_b3s[1:]), dtype, batch_sharding(run.mesh, 3, 1))
  return run.state(stage), batch


def _rollout_args(run: AbstractRun, rows: int, replicated: bool = False):
  spec = RlFeaturizer(dataclasses.replace(run.pcfg, batch_size=rows), run.processor).output_spec()
  prompts = run.batch({k: spec[k] for k in ROLLOUT_INPUTS}, rows, replicated)
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=NamedSharding(run.mesh, P()))
  return run.params, prompts, key


def _grpo_batch(run: AbstractRun, traj):
  rows = traj.tokens.shape[0]
  adv = jax.ShapeDtypeStruct((rows,), jnp.float32)
  b = jax.eval_shape(grpo_stage.train_batch, traj, adv, jax.ShapeDtypeStruct((rows,), jnp.bool_))
  return {k: _sds(v.shape, v.dtype, batch_sharding(run.mesh, v.ndim, 1 if k == "positions" else 0))
          for k, v in b.items()}


def _vision_items(run: AbstractRun):
  """(groups, patches per group) of the global video and of the largest observation (a clip of K frames)."""
  groups = run.pcfg.num_frames // run.processor.vision.temporal_patch_size
  video = (groups, run.processor.vision.max_video_patches(run.pcfg.num_frames) // groups)
  rc, patch = run.rollout_cfg, run.processor.vision.patch_size
  obs = ((rc.max_clip_frames + rc.max_clip_frames % 2) // 2, (rc.obs_hw[0] // patch) * (rc.obs_hw[1] // patch))
  return video, obs


def roofline_times(run: AbstractRun, chip: str, n_dev: int) -> dict:
  """Analytic lower bounds (seconds) of one SFT step and one RL iteration (rollout + update) of every stage."""
  d = roofline.dims_of(run.config, jax.eval_shape(lambda: vlm.init_params(run.config, jax.random.key(0))))
  video, obs = _vision_items(run)
  fsdp, tensor = run.mesh.shape["fsdp"], run.mesh.shape["tensor"]
  remat = run.config.remat if run.config.remat in ("full", "dots") else "none"
  pbytes = jnp.dtype(run.config.param_dtype).itemsize
  t = run.config.text
  out = {}
  for stage in run.stages:
    s = run.cfg.stages[stage]
    if s.kind == "sft":
      f = roofline.train_step(d, rows=s.batch_size, seq=run.pcfg.max_seq_tokens, ref_forward=False, remat=remat,
                              vision_items=[video] + [obs] * run.pcfg.max_observations)
      passes = {"full": 3, "dots": 2, "none": 2}[remat]
      hbm, ici = roofline.train_bytes(d, n_dev=n_dev, fsdp=fsdp, tensor=tensor, passes=passes, param_bytes=pbytes)
      out[stage] = dict(step_s=roofline.roofline(f["hw_flops"] / n_dev, hbm, ici, chip)[0])
      continue
    gcfg, rc = run.gcfg, run.rollout_cfg
    rows = s.batch_size * gcfg.num_generations
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * jnp.dtype(run.config.dtype).itemsize
    phases = roofline.rollout_phases(d, rows=rows, prompt=run.pcfg.max_prompt_tokens, cache=rc.cache_len,
                                     steps=rc.max_steps, step_tokens=rc.max_step_tokens, obs_tokens=run.env.obs_len,
                                     video_items=video, obs_items=obs, n_dev=n_dev,
                                     batch_shards=row_shards(run.mesh), tensor=tensor, fsdp=fsdp,
                                     kv_bytes_per_slot=kv, param_bytes=pbytes)
    rollout_s = sum(roofline.roofline(fl, hb, ic, chip)[0] for _, fl, hb, ic in phases)
    f = roofline.train_step(d, rows=rows, seq=rc.cache_len, vision_items=[video] + [obs] * rc.max_steps,
                            remat=remat, ref_forward=gcfg.beta > 0)
    passes = {"full": 3, "dots": 2, "none": 2}[remat] + (1 if gcfg.beta > 0 else 0)
    hbm, ici = roofline.train_bytes(d, n_dev=n_dev, fsdp=fsdp, tensor=tensor, passes=passes, param_bytes=pbytes)
    update_s = roofline.roofline(f["hw_flops"] / n_dev, hbm, ici, chip)[0] * gcfg.num_inner_steps
    out[stage] = dict(rollout_s=rollout_s, update_s=update_s, step_s=rollout_s + update_s)
  return out


def compile_run(cfg, topology: str, explicit=(), graphs: str = "all") -> dict:
  """Compiles every function of the run for `topology` (or those named in `graphs`: "sft_step,rollout,grpo_step,
  eval_rollout"); returns {"graphs": [GraphReport], "roofline", "fits"}."""
  wanted = None if graphs == "all" else set(graphs.split(","))
  want = lambda name: wanted is None or name in wanted
  devices, chip, hbm = topology_devices(topology)
  run = abstract_run(cfg, devices, explicit)
  print(f"[aot] {topology}: {len(devices)} x {devices[0].device_kind}, mesh {dict(run.mesh.shape)}, "
        f"rollout compact_rows={run.rollout_cfg.compact_rows}", flush=True)
  steps = make_steps(run.ctx)              # the Runner's own jitted programs
  reports, seen = [], {}
  last_state = None
  for stage in run.stages:
    s = cfg.stages[stage]
    state = last_state = run.state(stage)
    key = (s.kind, s.batch_size, bool(s.get("freeze_vision", False)), int(s.get("grad_accum", 1)))
    if key in seen:                      # the same graph as an earlier stage's (only schedule constants differ)
      for r in seen[key]:
        r.stages.append(stage)
      continue
    if s.kind == "sft":
      state, batch = _sft_args(run, stage)
      seen[key] = [_compile(run, steps.sft, (state, batch), "sft_step", [stage], hbm)] if want("sft_step") else []
    else:
      ref = run.params if run.gcfg.beta > 0 else None
      resident = device_bytes(state.opt_state) + (device_bytes(ref) if ref is not None else 0)
      roll, step = steps.rollout, steps.grpo
      args = _rollout_args(run, s.batch_size)
      batch = _grpo_batch(run, jax.eval_shape(roll, *args))
      seen[key] = ([_compile(run, roll, args, "rollout", [stage], hbm, resident)] if want("rollout") else []) + \
                  ([_compile(run, step, (state, batch, ref), "grpo_step", [stage], hbm)] if want("grpo_step") else [])
    reports += seen[key]
    for r in seen[key]:
      _print(r)
  if cfg.eval.num_examples and want("eval_rollout"):
    ev = _compile(run, make_rollout_fn(run.env, greedy=True), _rollout_args(run, cfg.eval.batch_size, True),
                  "eval_rollout", ["eval"], hbm, device_bytes(last_state.opt_state))
    reports.append(ev)
    _print(ev)
  times = roofline_times(run, chip, len(devices)) if hbm is not None else {}
  for stage, t in times.items():
    parts = f" (rollout {t['rollout_s']:.2f} s + update {t['update_s']:.2f} s)" if "rollout_s" in t else ""
    print(f"[aot] roofline {stage}: {t['step_s']:.3f} s per {'RL iteration' if parts else 'step'}{parts}",
          flush=True)
  fits = all(r.fits for r in reports)
  print(f"[aot] {'everything fits' if fits else 'DOES NOT FIT'} "
        f"({'HBM ' + format(hbm / 2**30, '.1f') + ' GiB per chip' if hbm else 'no HBM bound on cpu'})", flush=True)
  return dict(topology=topology, chip=chip, devices=len(devices), mesh=dict(run.mesh.shape), graphs=reports,
              roofline=times, fits=fits)


def _print(r: GraphReport) -> None:
  gib = lambda b: b / 2**30
  if r.error:
    print(f"[aot] {r.graph:<12} {','.join(r.stages):<16} DOES NOT FIT: {r.error}", flush=True)
    print("[aot]     what is large: compile a smaller shape that fits (e.g. --config.rollout.cache_len) with "
          "XLA_FLAGS='--xla_dump_to=DIR --xla_dump_hlo_as_text' and read DIR/*memory-usage-report.txt", flush=True)
    return
  bound = f" of {gib(r.hbm_bytes):.1f}" if r.hbm_bytes else ""
  print(f"[aot] {r.graph:<12} {','.join(r.stages):<16} {gib(r.peak_bytes):7.2f}{bound} GiB/chip "
        f"(arguments {gib(r.argument_bytes):.2f}, outputs {gib(r.output_bytes - r.alias_bytes):.2f}, "
        f"temp {gib(r.temp_bytes):.2f}, resident {gib(r.resident_bytes):.2f})"
        f"{'' if r.fits else '  DOES NOT FIT'}; compiled in {r.compile_s:.0f} s", flush=True)
