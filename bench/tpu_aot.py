"""AOT-compile the 7B graphs for a TPU topology on this CPU (libtpu; nothing runs, nothing is materialized).

Reports per-device memory against HBM, XLA flops against the analytic count, and a roofline step time.
Needs the `tpu-aot` extra in its own venv (keeps libtpu out of CI):

    python3 -m venv /tmp/tpu && /tmp/tpu/bin/pip install "jax[tpu]" flax optax ml-collections safetensors einops
    PYTHONPATH=. /tmp/tpu/bin/python bench/tpu_aot.py --topology v5p:2x2x4 [--quick]

Writes bench/results/tpu_aot_<topology>.json. cost_analysis() does not multiply scanned layer bodies by their
trip count (ENV_NOTES section 8), so the analytic count (2 x params x tokens forward, plus attention) is the one
used for MFU; the XLA figure is reported beside it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

from videor4_jax.model import vlm
from videor4_jax.model.config import model_config_from_dict
from videor4_jax.parallel.sharding import LOGICAL_RULES, param_shardings

# Peak bf16 FLOP/s and HBM bandwidth / capacity per chip (public TPU specs).
CHIPS = {"v5p": (459e12, 2.76e12, 95e9), "v5e": (197e12, 0.82e12, 16e9), "v4": (275e12, 1.2e12, 32e9),
         "v6e": (918e12, 1.64e12, 32e9)}


def load_config(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return model_config_from_dict(mod.get_config().model)


def report(name, compiled, analytic_flops, chip, n_dev):
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak, bw, hbm = CHIPS[chip]
  per_dev = {k: int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "alias", "temp",
                                                                        "generated_code")}
  total = per_dev["argument"] + per_dev["output"] - per_dev["alias"] + per_dev["temp"]
  flops_dev = analytic_flops / n_dev
  bytes_dev = float(cost.get("bytes accessed", 0.0))
  t_compute, t_mem = flops_dev / peak, bytes_dev / bw
  step = max(t_compute, t_mem)
  row = dict(name=name, per_device_bytes=per_dev, total_gib=total / 2**30, hbm_gib=hbm / 2**30,
             fits=total < hbm, xla_flops_per_device=float(cost.get("flops", 0.0)),
             analytic_flops_per_device=flops_dev, bytes_accessed_per_device=bytes_dev,
             roofline_step_s=step, roofline_mfu=t_compute / step if step else 0.0)
  print(f"{name:>14}: {total / 2**30:7.2f} GiB/device of {hbm / 2**30:.0f} (fits={row['fits']}), "
        f"analytic {flops_dev:.3e} flop/dev, XLA {row['xla_flops_per_device']:.3e}, roofline {step * 1e3:.1f} ms, "
        f"MFU {row['roofline_mfu']:.2f}")
  return row


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--topology", default="v5p:2x2x4")
  ap.add_argument("--config", default="configs/qwen2_5_vl_7b.py")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=4096)
  ap.add_argument("--quick", action="store_true", help="smaller sequence for a fast check")
  args = ap.parse_args()
  seq = 1024 if args.quick else args.seq
  topo = topologies.get_topology_desc(platform="tpu", topology_name=args.topology)
  devices = np.array(topo.devices)
  n = devices.size
  mesh = jax.sharding.Mesh(devices.reshape(1, n, 1), ("data", "fsdp", "tensor"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
  config = load_config(args.config)
  chip = args.topology.split(":")[0]
  abstract = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))
  shard = param_shardings(config, mesh, LOGICAL_RULES)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shard)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  text_params = n_params - sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]["visual"]))
  bsh = NamedSharding(mesh, P(("data", "fsdp")))
  B, T, D = args.batch, seq, config.text.hidden_size
  rows = []
  t = config.text
  attn_flops = lambda b, q, k: 4 * b * q * k * t.num_attention_heads * t.head_dim * t.num_hidden_layers

  # 1) Prefill: decoder over [B, T] into a KV cache of T + 512 slots.
  cache = jax.eval_shape(lambda: vlm.init_cache(config, B, T + 512, jnp.bfloat16))
  cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
      mesh, P(None, ("data", "fsdp")) if x.ndim == 5 else P(("data", "fsdp")))), cache)
  emb = jax.ShapeDtypeStruct((B, T, D), jnp.bfloat16, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
  pos = jax.ShapeDtypeStruct((3, B, T), jnp.int32, sharding=NamedSharding(mesh, P(None, ("data", "fsdp"))))
  valid = jax.ShapeDtypeStruct((B, T), bool, sharding=bsh)
  wi = jax.ShapeDtypeStruct((B,), jnp.int32, sharding=bsh)

  def prefill(p, e, pos, v, c, w):
    h, c = vlm.decode(config, p, e, pos, v, c, w)
    return vlm.logits(config, p, h[:, -1]), c

  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = jax.jit(prefill, donate_argnums=(4,)).lower(params, emb, pos, valid, cache, wi).compile()
  print(f"prefill compiled in {time.time() - t0:.1f}s")
  rows.append(report("prefill", compiled, 2 * text_params * B * T + attn_flops(B, T, T + 512) / 2, chip, n))

  # 2) One cached decode step (the rollout's inner loop body).
  emb1 = jax.ShapeDtypeStruct((B, 1, D), jnp.bfloat16, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
  pos1 = jax.ShapeDtypeStruct((3, B, 1), jnp.int32, sharding=NamedSharding(mesh, P(None, ("data", "fsdp"))))
  val1 = jax.ShapeDtypeStruct((B, 1), bool, sharding=bsh)
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = jax.jit(prefill, donate_argnums=(4,)).lower(params, emb1, pos1, val1, cache, wi).compile()
  print(f"decode step compiled in {time.time() - t0:.1f}s")
  rows.append(report("decode_step", compiled, 2 * text_params * B + attn_flops(B, 1, T + 512), chip, n))

  os.makedirs("bench/results", exist_ok=True)
  out = f"bench/results/tpu_aot_{args.topology.replace(':', '_')}.json"
  with open(out, "w") as f:
    json.dump(dict(topology=args.topology, devices=n, params=n_params, batch=B, seq=T, results=rows), f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
