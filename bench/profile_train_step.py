"""Where one train step spends its time, ours (XLA:CPU, jax.profiler) beside HF (torch.profiler), same batch.

  python bench/profile_train_step.py [--quick] [--step sft|grpo] [--layers unrolled|scanned] [--threads 1]
                                     [--steps 3] [--top 15] [--out bench/results/profile_train_step[_quick].json]

Ours: `jax.profiler` traces `--steps` steps of the compiled step (perfetto JSON); each XLA op's time is summed by
kind: matmuls (`dot`, YNNPACK `ynn_fusion`), transposing fusions (`copy_*`: an elementwise producer written in the
transposed layout a weight-gradient dot asks for), layer-stack slicing (`dynamic-slice` / `dynamic-update-slice`,
scanned layers only), the rest. HF: `torch.profiler` over the same number of steps, self CPU time per aten op.
Run with one thread (the default) for figures that other jobs on the machine disturb least.
"""
from __future__ import annotations

import argparse, collections, os, re, sys, tempfile  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from xla_trace import xla_op_times  # noqa: E402

KINDS = (("matmul", r"^(dot|ynn_fusion|.*convolution)"), ("transposing fusion", r"^copy"),
         ("layer-stack slicing", r"dynamic-(update-)?slice"), ("optimizer / where", r"select|multiply_add"))


def by_kind(op_ms) -> dict:
  kinds = collections.Counter()
  for name, ms in op_ms.items():
    kind = next((k for k, pat in KINDS if re.search(pat, name)), "other")
    kinds[kind] += ms
  return {k: round(v, 2) for k, v in kinds.most_common()}


def main():
  """The bench as one script, top to bottom (why one ~80-line function: the thread count must be set, by
  common.set_threads, before jax and torch are imported and create their thread pools, so the imports and every
  setup step come after it, in this order)."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--step", choices=("sft", "grpo"), default="sft")
  ap.add_argument("--layers", choices=("unrolled", "scanned"), default="unrolled")
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--top", type=int, default=15)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  threads = common.set_threads(args.threads)
  import jax
  import torch
  import train_step as ts
  b = ts.build(args.quick, args.layers)
  batch, kw = b.step_args(args.step)
  step, state = b.jit_steps[args.step], b.fresh_state()
  state, _ = jax.block_until_ready(step(state, batch, **kw))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(args.steps):
      state, _ = jax.block_until_ready(step(state, batch, **kw))
    jax.profiler.stop_trace()
    ours = xla_op_times(d, args.steps)

  hf_fn = b.hf_step(args.step)
  hf_fn()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      hf_fn()
  hf = collections.Counter({e.key: e.self_cpu_time_total / 1e3 / args.steps for e in prof.key_averages()})
  hf_kinds = collections.Counter()
  for name, ms in hf.items():
    hf_kinds["matmul" if re.search(r"mm|addmm|bmm|matmul|linear|conv", name) else
             "optimizer" if "adam" in name.lower() or "_foreach" in name else "other"] += ms
  res = dict(config=dict(step=args.step, quick=args.quick, layers=args.layers, threads=threads, steps=args.steps),
             ours=dict(total_ms=round(sum(ours.values()), 1), kinds=by_kind(ours),
                       top_ms={k: round(v, 2) for k, v in ours.most_common(args.top)}),
             hf=dict(total_ms=round(sum(hf.values()), 1), kinds={k: round(v, 2) for k, v in hf_kinds.most_common()},
                     top_ms={k: round(v, 2) for k, v in hf.most_common(args.top)}),
             machine=common.machine(threads))
  for side in ("ours", "hf"):
    r = res[side]
    print(f"{side}: {r['total_ms']:.1f} ms of ops per step; by kind " +
          ", ".join(f"{k} {v:.1f}" for k, v in r["kinds"].items()))
    for k, v in r["top_ms"].items():
      print(f"  {v:8.2f} ms  {k[:90]}")
  out = common.write_json(res, f"profile_train_step{'_quick' if args.quick else ''}.json", args.out)
  print("wrote", out)


if __name__ == "__main__":
  main()
