"""The jitted quick rollout of bench/rollout.py timed at two source trees, alternated run by run (ABAB...), for a
before / after comparison of a change to the rollout.

  git worktree add /tmp/before REV
  python bench/rollout_ab.py --before /tmp/before [--rounds 3] [--threads 1] [--layers scanned|unrolled]
                             [--out bench/results/rollout_ab.json]

Each round starts one process per tree (before first, then after), each of which compiles the rollout once and
times 5 calls; the JSON holds every call's wall and CPU time, the medians, the load average before and after
and the commit of each tree. Both trees run with the same thread count (XLA's NPROC, as common.set_threads sets it).
`--layers unrolled` runs both in the CPU setting (`vlm.cpu_setting`), as `bench/rollout.py --layers unrolled` does.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import common  # noqa: E402

CHILD = r'''
import json, sys, time
root, layers = sys.argv[1], sys.argv[2]
sys.path[:0] = [root, root + "/tests"]
import jax, numpy as np
from bench import rollout as rb
from videor4_jax import RolloutConfig, make_env, make_rollout_fn
from videor4_jax.processing.tokenizer import Tokenizer
s = rb.SETTINGS["quick"]
B, G, R, T = s["B"], s["G"], s["R"], s["T"]
tok = Tokenizer.tiny()
config = rb.model_config(tok, s)
params = rb.biased_params(config, tok, **s["bias"])
if layers == "unrolled":
  from videor4_jax.model import vlm
  config, params = vlm.cpu_setting(config, params)
try:
  prompts = rb.make_prompts(tok, config, s, B)
except TypeError:        # bench/rollout.py before it shared tests/rumination_fixtures.py
  prompts = rb.make_prompts(tok, B, s["frames"], s["src_hw"], s["global_hw"])
probe = make_env(config, RolloutConfig(max_steps=R, max_step_tokens=T, obs_hw=s["obs_hw"]), tok, s["frames"])
S = -(-(prompts["input_ids"].shape[1] + R * (T + probe.obs_len)) // 16) * 16
rc = RolloutConfig(max_steps=R, max_step_tokens=T, cache_len=S, obs_hw=s["obs_hw"], max_clip_frames=4, crop_min_px=4)
env = make_env(config, rc, tok, s["frames"])
key = jax.random.key(0)
compiled = make_rollout_fn(env, num_generations=G, greedy=True).lower(params, prompts, key).compile()
traj = jax.block_until_ready(compiled(params, prompts, key))
wall, cpu = [], []
for _ in range(5):
  t0, c0 = time.perf_counter(), time.process_time()
  traj = jax.block_until_ready(compiled(params, prompts, key))
  wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
print(json.dumps(dict(tokens=int(traj.num_generated.sum()), wall_s=wall, cpu_s=cpu)))
'''


def _commit(root: str) -> str:
  return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                        check=False).stdout.strip() or "unknown"


def run_tree(root: str, threads: int, layers: str) -> dict:
  env = dict(os.environ, PYTHONPATH=root, NPROC=str(threads), OMP_NUM_THREADS=str(threads))
  env.pop("PJRT_NPROC", None)
  out = subprocess.run([sys.executable, "-c", CHILD, root, layers], env=env, capture_output=True, text=True, cwd=root)
  if out.returncode:
    raise RuntimeError(f"the rollout at {root} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--before", required=True, help="source tree of the 'before' code (e.g. a git worktree)")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--layers", choices=("scanned", "unrolled"), default="scanned")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "rollout_ab.json"))
  args = ap.parse_args()
  trees = {"before": os.path.abspath(args.before), "after": ROOT}
  load_before = common.loadavg()
  runs = {name: [] for name in trees}
  for r in range(args.rounds):
    for name, root in trees.items():
      runs[name].append(run_tree(root, args.threads, args.layers))
      print(f"round {r} {name}: median {sorted(runs[name][-1]['wall_s'])[2]:.3f} s", flush=True)
  med = lambda name, k: float(sorted(t for run in runs[name] for t in run[k])[len(runs[name]) * 5 // 2])
  result = dict(cpu_model=common.cpu_model(), threads=args.threads, layers=args.layers, load_before=load_before, load_after=common.loadavg(),
                commits=dict(before=_commit(trees['before']), after=common.commit()), runs=runs,
                median_wall_s={n: med(n, "wall_s") for n in trees}, median_cpu_s={n: med(n, "cpu_s") for n in trees})
  result["after_over_before_wall"] = result["median_wall_s"]["after"] / result["median_wall_s"]["before"]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("median_wall_s", "median_cpu_s", "after_over_before_wall", "load_before",
                                             "load_after")}))


if __name__ == "__main__":
  main()
