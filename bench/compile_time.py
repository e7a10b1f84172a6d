"""Compile time of the jitted rumination rollout against the number of steps R and the batch size B*G.

  python bench/compile_time.py [--quick] [--out bench/results/compile_time[_quick].json]

For every (R, B*G) the graph `make_rollout_fn(env, num_generations=G)` is lowered (trace + StableHLO) and
compiled (XLA) from abstract arguments (`jax.ShapeDtypeStruct`, nothing runs). The model and prompts are those of
bench/rollout.py (the "full" ~51M-parameter setting, or the "quick" one). The KV cache length S is the one the
largest R needs, for every R, so that only the scan length changes with R (a cache sized to R only changes array
extents, which XLA's compile time hardly depends on; `--cache-per-r` measures that variant instead).

R is a `lax.scan` length, so the program (and its compile time) should not grow with R; B*G is a leading array
extent, so neither should it. Points: R in {1, 2, 4, 8} at B*G = 16 and B*G in {4, 16, 64} at R = 4 (full: the whole 4 x 3 grid). Each
compile is repeated `--repeats` times in one process and the median kept (the jit caches are cleared between
repeats so every repeat really compiles); wall and CPU (process) time are both kept, CPU time being less
disturbed by other jobs on a shared machine. Final line: compile-time ratios R8/R2 (B*G = 16), B64/B4 (R = 4).
"""
from __future__ import annotations

import argparse, json, os, platform, statistics, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import rollout as rb  # noqa: E402  (bench/rollout.py: model config, biased params, prompts)
from videor4_jax import RolloutConfig, make_env, make_rollout_fn  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402

G = 2


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def time_compile(env, params_abs, prompts_abs, repeats):
  """Median lower / compile seconds, wall and CPU (process time: less sensitive to a shared machine), and the
  StableHLO text size of one rollout graph."""
  t = {k: [] for k in ("lower_s", "compile_s", "lower_cpu_s", "compile_cpu_s")}
  for _ in range(repeats):
    jax.clear_caches()
    fn = make_rollout_fn(env, num_generations=G, greedy=False)
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = fn.lower(params_abs, prompts_abs, jax.random.key(0))
    t1, c1 = time.perf_counter(), time.process_time()
    lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    for k, v in (("lower_s", t1 - t0), ("compile_s", t2 - t1), ("lower_cpu_s", c1 - c0), ("compile_cpu_s", c2 - c1)):
      t[k].append(v)
  return {k: round(statistics.median(v), 3) for k, v in t.items()}, len(lowered.as_text())


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="the ~11M quick model, 6 graphs (R sweep at B*G=16, batch sweep at R=4), 1 repeat")
  ap.add_argument("--repeats", type=int, default=None, help="compiles per point (median); default 3, quick 1")
  ap.add_argument("--cache-per-r", action="store_true", help="size the KV cache to each R instead of the max R")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  s = rb.SETTINGS["quick" if args.quick else "full"]
  steps = (1, 2, 4, 8)
  rows_list = (4, 16, 64)
  repeats = args.repeats or (1 if args.quick else 3)
  tok = Tokenizer.tiny()
  config = rb.model_config(tok, s)
  params_abs = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))
  n_params = int(sum(x.size for x in jax.tree.leaves(params_abs)))
  T = s["T"]
  prompts = {n: abstract(rb.make_prompts(tok, config, s, n // G)) for n in rows_list}
  tp = max(p["input_ids"].shape[1] for p in prompts.values())
  obs_len = make_env(config, RolloutConfig(max_steps=1, max_step_tokens=T, obs_hw=s["obs_hw"]), tok,
                     s["frames"]).obs_len
  cache = lambda r: -(-(tp + r * (T + obs_len)) // 16) * 16

  # The R sweep at B*G = 16 (the rollout bench's batch) and the batch sweep at R = 4; full: the whole grid.
  n_ref = 16
  grid = sorted({(n_ref, r) for r in steps} | {(n, 4) for n in rows_list}
                | (set() if args.quick else {(n, r) for n in rows_list for r in steps}))
  res = dict(config=dict(params=n_params, T=T, G=G, frames=s["frames"], obs_hw=s["obs_hw"], obs_len=obs_len,
                         prompt_len=tp, repeats=repeats, cache_per_r=args.cache_per_r, quick=args.quick,
                         cache_len={r: cache(r if args.cache_per_r else max(steps)) for r in steps}),
             points=[])
  print(f"model {n_params / 1e6:.1f}M params; T={T}; repeats={repeats}; {len(grid)} graphs", flush=True)
  for n, r in grid:
    rc = RolloutConfig(max_steps=r, max_step_tokens=T, cache_len=cache(r if args.cache_per_r else max(steps)),
                       obs_hw=s["obs_hw"], max_clip_frames=4, crop_min_px=4)
    env = make_env(config, rc, tok, s["frames"])
    t, size = time_compile(env, params_abs, prompts[n], repeats)
    res["points"].append(dict(rows=n, R=r, **t, stablehlo_chars=size))
    print(f"B*G={n:3d} R={r}: lower {t['lower_s']:6.2f}s compile {t['compile_s']:6.2f}s wall "
          f"(CPU {t['lower_cpu_s']:6.2f}s + {t['compile_cpu_s']:6.2f}s)  StableHLO {size / 1e3:.0f}k chars", flush=True)

  pt = {(p["rows"], p["R"]): p for p in res["points"]}
  ratio = lambda a, b, k: round(pt[a][k] / pt[b][k], 3)
  n_max = max(rows_list)
  res["ratios"] = dict(compile_R8_over_R2=ratio((n_ref, 8), (n_ref, 2), "compile_s"),
                       compile_cpu_R8_over_R2=ratio((n_ref, 8), (n_ref, 2), "compile_cpu_s"),
                       stablehlo_R8_over_R2=ratio((n_ref, 8), (n_ref, 2), "stablehlo_chars"),
                       compile_B64_over_B4=ratio((n_max, 4), (4, 4), "compile_s"),
                       compile_cpu_B64_over_B4=ratio((n_max, 4), (4, 4), "compile_cpu_s"))
  res["machine"] = dict(host=platform.node(), cpus=os.cpu_count(), loadavg=[round(x, 2) for x in os.getloadavg()],
                        jax=jax.__version__, backend=jax.default_backend(), python=platform.python_version())
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "compile_time_quick.json" if args.quick else "compile_time.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=2)
  r = res["ratios"]
  print(f"compile time (B*G={n_ref}): R8/R2 = {r['compile_R8_over_R2']:.2f} wall, {r['compile_cpu_R8_over_R2']:.2f} CPU; "
        f"(R=4): B64/B4 = {r['compile_B64_over_B4']:.2f} wall, {r['compile_cpu_B64_over_B4']:.2f} CPU")

if __name__ == "__main__":
  main()
