"""What bounds one train step on this CPU: the step against its own matrix products done alone, in XLA and torch.

  python bench/train_ceiling.py [--quick] [--step sft|grpo] [--runs 5] [--threads N] [--out ...]

The train-step goal (ours/HF >= 1.5x, bench/train_step.py) asks for a step 1.5x faster than HF's on the same work.
Most of a step's time is matrix products, and those run in a library's GEMM kernels on either side. This bench
takes every `dot_general` of our jitted step (its jaxpr: forward, backward, the chunked log-prob head, the GRPO
reference forward; a product inside a `scan` counted once per iteration) and times, alternating run by run
(ABAB..., `--runs` each, same threads):

  ours        our jitted step (bench/train_step.py's, CPU setting unless `--layers scanned`).
  hf          HF transformers' step on the same weights and batch (bench/train_step.py's `hf_steps`).
  xla_dots    only the step's products, one jitted program: each product on operands of its shapes (one random
              buffer per shape, passed as separate parameters so that XLA cannot merge equal products), each
              output summed to a scalar so that none is skipped. No elementwise work, attention softmax,
              norms, optimizer or data movement beyond the products' own.
  torch_dots  the same products in PyTorch (`mm` on transposed views for 2-D products, as HF's linear layers and
              their gradients call it; `einsum` for batched ones), no autograd.

Each side runs in a process of its own (`common.Worker`, as bench/train_step.py). `ceiling` = hf / min(xla_dots,
torch_dots): ours/HF could reach at most this if our step did nothing but its products, at the faster library's
speed (`ceiling_xla_kernels`: at XLA's). `ours_over_dots` = ours / xla_dots: the share of our step that is not
its products. GFLOP/s = the products' FLOPs (2 x output size x contracted size) / time. JSON:
bench/results/train_ceiling[_quick]_{sft,grpo}.json; final line: the ratios.
"""
from __future__ import annotations

import argparse, collections, math, os, sys  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

Dot = collections.namedtuple("Dot", "lhs rhs dims")   # operand shapes, ((lc, rc), (lb, rb))


def step_dots(closed_jaxpr) -> list[Dot]:
  """Every dot_general of a jaxpr, sub-jaxprs included; a dot in a `scan` body once per iteration. Raises on a dot
  under `while` (unknown trip count)."""
  out = []

  def walk(jaxpr, mult, under_while):
    for e in jaxpr.eqns:
      if e.primitive.name == "dot_general":
        if under_while:
          raise ValueError("a dot_general inside a while loop: its trip count is unknown")
        lhs, rhs = (tuple(v.aval.shape) for v in e.invars)
        dn = e.params["dimension_numbers"]
        dims = tuple(tuple(tuple(int(i) for i in x) for x in pair) for pair in dn)
        out.extend([Dot(lhs, rhs, dims)] * mult)
      for v in e.params.values():
        for sub in v if isinstance(v, (tuple, list)) else (v,):
          j = getattr(sub, "jaxpr", sub)
          if hasattr(j, "eqns"):
            walk(j, mult * (e.params["length"] if e.primitive.name == "scan" else 1),
                 under_while or e.primitive.name == "while")

  walk(closed_jaxpr.jaxpr, 1, False)
  return out


def flops(d: Dot) -> int:
  (lc, _), (lb, _) = d.dims
  out_lhs = [n for i, n in enumerate(d.lhs) if i not in lc and i not in lb]
  (_, rc), (_, rb) = d.dims
  out_rhs = [n for i, n in enumerate(d.rhs) if i not in rc and i not in rb]
  return 2 * math.prod(d.lhs[i] for i in lb) * math.prod(out_lhs) * math.prod(out_rhs) * math.prod(
      d.lhs[i] for i in lc)


def operands(dots) -> dict:
  """One random float32 buffer per operand shape (numpy; both sides read the same values)."""
  import numpy as np
  rng = np.random.default_rng(0)
  return {s: rng.standard_normal(s, dtype=np.float32) for s in sorted({s for d in dots for s in (d.lhs, d.rhs)})}


def xla_dots_fn(dots, buf):
  """(jitted fn, its arguments): every product on the shared buffers, each operand passed as its own parameter
  (no two products share an HLO operand, so none is merged); each output summed, the sums returned."""
  import jax
  import jax.numpy as jnp
  dev = {s: jnp.asarray(a) for s, a in buf.items()}
  args = [a for d in dots for a in (dev[d.lhs], dev[d.rhs])]

  @jax.jit
  def run(*ops):
    return jnp.stack([jax.lax.dot_general(ops[2 * i], ops[2 * i + 1], d.dims).sum() for i, d in enumerate(dots)])

  return run, args


def torch_dot(d: Dot):
  """A torch callable (lhs, rhs) -> the dot_general `d`: `mm` of (transposed) views for 2-D products, else einsum."""
  import torch
  (lc, rc), (lb, rb) = d.dims
  if len(d.lhs) == len(d.rhs) == 2 and not lb and len(lc) == 1:
    tl, tr = lc[0] == 0, rc[0] == 1
    return lambda a, b: torch.mm(a.t() if tl else a, b.t() if tr else b)
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  ls, rs = [None] * len(d.lhs), [None] * len(d.rhs)
  for i, j in zip(lb, rb):
    ls[i] = rs[j] = next(letters)
  for i, j in zip(lc, rc):
    ls[i] = rs[j] = next(letters)
  free_l = [i for i in range(len(ls)) if ls[i] is None]
  free_r = [j for j in range(len(rs)) if rs[j] is None]
  for i in free_l:
    ls[i] = next(letters)
  for j in free_r:
    rs[j] = next(letters)
  spec = f"{''.join(ls)},{''.join(rs)}->{''.join([ls[i] for i in lb] + [ls[i] for i in free_l] + [rs[j] for j in free_r])}"
  return lambda a, b: torch.einsum(spec, a, b)


def torch_dots_fn(dots, buf):
  """A callable running every product in torch on the shared buffers; returns each output's sum."""
  import torch
  tbuf = {s: torch.from_numpy(a) for s, a in buf.items()}
  calls = [(torch_dot(d), tbuf[d.lhs], tbuf[d.rhs]) for d in dots]

  def run():
    with torch.no_grad():
      return torch.stack([f(a, b).sum() for f, a, b in calls]).numpy()
  return run


def dots_side(b, step_name: str, side: str):
  """(callable, info) of `side` ("xla_dots" | "torch_dots"): the step's products; info has their count, GFLOP,
  the GFLOP of the largest shapes and each product's output sum (the parent checks both libraries agree)."""
  import jax
  import numpy as np
  batch, kw = b.step_args(step_name)
  dots = step_dots(jax.make_jaxpr(b.jit_steps[step_name])(b.fresh_state(), batch, **kw))
  buf = operands(dots)
  if side == "xla_dots":
    xla_fn, xla_args = xla_dots_fn(dots, buf)
    compiled = xla_fn.lower(*xla_args).compile()
    fn = lambda: np.asarray(compiled(*xla_args))
  else:
    fn = torch_dots_fn(dots, buf)
  by_shape = collections.Counter()
  for d in dots:
    by_shape[f"{d.lhs} x {d.rhs} {d.dims}"] += flops(d) / 1e9
  return fn, dict(count=len(dots), gflop=round(sum(map(flops, dots)) / 1e9, 3), sums=fn().tolist(),
                  top_gflop={k: round(v, 2) for k, v in by_shape.most_common(12)})


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--step", choices=("sft", "grpo"), default="sft")
  ap.add_argument("--layers", choices=("unrolled", "scanned"), default="unrolled")
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--out", default=None)
  ap.add_argument("--allocator", choices=tuple(common.ALLOCATOR_ENV), default="default",
                  help="every side's glibc malloc settings (common.ALLOCATOR_ENV)")
  ap.add_argument("--worker", choices=SIDES, default=None, help="internal: one side in this process")
  return ap.parse_args(argv)


SIDES = ("ours", "hf", "xla_dots", "torch_dots")


def main(argv=None):
  """Top to bottom; the thread count first (common.set_threads, before JAX or torch run anything). Each side runs
  in a process of its own (common.Worker), started one after the other, then timed alternately."""
  args = parse_args(argv)
  threads = common.set_threads(args.threads)
  import numpy as np
  import transformers
  import train_step as ts
  transformers.logging.set_verbosity_error()
  if args.worker:
    b = ts.build(args.quick, args.layers, hf=args.worker == "hf")
    side = ts.side_fn(b, args.worker, args.step) if args.worker in ("ours", "hf") else dots_side(b, args.step,
                                                                                                 args.worker)
    return common.serve(*side)
  load_before = common.loadavg()
  argv = [sys.executable, os.path.abspath(__file__), "--step", args.step, "--layers", args.layers, "--threads",
          str(threads)] + (["--quick"] if args.quick else [])
  workers = {side: common.Worker(argv + ["--worker", side], side, common.ALLOCATOR_ENV[args.allocator])
             for side in SIDES}
  xs, ts_ = (np.asarray(workers[k].info["sums"]) for k in ("xla_dots", "torch_dots"))
  if not np.allclose(xs, ts_, rtol=1e-3, atol=1e-4 * np.abs(ts_).max()):
    sys.exit(f"torch's products differ from XLA's: max |diff| {np.abs(xs - ts_).max()}")
  t = common.alternate_workers(workers, args.runs)
  for w in workers.values():
    w.close()
  dots = {k: v for k, v in workers["xla_dots"].info.items() if k != "sums"}
  gflop = dots["gflop"]
  med = {k: t[k]["wall"]["median"] for k in SIDES}
  res = dict(config=dict(step=args.step, quick=args.quick, layers=args.layers, runs=args.runs, threads=threads),
             dots=dots, times=t, median_s={k: round(v, 4) for k, v in med.items()},
             gflop_per_s={k: round(gflop / med[k], 1) for k in SIDES},
             ratios=dict(ours_over_hf=round(med["hf"] / med["ours"], 2),
                         ceiling=round(med["hf"] / min(med["xla_dots"], med["torch_dots"]), 2),
                         ceiling_xla_kernels=round(med["hf"] / med["xla_dots"], 2),
                         ours_over_dots=round(med["ours"] / med["xla_dots"], 2),
                         hf_over_dots=round(med["hf"] / med["torch_dots"], 2),
                         xla_dots_over_torch_dots=round(med["torch_dots"] / med["xla_dots"], 2)),
             warmup=dict(ours=workers["ours"].info, hf=workers["hf"].info),
             machine=common.machine(threads, load_before=load_before, load_after=common.loadavg(),
                                    isolation="one process per side", allocator=args.allocator,
                                    allocator_env=common.ALLOCATOR_ENV[args.allocator]))
  for k in SIDES:
    print(f"{k:>10}: median {med[k]:.4f} s [{t[k]['wall']['min']:.4f}-{t[k]['wall']['max']:.4f}], "
          f"{gflop / med[k]:.1f} GFLOP/s of the step's products", flush=True)
  name = f"train_ceiling{'_quick' if args.quick else ''}_{args.step}.json"
  print("wrote", common.write_json(res, name, args.out))
  r = res["ratios"]
  print(f"{args.step} {'quick' if args.quick else 'full'}: {dots['count']} products, {gflop:.1f} GFLOP; ours/HF "
        f"{r['ours_over_hf']:.2f}x; ceiling (HF / products alone) {r['ceiling']:.2f}x (XLA's kernels "
        f"{r['ceiling_xla_kernels']:.2f}x); ours / its products {r['ours_over_dots']:.2f}; HF / its products "
        f"{r['hf_over_dots']:.2f}")
  return res


if __name__ == "__main__":
  main()
