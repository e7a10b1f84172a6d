"""Saves (or compares) every array of the jitted rollout on the test fixtures, for a bitwise before/after check.

  python bench/rollout_golden.py --save /tmp/rollout_before.npz      # on the code before a change
  python bench/rollout_golden.py --compare /tmp/rollout_before.npz   # after it: np.array_equal on every array

Cases (tests/rumination_fixtures.py setups): greedy and sampled, num_generations 1 and 2, compact_rows on and off,
nucleus sampling at a lower temperature, and 112-px observations (crops, and clips in both the one-group and the
full-width observation prefill). Every Trajectory field is saved, plus the work counts the rollout reports (when
the code has them).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rumination_fixtures import make_prompts, make_setup  # noqa: E402
from videor4_jax.rumination.config import RolloutConfig  # noqa: E402
from videor4_jax.rumination.rollout import make_rollout_fn  # noqa: E402

BASE = RolloutConfig(max_steps=3, max_step_tokens=32, cache_len=512, obs_hw=(56, 56), max_clip_frames=4,
                     crop_min_px=4)
# name: (rollout config, params seed, prompts, rollout kwargs)
CASES = {
    "greedy_g1": (BASE, 17, 3, dict(greedy=True)),
    "sampled_g2": (BASE, 1, 4, dict(num_generations=2)),
    "sampled_g2_uncompacted": (dataclasses.replace(BASE, compact_rows=False), 1, 4, dict(num_generations=2)),
    "greedy_g2_uncompacted": (dataclasses.replace(BASE, compact_rows=False), 0, 2, dict(greedy=True,
                                                                                      num_generations=2)),
    "nucleus_g2": (BASE, 2, 3, dict(num_generations=2, temperature=0.7, top_p=0.9)),
    "obs112_sampled": (dataclasses.replace(BASE, obs_hw=(112, 112)), 3, 4, dict()),
}


def leaves(tree, prefix):
  return {prefix + jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def run_case(name):
  rc, seed, n, kwargs = CASES[name]
  tok, config, params, env = make_setup(rc, seed=seed)
  prompts = make_prompts(tok, config, n, seed=seed)
  out = make_rollout_fn(env, **kwargs)(params, prompts, jax.random.key(seed))
  return leaves(out, name)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  group = ap.add_mutually_exclusive_group(required=True)
  group.add_argument("--save")
  group.add_argument("--compare")
  ap.add_argument("--cases", default=",".join(CASES))
  args = ap.parse_args()
  arrays = {}
  for name in args.cases.split(","):
    arrays.update(run_case(name))
    print(f"{name}: done", flush=True)
  if args.save:
    np.savez(args.save, **arrays)
    print(f"saved {len(arrays)} arrays to {args.save}")
    return
  before = np.load(args.compare)
  compared = [k for k in before.files if k.split("[")[0].split(".")[0] in args.cases.split(",")]
  differ = [k for k in compared if not (k in arrays and np.array_equal(before[k], arrays[k]))]
  print(f"compared {len(compared)} arrays: {len(compared) - len(differ)} equal, {len(differ)} differ or missing")
  for k in differ:
    print("  differs:", k)
  new = sorted(set(arrays) - set(before.files))
  print(f"{len(new)} arrays only in this run: {new}")
  sys.exit(1 if differ else 0)


if __name__ == "__main__":
  main()
