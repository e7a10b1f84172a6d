"""Where the jitted rollout of bench/rollout.py spends its wall time, by part of the model (jax.profiler).

  python bench/profile_rollout.py [--shape quick|full] [--layers unrolled|scanned] [--threads N] [--row-groups N] [--runs 3]
                                  [--top 12] [--out bench/results/profile_rollout[_quick].json]

The rollout (`make_rollout_fn`, greedy, the bench's biased model; `--layers unrolled`, the default, is the CPU
setting `vlm.cpu_setting`) is compiled, run once untimed, timed `--runs` times, then traced over `--runs` calls.
Every traced op is named by the JAX source path XLA keeps in its HLO metadata and put in one part:

  projections         the decoder's q/k/v/o and MLP matrix products
  attention           attention over the KV cache: the static prefix slice of each layer's keys and values and the
                      two batched products with the softmax between them (`text.cached_attention`)
  decoder, other      norms, rotary embedding, residual adds, KV cache writes, the LM head
  vision tower        `encode_vision` of the prompts' video and of the observations
  observation pixels  crops / clips resized in-graph (pixel_ops), patches
  rollout, other      sampling, grammar, records, row gathers, loop carries

Wall time is attributed to ops instant by instant
(`xla_trace.wall_attributed`: time when two ops run at once is split between them), so the parts and `idle`
(no op running: dispatch, loop control) add up to the traced time. Run at `--threads 1` and at 2 to see what
the second thread buys.
"""
from __future__ import annotations

import argparse, os, re, sys, tempfile, time  # noqa: E401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

import common  # noqa: E402

PARTS = (("projections", r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)/dot_general"),
         ("attention", r"decoder/layers_\d+/cond/"),
         ("vision tower", r"encode_vision"),
         ("decoder, other", r"Qwen25VL\.(decode|logits|embed)"),
         ("observation pixels", r"_resize|pixel|patches|crop|clip"))


def part_of(op_name: str) -> str:
  return next((name for name, pat in PARTS if re.search(pat, op_name)), "rollout, other")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", choices=("quick", "full"), default="quick")
  ap.add_argument("--layers", choices=("unrolled", "scanned"), default="unrolled")
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--row-groups", type=int, default=1,
                  help="the rollout in this many row groups, one per CPU device (rumination/row_groups.py)")
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--top", type=int, default=12)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  threads = common.set_threads(args.threads)     # before any computation creates the CPU client
  if args.row_groups > 1:                         # read when the CPU client is created, as the thread count
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.row_groups}").strip()
  import jax
  import numpy as np
  import rollout as rb
  import xla_trace
  from videor4_jax import make_env, make_rollout_fn, make_row_group_rollout_fn
  from videor4_jax.model import vlm
  load_before = common.loadavg()
  tok, config, params, prompts, env, cfg = rb.setup(args.shape)
  if args.layers == "unrolled":
    config, params = vlm.cpu_setting(config, params)
    env = make_env(config, env.rollout, tok, cfg["frames"])
  key = jax.random.key(0)
  fn = make_rollout_fn(env, num_generations=cfg["G"], greedy=True) if args.row_groups == 1 else \
      make_row_group_rollout_fn(env, jax.devices()[:args.row_groups], num_generations=cfg["G"], greedy=True)
  compiled = fn.lower(params, prompts, key).compile()
  run = lambda: jax.block_until_ready(compiled(params, prompts, key))
  run()
  wall = []
  for _ in range(args.runs):
    t0 = time.perf_counter()
    run()
    wall.append(time.perf_counter() - t0)
  names = xla_trace.hlo_op_names(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d, create_perfetto_trace=True)
    for _ in range(args.runs):
      run()
    jax.profiler.stop_trace()
    events = xla_trace.op_events(d)
  parts, idle = xla_trace.wall_attributed(events, lambda e: part_of(names.get(e["name"], e["name"])), args.runs)
  ops, _ = xla_trace.wall_attributed(events, lambda e: re.sub(r"layers_\d+", "layers_N", re.sub(
      r"^jit\(\w+\)/", "", names.get(e["name"], e["name"]))), args.runs)
  traced = sum(parts.values()) + idle
  res = dict(config=dict(cfg, layers=args.layers, threads=threads, runs=args.runs, row_groups=args.row_groups),
             wall_s=dict(runs=[round(w, 4) for w in wall], median=round(float(np.median(wall)), 4)),
             traced_ms_per_run=round(traced, 1), idle_ms=round(idle, 1),
             parts_ms={k: round(v, 1) for k, v in parts.most_common()},
             top_ops_ms={k: round(v, 2) for k, v in ops.most_common(args.top)},
             machine=common.machine(threads, load_before=load_before, load_after=common.loadavg()))
  print(f"rollout ({args.shape}, {args.layers} layers, {threads} threads): median {res['wall_s']['median']:.3f} s "
        f"untraced; traced {traced:.0f} ms per run, of which (wall-attributed ms, share):")
  for k, v in parts.most_common():
    print(f"  {v:8.1f}  {100 * v / traced:5.1f}%  {k}")
  print(f"  {idle:8.1f}  {100 * idle / traced:5.1f}%  idle (no op running)")
  print("top ops:")
  for k, v in ops.most_common(args.top):
    print(f"  {v:8.1f}  {k[:120]}")
  print("wrote", common.write_json(res, f"profile_rollout{'_quick' if args.shape == 'quick' else ''}.json", args.out))


if __name__ == "__main__":
  main()
