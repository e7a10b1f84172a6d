"""The train step's GEMM shapes in XLA:CPU and torch, one product at a time, under XLA's kernel-library flags.

  python bench/gemm_kernels.py [--quick] [--threads N] [--reps 20] [--out bench/results/gemm_kernels[_quick].json]

bench/train_ceiling.py finds the train step's products slower in XLA than in torch. This bench asks whether an
XLA:CPU setting closes that: for the decoder's product shapes (forward x @ W, input gradient dy @ W^T, weight
gradient x^T dy; `[B*T, D]` rows as the CPU setting lays them out), it times `--reps` products in one jitted loop
(each output summed; the input scaled by the loop carry so that no iteration can be hoisted) against the same
products in torch (`mm` on transposed views, each output summed), best of 3, in one process per XLA flag set
(XLA_FLAGS is read once per process):

  default           YNNPACK for dots (jaxlib's default)
  onednn            --xla_cpu_use_onednn=true
  onednn_fusion     --xla_cpu_experimental_onednn_fusion_type=dot
  xnnpack           --xla_cpu_use_xnnpack=true
  eigen             --xla_cpu_experimental_ynn_fusion_type= (no YNNPACK fusions: XLA's Eigen dot)

Prints GFLOP/s per shape and side; JSON with every figure, the flags and the machine.
"""
from __future__ import annotations

import argparse, json, os, subprocess, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

FLAGS = {"default": "", "onednn": "--xla_cpu_use_onednn=true",
         "onednn_fusion": "--xla_cpu_experimental_onednn_fusion_type=dot", "xnnpack": "--xla_cpu_use_xnnpack=true",
         "eigen": "--xla_cpu_experimental_ynn_fusion_type="}


def shapes(quick: bool) -> list:
  """(rows, d_in, d_out, kind) of the decoder's products at the train bench's sizes (bench/train_step.py)."""
  n, d, f = (312, 384, 1024) if quick else (2048, 512, 1408)
  out = []
  for din, dout in ((d, d), (d, f), (f, d)):
    out += [(n, din, dout, "x @ W"), (n, din, dout, "dy @ W^T"), (n, din, dout, "x^T dy")]
  return out


def operand_dims(n, din, dout, kind):
  """(lhs shape, rhs shape, contracting dims, FLOPs) of one product."""
  if kind == "x @ W":
    return (n, din), (din, dout), ((1,), (0,)), 2 * n * din * dout
  if kind == "dy @ W^T":
    return (n, dout), (din, dout), ((1,), (1,)), 2 * n * din * dout
  return (n, din), (n, dout), ((0,), (0,)), 2 * n * din * dout


def measure(quick: bool, reps: int) -> list:
  """Child: every shape in XLA (this process's XLA_FLAGS) and torch; [(shape..., xla_s, torch_s, flops)]."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  rng = np.random.default_rng(0)
  rows = []
  for n, din, dout, kind in shapes(quick):
    ls, rs, (lc, rc), fl = operand_dims(n, din, dout, kind)
    a, b = rng.standard_normal(ls, dtype=np.float32), rng.standard_normal(rs, dtype=np.float32)
    dims = ((lc, rc), ((), ()))
    loop = jax.jit(lambda x, y: jax.lax.fori_loop(
        0, reps, lambda i, acc: acc + jax.lax.dot_general(x * (1.0 + 0.0 * acc), y, dims).sum(), 0.0))
    xa, xb = jnp.asarray(a), jnp.asarray(b)
    loop(xa, xb).block_until_ready()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ta, tb = (ta.t() if lc[0] == 0 else ta), (tb.t() if rc[0] == 1 else tb)
    xla_t, torch_t = [], []
    for _ in range(3):
      t0 = time.perf_counter()
      loop(xa, xb).block_until_ready()
      xla_t.append((time.perf_counter() - t0) / reps)
      t0 = time.perf_counter()
      with torch.no_grad():
        for _ in range(reps):
          torch.mm(ta, tb).sum()
      torch_t.append((time.perf_counter() - t0) / reps)
    rows.append(dict(shape=[n, din, dout], kind=kind, flops=fl, xla_s=min(xla_t), torch_s=min(torch_t)))
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--reps", type=int, default=20)
  ap.add_argument("--child", action="store_true", help="internal: measure under this process's XLA_FLAGS")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  threads = common.set_threads(args.threads)
  if args.child:
    print(common.MARK + json.dumps(measure(args.quick, args.reps)), flush=True)
    return
  load_before = common.loadavg()
  res = dict(config=dict(quick=args.quick, reps=args.reps, threads=threads), flags=FLAGS, by_flags={})
  for name, flags in FLAGS.items():
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(threads), "--reps",
           str(args.reps)] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rows = json.loads(next(ln for ln in out.splitlines() if ln.startswith(common.MARK))[len(common.MARK):])
    res["by_flags"][name] = rows
    print(f"== XLA {name} ({flags or 'no flags'})")
    for r in rows:
      print(f"  {str(r['shape']):18s} {r['kind']:9s} XLA {r['flops'] / r['xla_s'] / 1e9:6.1f} GFLOP/s, torch "
            f"{r['flops'] / r['torch_s'] / 1e9:6.1f}", flush=True)
  tot = {k: sum(r["xla_s"] for r in rows) for k, rows in res["by_flags"].items()}
  torch_tot = sum(r["torch_s"] for r in res["by_flags"]["default"])
  res["xla_over_torch_time"] = {k: round(v / torch_tot, 2) for k, v in tot.items()}
  res["machine"] = common.machine(threads, load_before=load_before, load_after=common.loadavg())
  print("wrote", common.write_json(res, f"gemm_kernels{'_quick' if args.quick else ''}.json", args.out))
  print("XLA time / torch time over these products: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                    res["xla_over_torch_time"].items()))


if __name__ == "__main__":
  main()
