"""AOT-compile the 7B SFT step, GRPO step and rumination rollout for a TPU slice on this CPU (libtpu; nothing
runs, nothing is materialized: every argument is a `jax.ShapeDtypeStruct` with a NamedSharding).

    python3 -m venv /tmp/tpu && /tmp/tpu/bin/pip install "jax[tpu]" flax optax ml-collections safetensors einops \
        tokenizers pillow
    /tmp/tpu/bin/python bench/tpu_aot.py --topology v5p:2x2x4 [--quick] [--graphs sft,grpo,rollout]
    /tmp/tpu/bin/python bench/tpu_aot.py --topology v5e:4x4

Per graph: per-device memory (memory_analysis) against HBM, XLA's flops and bytes (cost_analysis, which counts a
scanned layer body once: reported, not used), the analytic model / hardware flops (bench/tpu_model.py), the
roofline step time and MFU. Remat and mesh are chosen per graph: the candidates are tried in order (fastest
first) and the first that fits HBM is kept; every try is recorded. Writes bench/results/tpu_aot_<topology>.json.
Shapes (the paper's setting, DESIGN section 3): 16 frames, global view 224x224 (512 video tokens), R = 4 steps,
observations 336x336 (a crop: 144 tokens, a clip of up to 4 frames: 288), train sequences of S = 4096 slots,
16 rows per train step; rollout 16 prompts x G = 8, T = 256 tokens per step.
"""
from __future__ import annotations

import argparse, functools, importlib.util, json, os, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import tpu_model as tm  # noqa: E402
from videor4_jax import RolloutConfig, make_env, make_rollout_fn  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.model.config import model_config_from_dict  # noqa: E402
from videor4_jax.parallel.sharding import MESH_AXES, param_shardings  # noqa: E402
from videor4_jax.processing import chat  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402
from videor4_jax.rl import grpo  # noqa: E402
from videor4_jax.train.optim import OptimConfig, make_optimizer  # noqa: E402
from videor4_jax.train.steps import TrainState, grpo_step, sft_step  # noqa: E402

# Candidates per graph, fastest first: (mesh (data, fsdp, tensor), remat). The rollout keeps bf16 weights
# replicated over "data" and split over "tensor" so that a decode step reads, not all-gathers, its weights.
TRAIN_CANDIDATES = [((1, 16, 1), "dots"), ((1, 16, 1), "full"), ((1, 4, 4), "full")]
ROLLOUT_CANDIDATES = [((4, 1, 4), "none"), ((1, 4, 4), "none"), ((1, 16, 1), "none")]


def load_config(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return model_config_from_dict(mod.get_config().model)


def sds(shape, dtype, mesh, spec=P()):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def batch_spec(ndim, axis=0):
  s = [None] * ndim
  s[axis] = ("data", "fsdp")
  return P(*s)


def abstract_params(config, mesh, dtype):
  abstract = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))
  shard = param_shardings(config, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=s), abstract, shard), shard


def dims(config, abstract):
  p = abstract["params"]
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  n_all, n_vis, n_emb = count(p), count(p["visual"]), count(p["embed"])
  n_head = int(np.prod(p["lm_head"]["kernel"].shape)) if "lm_head" in p else n_emb
  t, v = config.text, config.vision
  return tm.Dims(n_text=n_all - n_vis - n_emb, n_head=n_head, n_vis=n_vis, n_all=n_all, layers=t.num_hidden_layers,
                 q_heads=t.num_attention_heads, head_dim=t.head_dim, vis_hidden=v.hidden_size, vis_depth=v.depth,
                 vis_full_blocks=len(v.fullatt_block_indexes), vis_window_patches=(v.window_size // v.patch_size) ** 2)


def memory(compiled, hbm):
  mem = compiled.memory_analysis()
  b = {k: int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "alias", "temp", "generated_code")}
  total = b["argument"] + b["output"] - b["alias"] + b["temp"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return dict(per_device_bytes=b, total_gib=round(total / 2**30, 2), hbm_gib=round(hbm / 2**30, 1), fits=total < hbm,
              xla_flops_per_device=float(cost.get("flops", 0.0)),
              xla_bytes_per_device=float(cost.get("bytes accessed", 0.0)))


def compile_graph(build, mesh):
  t0 = time.perf_counter()
  fn, args = build()              # outside set_mesh: the logical-spec probe runs eagerly on the host CPU
  with jax.set_mesh(mesh):
    compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ train steps
def train_graph(kind, config, mesh, remat, shp):
  cfg = config.replace(remat=remat, dtype="bfloat16", param_dtype="float32")
  B, S, R, Nv, No, Pd = shp["rows"], shp["seq"], shp["steps"], shp["video_patches"], shp["obs_patches"], \
      cfg.vision.patch_dim
  params, pshard = abstract_params(cfg, mesh, jnp.float32)
  tx = make_optimizer(OptimConfig(lr=1e-6, warmup_steps=10, total_steps=1000))
  opt_abs = jax.eval_shape(tx.init, params)
  rep = NamedSharding(mesh, P())
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt_abs, pshard, transform_non_params=lambda _: rep)
  opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt_abs, opt_sh)
  state = TrainState(step=sds((), jnp.int32, mesh), params=params, opt_state=opt, tx=tx)
  batch = dict(tokens=sds((B, S), jnp.int32, mesh, batch_spec(2)),
               positions=sds((3, B, S), jnp.int32, mesh, batch_spec(3, 1)),
               valid=sds((B, S), bool, mesh, batch_spec(2)), mm_types=sds((B, S), jnp.int32, mesh, batch_spec(2)),
               loss_mask=sds((B, S), jnp.float32, mesh, batch_spec(2)),
               video_pixels=sds((B, Nv, Pd), jnp.float32, mesh, batch_spec(3)),
               video_grid=sds((B, 3), jnp.int32, mesh, batch_spec(2)),
               obs_pixels=sds((B, R, No, Pd), jnp.float32, mesh, batch_spec(4)),
               obs_grid=sds((B, R, 3), jnp.int32, mesh, batch_spec(3)))
  if kind == "sft":
    return jax.jit(functools.partial(sft_step, cfg), donate_argnums=(0,)), (state, batch)
  batch.update(logp=sds((B, S), jnp.float32, mesh, batch_spec(2)), advantages=sds((B,), jnp.float32, mesh,
                                                                                    batch_spec(1)))
  ref, _ = abstract_params(cfg, mesh, jnp.bfloat16)                  # the frozen reference, kept in bf16
  gcfg = grpo.GRPOConfig(num_generations=8, beta=0.04)
  return jax.jit(functools.partial(grpo_step, cfg, gcfg), donate_argnums=(0,)), (state, batch, ref)


# ------------------------------------------------------------------------------------------------ rollout
def rollout_graph(config, mesh, shp, tok):
  cfg = config.replace(dtype="bfloat16", param_dtype="bfloat16", remat="none")
  B, F = shp["prompts"], shp["frames"]
  env = make_env(cfg, shp["rc"], tok, F)
  params, _ = abstract_params(cfg, mesh, jnp.bfloat16)
  Tp, Nv = shp["prompt_len"], shp["video_patches"]
  prompts = dict(input_ids=sds((B, Tp), jnp.int32, mesh, batch_spec(2)),
                 attention_mask=sds((B, Tp), jnp.int32, mesh, batch_spec(2)),
                 pixel_values_videos=sds((B, Nv, cfg.vision.patch_dim), jnp.float32, mesh, batch_spec(3)),
                 video_grid_thw=sds((B, 3), jnp.int32, mesh, batch_spec(2)),
                 source_frames=sds((B, F, *shp["src_hw"], 3), jnp.uint8, mesh, batch_spec(5)))
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=NamedSharding(mesh, P()))
  return make_rollout_fn(env, num_generations=shp["G"]), (params, prompts, key)


# ------------------------------------------------------------------------------------------------ main
def shapes(config, tok, quick):
  v = config.vision
  frames, ghw, ohw, src = 16, (224, 224), (336, 336), (448, 448)
  unit = v.patch_size
  video = (frames // 2, (ghw[0] // unit) * (ghw[1] // unit))
  K = 4
  obs = ((K + K % 2) // 2, (ohw[0] // unit) * (ohw[1] // unit))    # worst case: a clip of K frames
  R, T = 4, (64 if quick else 256)
  prompt = chat.prompt_ids(tok, "What is the price on the red sign?", video[0] * video[1] // 4)[0]
  Tp = -(-len(prompt) // 64) * 64
  rc0 = RolloutConfig(max_steps=R, max_step_tokens=T, obs_hw=ohw, max_clip_frames=K)
  obs_len = make_env(config.replace(dtype="bfloat16"), rc0, tok, frames).obs_len
  cache = -(-(Tp + R * (T + obs_len)) // 128) * 128
  return dict(rows=16, seq=1024 if quick else 4096, steps=R, video_items=[video] + [obs] * R, video=video, obs=obs,
              video_patches=video[0] * video[1], obs_patches=obs[0] * obs[1], prompts=16, G=8, frames=frames,
              src_hw=src, prompt_len=Tp, obs_len=obs_len, step_tokens=T, cache_len=cache,
              # rows are sharded over data x fsdp: no dynamic row gather of the cache (see RolloutConfig)
              rc=RolloutConfig(max_steps=R, max_step_tokens=T, cache_len=cache, obs_hw=ohw, max_clip_frames=K,
                               compact_rows=False))


def analyze(kind, compiled, secs, mesh_shape, remat, d, shp, chip, n_dev, config):
  peak, _, hbm, _ = tm.CHIPS[chip]
  row = dict(graph=kind, mesh=dict(zip(MESH_AXES, mesh_shape)), remat=remat, compile_s=round(secs, 1),
             **memory(compiled, hbm))
  data, fsdp, tensor = mesh_shape
  if kind in ("sft", "grpo"):
    f = tm.train_step(d, rows=shp["rows"], seq=shp["seq"], vision_items=shp["video_items"], remat=remat,
                      ref_forward=kind == "grpo")
    passes = {"full": 3, "dots": 2, "none": 2}[remat] + (1 if kind == "grpo" else 0)
    hbm_b, ici_b = tm.train_bytes(d, n_dev=n_dev, fsdp=fsdp, tensor=tensor, passes=passes)
    step, parts = tm.roofline(f["hw_flops"] / n_dev, max(hbm_b, row["xla_bytes_per_device"]), ici_b, chip)
    row.update(model_flops_per_device=f["model_flops"] / n_dev, hw_flops_per_device=f["hw_flops"] / n_dev,
               roofline_step_s=round(step, 4), roofline_parts=parts, tokens_per_step=shp["rows"] * shp["seq"],
               roofline_tokens_per_s=round(shp["rows"] * shp["seq"] / step, 1),
               roofline_mfu=round(f["model_flops"] / n_dev / (step * peak), 3))
  else:
    t = config.text
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 2
    rows = shp["prompts"] * shp["G"]
    phases = tm.rollout_phases(d, rows=rows, prompt=shp["prompt_len"], cache=shp["cache_len"], steps=shp["steps"],
                               step_tokens=shp["step_tokens"], obs_tokens=shp["obs_len"], video_items=shp["video"],
                               obs_items=shp["obs"], n_dev=n_dev, batch_shards=data * fsdp, tensor=tensor, fsdp=fsdp,
                               kv_bytes_per_slot=kv)
    per = {name: tm.roofline(fl, hb, ic, chip) for name, fl, hb, ic in phases}
    step = sum(v[0] for v in per.values())
    flops = sum(p[1] for p in phases)
    gen = rows * shp["steps"] * shp["step_tokens"]
    row.update(model_flops_per_device=flops, hw_flops_per_device=flops, roofline_step_s=round(step, 4),
               roofline_phases={k: dict(step_s=v[0], **v[1]) for k, v in per.items()}, generated_tokens=gen,
               roofline_tokens_per_s=round(gen / step, 1), roofline_mfu=round(flops / (step * peak), 3))
  print(f"{kind:>7} mesh {mesh_shape} remat {remat:>4}: {row['total_gib']:6.2f} GiB/device of {row['hbm_gib']} "
        f"(fits={row['fits']}), compile {secs:.0f}s; analytic {row['model_flops_per_device']:.3e} model flop/dev "
        f"(XLA, scan bodies once: {row['xla_flops_per_device']:.3e}); roofline {row['roofline_step_s'] * 1e3:.0f} ms, "
        f"MFU {row['roofline_mfu']:.2f}", flush=True)
  return row


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--topology", default="v5p:2x2x4", help="e.g. v5p:2x2x4 or v5e:4x4 (16 chips)")
  ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "configs", "qwen2_5_vl_7b.py"))
  ap.add_argument("--graphs", default="sft,grpo,rollout")
  ap.add_argument("--quick", action="store_true", help="S=1024 train sequences, T=64 rollout tokens per step")
  ap.add_argument("--remat", default=None, help="only try train candidates with this remat (none/dots/full)")
  ap.add_argument("--all-candidates", action="store_true", help="compile every candidate, not only up to a fit")
  args = ap.parse_args()
  topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
  devices = np.array(topo.devices)
  n_dev, chip = devices.size, args.topology.split(":")[0]
  config = load_config(args.config)
  tok = Tokenizer.tiny()      # token ids only set constants of the graph; shapes come from the 7B config
  shp = shapes(config, tok, args.quick)
  d = dims(config, jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0))))
  print(f"{args.topology}: {n_dev} x {devices.flat[0].device_kind}; 7B: {d.n_all / 1e9:.2f}B params "
        f"(vision {d.n_vis / 1e9:.2f}B)", flush=True)
  results, chosen = [], {}
  for kind in args.graphs.split(","):
    for mesh_shape, remat in (ROLLOUT_CANDIDATES if kind == "rollout" else TRAIN_CANDIDATES):
      if int(np.prod(mesh_shape)) != n_dev or (args.remat and kind != "rollout" and remat != args.remat):
        continue
      mesh = Mesh(devices.reshape(mesh_shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
      build = (functools.partial(rollout_graph, config, mesh, shp, tok) if kind == "rollout"
               else functools.partial(train_graph, kind, config, mesh, remat, shp))
      try:
        compiled, secs = compile_graph(build, mesh)
      except Exception as e:          # e.g. an allocation larger than HBM: record it and try the next candidate
        print(f"{kind:>7} mesh {mesh_shape} remat {remat:>4}: failed to compile: {str(e).splitlines()[0][:300]}")
        results.append(dict(graph=kind, mesh=dict(zip(MESH_AXES, mesh_shape)), remat=remat, fits=False,
                            error=str(e).splitlines()[0][:1000]))
        continue
      row = analyze(kind, compiled, secs, mesh_shape, remat, d, shp, chip, n_dev, config)
      results.append(row)
      if row["fits"] and kind not in chosen:
        chosen[kind] = row
        if not args.all_candidates:
          break
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                     f"tpu_aot_{args.topology.replace(':', '_')}{'_quick' if args.quick else ''}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  meta = {k: v for k, v in shp.items() if k != "rc"}
  with open(out, "w") as f:
    json.dump(dict(topology=args.topology, devices=n_dev, device_kind=devices.flat[0].device_kind,
                   params=d.n_all, shapes=meta, jax=jax.__version__, results=results,
                   chosen={k: dict(mesh=v["mesh"], remat=v["remat"]) for k, v in chosen.items()}), f, indent=2)
  line = "; ".join(f"{k} fits={k in chosen}" + (f" ({chosen[k]['total_gib']:.1f}/{chosen[k]['hbm_gib']:.0f} GiB, "
                                                 f"remat={chosen[k]['remat']}, roofline MFU "
                                                 f"{chosen[k]['roofline_mfu']:.2f})" if k in chosen else "")
                   for k in args.graphs.split(","))
  print(f"7B on {args.topology}: {line}")


if __name__ == "__main__":
  main()
