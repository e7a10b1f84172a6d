"""One decode token's attention over a cached prefix, in XLA:CPU and in torch, at 1 and 2 threads.

  python bench/attention_kernels.py [--model quick|full] [--rows 16] [--lengths 40,80,160,320] [--reps 200]
                                    [--threads 1,2] [--out bench/results/attention_kernels[_quick].json]

A decode step attends each row's one query token (H heads, Hkv KV groups of r = H / Hkv heads) over the first n
slots of that row's cache: per row and group a `[r, Dh] x [Dh, n]` product, a softmax over n, a `[r, n] x [n, Dh]`
product. bench/profile_rollout.py finds this the largest cost of the CPU-setting rollout after the projections.
This bench times it alone, per call (a jitted `fori_loop` of `--reps` calls, each query made to depend on the last
output so that none is hoisted; torch: the same loop in Python, no autograd), best of 3, on a head-major cache
`[B, Hkv, S, Dh]` of S = 320 slots (the rollout's CPU layout):

  xla_ours          what the rollout runs: the static prefix slice of the cache (`text.cached_attention`'s
                    branch) into `layers.attention_heads_major` (two batched dots, batch axes leading).
  xla_mul_reduce    the same math as broadcast multiplies and reductions (no dot), which XLA fuses with the slice.
  xla_keys_major    the score product oriented `[n, Dh] x [Dh, r]` (keys as the long side), then the same value dot.
  torch_bmm         torch's grouped formulation: `q @ k^T`, softmax, `@ v` on `[B, Hkv, r, Dh]` views (MKL bmm).
  torch_sdpa_hf     HF transformers' Qwen2 "sdpa" path: `repeat_interleave` of K and V to H heads, then
                    `scaled_dot_product_attention` (what HF's rollout pays per decode token and layer).

Each `--threads` count runs in a process of its own (XLA reads its thread count once per process). Prints
microseconds per call; the JSON has every figure, the shapes and the machine.
"""
from __future__ import annotations

import argparse, json, os, subprocess, sys, time  # noqa: E401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import common  # noqa: E402

HEADS = {"quick": (6, 2, 64), "full": (8, 2, 64)}   # (H, Hkv, Dh) of bench/rollout.py's SETTINGS
SLOTS = 320


def xla_sides(n: int) -> dict:
  """name -> fn(q_bqhd [B,1,H,Dh], k_bgsd, v_bgsd [B,Hkv,S,Dh]) -> [B,1,H,Dh]."""
  import jax
  import jax.numpy as jnp
  from videor4_jax.model.layers import attention_heads_major

  def ours(q, k, v):
    mask = jnp.ones((q.shape[0], 1, n), bool)
    return attention_heads_major(q, k[:, :, :n], v[:, :, :n], mask, q.shape[-1] ** -0.5)

  def grouped(q, hkv):
    b, _, h, d = q.shape
    return q.reshape(b, hkv, h // hkv, d)

  def mul_reduce(q, k, v):
    q_bgrd = grouped(q, k.shape[1]) * q.shape[-1] ** -0.5
    s = jnp.sum(q_bgrd[:, :, :, None, :] * k[:, :, None, :n, :], -1)
    p = jax.nn.softmax(s, -1)
    return jnp.sum(p[..., None] * v[:, :, None, :n, :], -2).reshape(q.shape)

  def keys_major(q, k, v):
    q_bgrd = grouped(q, k.shape[1]) * q.shape[-1] ** -0.5
    p = jax.nn.softmax(jnp.einsum("bgkd,bgrd->bgkr", k[:, :, :n], q_bgrd), 2)
    return jnp.einsum("bgkr,bgkd->bgrd", p, v[:, :, :n]).reshape(q.shape)

  return {"xla_ours": ours, "xla_mul_reduce": mul_reduce, "xla_keys_major": keys_major}


def torch_sides(n: int) -> dict:
  import torch

  def bmm(q, k, v):
    b, _, h, d = q.shape
    hkv = k.shape[1]
    q = q.reshape(b, hkv, h // hkv, d) * d ** -0.5
    return (torch.softmax(q @ k[:, :, :n].transpose(-1, -2), -1) @ v[:, :, :n]).reshape(b, 1, h, d)

  def sdpa_hf(q, k, v):
    b, _, h, d = q.shape
    r = h // k.shape[1]
    kk, vv = k[:, :, :n].repeat_interleave(r, 1), v[:, :, :n].repeat_interleave(r, 1)
    return torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kk, vv).transpose(1, 2)

  return {"torch_bmm": bmm, "torch_sdpa_hf": sdpa_hf}


def measure(model: str, rows: int, lengths: list, reps: int) -> list:
  """Child: every side at every prefix length n; [{n, side: microseconds per call}]."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  h, hkv, d = HEADS[model]
  rng = np.random.default_rng(0)
  q0 = rng.standard_normal((rows, 1, h, d), dtype=np.float32)
  k0, v0 = (rng.standard_normal((rows, hkv, SLOTS, d), dtype=np.float32) for _ in range(2))
  xq, xk, xv = map(jnp.asarray, (q0, k0, v0))
  tq, tk, tv = map(torch.from_numpy, (q0, k0, v0))
  out = []
  for n in lengths:
    loops = {}
    for name, fn in xla_sides(n).items():
      loop = jax.jit(lambda q, k, v, fn=fn: jax.lax.fori_loop(
          0, reps, lambda i, acc: acc + fn(q + 1e-9 * acc, k, v), jnp.zeros_like(q)))
      loop(xq, xk, xv).block_until_ready()
      loops[name] = lambda loop=loop: loop(xq, xk, xv).block_until_ready()
    for name, fn in torch_sides(n).items():
      def run(fn=fn):
        with torch.no_grad():
          acc = torch.zeros_like(tq)
          for _ in range(reps):
            acc = acc + fn(tq + 1e-9 * acc, tk, tv)
      loops[name] = run
    best = {name: float("inf") for name in loops}
    for _ in range(3):            # best of 3, the sides alternated
      for name, run in loops.items():
        t0 = time.perf_counter()
        run()
        best[name] = min(best[name], (time.perf_counter() - t0) / reps * 1e6)
    out.append(dict(n=n, **{k: round(v, 1) for k, v in best.items()}))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", choices=tuple(HEADS), default="quick")
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--lengths", default="40,80,160,320")
  ap.add_argument("--reps", type=int, default=200)
  ap.add_argument("--threads", default="1,2", help="thread counts, one process each")
  ap.add_argument("--child", type=int, default=None, help="internal: measure at this thread count")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  if args.child is not None:
    common.set_threads(args.child)
    print(common.MARK + json.dumps(measure(args.model, args.rows, lengths, args.reps)), flush=True)
    return
  h, hkv, d = HEADS[args.model]
  load_before = common.loadavg()
  res = dict(config=dict(model=args.model, rows=args.rows, heads=h, kv_heads=hkv, head_dim=d, slots=SLOTS,
                         lengths=lengths, reps=args.reps), by_threads={})
  for t in [int(x) for x in args.threads.split(",")]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(t), "--model", args.model, "--rows",
           str(args.rows), "--lengths", args.lengths, "--reps", str(args.reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = json.loads(next(ln for ln in out.splitlines() if ln.startswith(common.MARK))[len(common.MARK):])
    res["by_threads"][str(t)] = rows
    print(f"== {t} thread(s), {args.model} heads (H {h}, Hkv {hkv}, Dh {d}), {args.rows} rows: us per call")
    for r in rows:
      print(f"  n={r['n']:4d}  " + "  ".join(f"{k} {v:7.1f}" for k, v in r.items() if k != "n") +
            f"  | xla_ours / torch_bmm {r['xla_ours'] / r['torch_bmm']:.1f}x", flush=True)
  res["machine"] = common.machine(None, load_before=load_before, load_after=common.loadavg())
  print("wrote", common.write_json(res, f"attention_kernels{'_quick' if args.model == 'quick' else ''}.json",
                                   args.out))


if __name__ == "__main__":
  main()
