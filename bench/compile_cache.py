"""Time to the first train step in a fresh process, without and with JAX's persistent compilation cache (on by
default in train.py: videor4_jax/train/xla_cache.py).

  python bench/compile_cache.py [--quick] [--layers unrolled|scanned] [--starts 2] [--out ...]

Each start is a new Python process that builds the bench/train_step.py model and batch and runs one jitted SFT
step and one GRPO step (lower + compile + run, timed per step). Start 1 finds an empty cache directory (a cold
start: it compiles and writes the entries), starts 2.. find it filled (a restart). The final line: first-step
seconds cold vs warm, per step kind.
"""
from __future__ import annotations

import argparse, functools, json, os, subprocess, sys, tempfile, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def child(args):
  """One start: enable the cache at args.cache_dir, then time each step's first call. Prints one JSON line."""
  t_start = time.perf_counter()
  from videor4_jax.train import xla_cache
  xla_cache.enable(args.cache_dir)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import rollout as rb
  import train_step as ts
  from videor4_jax.model import vlm
  from videor4_jax.processing.tokenizer import Tokenizer
  from videor4_jax.rl import grpo
  from videor4_jax.train.optim import OptimConfig, make_optimizer
  from videor4_jax.train.steps import TrainState, grpo_step, sft_step
  s = ts.SETTINGS["quick" if args.quick else "full"]
  m = rb.SETTINGS[s["model"]]
  tok = Tokenizer.tiny()
  config = rb.model_config(tok, m)
  params = rb.biased_params(config, tok, **m["bias"])
  ours_b, _ = ts.make_batch(tok, config, s, m)
  batch = jax.tree.map(jnp.asarray, ours_b)
  run_config, run_params = (config, params) if args.layers == "scanned" else vlm.cpu_setting(config, params)
  tx = make_optimizer(OptimConfig(lr=ts.LR, warmup_steps=0, total_steps=10_000, end_lr_ratio=1.0,
                                  weight_decay=ts.WD, clip_norm=ts.CLIP))
  gcfg = grpo.GRPOConfig(num_generations=2, beta=ts.BETA, eps_low=ts.EPS, eps_high=ts.EPS)
  b = batch["tokens"].shape[0]
  gbatch = dict(batch, logp=jnp.zeros(batch["tokens"].shape, jnp.float32),
                advantages=jnp.asarray(np.linspace(-1, 1, b), jnp.float32))
  setup_s = time.perf_counter() - t_start
  out = dict(setup_s=round(setup_s, 2))
  for name, fn, bt, kw in (("sft", functools.partial(sft_step, run_config), batch, {}),
                           ("grpo", functools.partial(grpo_step, run_config, gcfg), gbatch,
                            dict(ref_params=run_params))):
    step = jax.jit(fn, donate_argnums=(0,))
    state = TrainState.create(jax.tree.map(jnp.copy, run_params), tx)
    _, _, _, t = ts.compile_ours(step, state, bt, **kw)
    out[name] = t
  out["cache_files"] = len(os.listdir(args.cache_dir))
  print("RESULT " + json.dumps(out), flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--layers", choices=("unrolled", "scanned"), default="unrolled")
  ap.add_argument("--starts", type=int, default=2, help="process starts on one cache (first: cold)")
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)   # child mode
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.cache_dir:
    common.set_threads(args.threads)
    return child(args)
  threads = common.set_threads(args.threads)
  load_before = common.loadavg()
  starts = []
  with tempfile.TemporaryDirectory() as cache:
    for i in range(args.starts):
      cmd = [sys.executable, os.path.abspath(__file__), "--cache-dir", cache, "--layers", args.layers,
             "--threads", str(threads)] + (["--quick"] if args.quick else [])
      t0 = time.perf_counter()
      p = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if p.returncode:
        raise SystemExit(f"start {i} failed:\n{p.stderr[-3000:]}")
      line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
      starts.append(dict(json.loads(line[7:]), process_s=round(time.perf_counter() - t0, 2)))
      print(f"start {i + 1} ({'cold' if i == 0 else 'warm'}): " + ", ".join(
          f"{k} first step {starts[-1][k]['first_step_s']:.2f} s (compile {starts[-1][k]['compile_s']:.2f} s)"
          for k in ("sft", "grpo")) + f"; process {starts[-1]['process_s']:.1f} s", flush=True)
  res = dict(config=dict(quick=args.quick, layers=args.layers, cpu_layouts=args.layers == "unrolled",
                         starts=args.starts, threads=threads),
             starts=starts, machine=common.machine(threads, load_before=load_before, load_after=common.loadavg()))
  cold, warm = starts[0], starts[1:]
  res["cold_over_warm"] = {k: round(cold[k]["first_step_s"] / min(w[k]["first_step_s"] for w in warm), 2)
                           for k in ("sft", "grpo")} if warm else {}
  out = common.write_json(res, "compile_cache_quick.json" if args.quick else "compile_cache.json", args.out)
  print(f"wrote {out}")
  if warm:
    print("first train step, cold / warm cache: " + "; ".join(
        f"{k.upper()} {cold[k]['first_step_s']:.2f} s / {min(w[k]['first_step_s'] for w in warm):.2f} s "
        f"({res['cold_over_warm'][k]:.1f}x)" for k in ("sft", "grpo")))
  return res


if __name__ == "__main__":
  main()
