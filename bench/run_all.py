"""Regenerates every CPU figure of the README's benchmark table: runs each bench in its own process (so thread
settings and JAX state do not leak between them), reads the JSONs they write under bench/results/, and prints a
ready-to-paste markdown table with where and when it was measured.

  python bench/run_all.py [--quick] [--threads N] [--only train_step,decode_step,...] [--table-only]

Benches: train_step (SFT / GRPO ours vs HF, first-step compile), train_ceiling (the step vs its matrix products
alone, XLA and torch), compile_cache (cold vs warm process start),
decode_step (ms per decode token, fraction of the measured memory roofline), rollout (bench/rollout.py: ours KV
kept / re-prefill / HF, alternated run by run; in full mode also `--shape paper`, the Video-R4 paper's workload
shape: 16 frames 224x224, crop 144 / clip 288 vision tokens, R = 4, G = 8, B = 2), compile_time (rollout compile
vs R and B*G), logprob_memory, data_pipeline (video decode). `--quick` runs each in its quick mode (the table
says which). The TPU fit (`train.py --aot_topology`, README) needs a jax[tpu] venv and is not run here.
`--table-only` rebuilds the table from the JSONs already there. Load average before / after each bench is in
the table's notes: figures taken at a load above the CPU count are flagged (XLA and torch both slow down, torch's
OpenMP threads far more when the cores are oversubscribed).
"""
from __future__ import annotations

import argparse, glob, json, os, subprocess, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ("train_step", "train_ceiling", "compile_cache", "decode_step", "rollout", "compile_time", "logprob_memory", "data_pipeline")


def commands(quick: bool, threads: int) -> dict:
  q = ["--quick"] if quick else []
  th = ["--threads", str(threads)]
  return {
      # full size also with glibc keeping freed memory (common.ALLOCATOR_ENV): both sides, one process each
      "train_step": [["train_step.py", *q, *th]] + ([] if quick else [["train_step.py", "--quick", *th],
                                                                       ["train_step.py", "--allocator", "retain",
                                                                        *th]]),
      "train_ceiling": [["train_ceiling.py", *q, "--step", step, *th] for step in ("sft", "grpo")],
      "compile_cache": [["compile_cache.py", "--quick", *th]],
      "decode_step": [["decode_step.py", "--model", "quick" if quick else "full", "--layers", layers, *th]
                      + (["--rollout-caches", ""] if quick or layers == "unrolled" else [])
                      for layers in ("scanned", "unrolled")]
                     # one row: the weights dominate what a step reads (16 rows are near compute bound here)
                     + [["decode_step.py", "--model", "quick" if quick else "full", "--layers", "unrolled", "--rows",
                         "1", "--rollout-caches", "", *th]],
      # Both layer layouts (scanned: the default config; unrolled: the CPU setting, no per-call weight copies). The
      # paper shape runs 3 times per side: one re-prefill run takes ~110 s there.
      # The CPU setting also with the rows in one group per thread (rumination/row_groups.py).
      "rollout": [["rollout.py", *q, *th], ["rollout.py", *q, "--layers", "unrolled", *th],
                  ["rollout.py", *q, "--layers", "unrolled", "--row-groups", str(threads), *th]]
                 + ([] if quick else [["rollout.py", "--shape", "paper", "--runs", "3", *th],
                                      ["rollout.py", "--shape", "paper", "--layers", "unrolled", "--row-groups",
                                       str(threads), "--runs", "3", *th]]),
      "compile_time": [["compile_time.py", *q]],
      "logprob_memory": [["logprob_memory.py", *q]],
      "data_pipeline": [["data_pipeline.py", *q]],
  }


def load(name):
  path = os.path.join(common.RESULTS, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def get(d, dotted, default=None):
  for k in dotted.split("."):
    if not isinstance(d, dict) or k not in d:
      return default
    d = d[k]
  return d


def layout(c) -> str:
  """How a JSON's model was laid out: the scanned default, or the CPU setting (vlm.cpu_setting)."""
  if c.get("layers", "scanned") == "scanned":
    return "scanned layers"
  groups = c.get("row_groups", 1)
  return ("CPU setting: unrolled, CPU layouts" if c.get("cpu_layouts") else "unrolled layers") + \
      (f", {groups} row groups" if groups > 1 else "")


def fmt_train(r, size):
  if r is None:
    return None
  c = r["config"]
  out = []
  for k in ("sft", "grpo"):
    if k not in r:
      continue
    o, h = r[k]["ours"], r[k]["hf"]
    out.append(f"{k.upper()} {size} ({c['params'] / 1e6:.1f}M, {c['B']} x {c['S']} slots, {layout(c)}, "
               f"{c['threads']} threads): **{r[k]['ours_over_hf']:.2f}x** ({o['tokens_per_s']:.0f} vs "
               f"{h['tokens_per_s']:.0f} tok/s; step "
               f"{o['wall']['median']:.3f} s [{o['wall']['min']:.3f}-{o['wall']['max']:.3f}] vs "
               f"{h['wall']['median']:.3f} s [{h['wall']['min']:.3f}-{h['wall']['max']:.3f}], {o['wall']['n']} runs "
               f"each ABAB; CPU-time ratio {r[k]['ours_over_hf_cpu_time']:.2f}x); first step ours "
               f"{o['first_step_s']:.1f} s (XLA compile {o['compile_s']:.1f} s) vs HF {h['first_step_s']:.2f} s")
  return "<br>".join(out)


def fmt_ceiling(step, r):
  c, m, rt = r["config"], r["median_s"], r["ratios"]
  return (f"{step.upper()} {'quick' if c['quick'] else 'full'} ({r['dots']['count']} products, "
          f"{r['dots']['gflop']:.1f} GFLOP): ours {m['ours']:.3f} s, HF {m['hf']:.3f} s, products alone XLA "
          f"{m['xla_dots']:.3f} s / torch {m['torch_dots']:.3f} s ({r['gflop_per_s']['xla_dots']:.0f} / "
          f"{r['gflop_per_s']['torch_dots']:.0f} GFLOP/s); ours/HF **{rt['ours_over_hf']:.2f}x**, ceiling "
          f"**{rt['ceiling']:.2f}x** ({rt['ceiling_xla_kernels']:.2f}x with XLA's kernels)")


def fmt_rollout(ro, path):
  """The two table rows of one bench/rollout.py JSON (older JSONs without spread or shape too)."""
  c = ro.get("config", {})
  shape = c.get("shape", "quick" if c.get("quick") else "full")
  hw = "x".join(map(str, c.get("global_hw") or ["?"]))
  what = (f"{shape}, {layout(c)}: {c.get('params', 0) / 1e6:.1f}M, {c.get('rows')} rows "
          f"({c.get('B')} x G={c.get('G')}), "
          f"R={c.get('R')}, T={c.get('max_step_tokens')}, {c.get('frames')} frames {hw}")
  if shape == "paper":
    what += f", crop {c.get('crop_tokens')} / clip {c.get('clip_tokens')} vision tokens"

  def med(k):
    w = get(ro, f"{k}.wall")
    return f"{w['median']:.3f} s [{w['min']:.3f}-{w['max']:.3f}]" if w else "n/a"
  n = get(ro, "ours_kv.wall.n")
  timing = f"; median wall {med('ours_kv')} vs {med('hf')}, {n} runs each alternated" if n else ""
  return [(f"rollout ours/HF tokens/s (bench/rollout.py, {what})",
           f"**{get(ro, 'ratios.ours_over_hf', 'n/a')}x** ({get(ro, 'ours_kv.tokens_per_s')} vs "
           f"{get(ro, 'hf.tokens_per_s')} tok/s{timing}); decoder work HF/ours "
           f"{get(ro, 'workload.work_bound.hf_over_ours', 'n/a')}x; {get(ro, 'workload.calls_per_row', 'n/a')} "
           f"calls per row", path),
          (f"rollout KV kept / re-prefill ({shape}, {layout(c)})",
           f"**{get(ro, 'ratios.kv_over_reprefill', 'n/a')}x** "
           f"(decoder work re-prefill/ours {get(ro, 'workload.work_bound.reprefill_over_ours', 'n/a')}x)", path)]


def rows(quick: bool) -> list:
  """(bench, measured text, JSON path) per table row."""
  sfx = "_quick" if quick else ""
  out = []
  ts_main = load(f"train_step{sfx}.json")
  text = fmt_train(ts_main, "quick" if quick else "full")
  if not quick:
    text = "<br>".join(x for x in (text, fmt_train(load("train_step_retain.json"), "full, glibc retain"),
                                   fmt_train(load("train_step_quick.json"), "quick")) if x)
  out.append(("train step ours/HF tokens/s (SFT, GRPO with beta = 0.04), AdamW + clip", text, "train_step*.json"))
  ceil = [(k, load(f"train_ceiling{sfx}_{k}.json")) for k in ("sft", "grpo")]
  if any(r for _, r in ceil):
    out.append(("train step vs its own matrix products alone (bench/train_ceiling.py): ceiling = HF step / the "
                "products in the faster library", "<br>".join(fmt_ceiling(k, r) for k, r in ceil if r),
                f"train_ceiling{sfx}_*.json"))
  cc = load("compile_cache_quick.json")
  if cc:
    cold, warm = cc["starts"][0], cc["starts"][1:]
    out.append(("first train step in a new process: cold / warm persistent compilation cache (quick, "
                f"{layout(cc['config'])})", "; ".join(
                    f"{k.upper()} {cold[k]['first_step_s']:.1f} s / {min(w[k]['first_step_s'] for w in warm):.1f} s "
                    f"(**{cc['cold_over_warm'][k]:.1f}x**)" for k in ("sft", "grpo")), "compile_cache_quick.json"))
  for ds in (load(f"decode_step{sfx}.json"), load(f"decode_step{sfx}_unrolled.json"),
             load(f"decode_step{sfx}_unrolled_rows1.json")):
    if not ds:
      continue
    c = ds["config"]
    per = "; ".join(f"S={S}: {v['ms']:.2f} ms, **{100 * v['roofline_fraction']:.0f}%**"
                    + (f" (same-size read {v['read_bandwidth_same_size_gb_s']} GB/s: "
                       f"**{100 * v['roofline_fraction_same_size']:.0f}%**)" if "roofline_fraction_same_size" in v else "")
                    for S, v in ds["decode_ms_per_token"].items())
    roll = "; ".join(f"S={S}: {v['s']:.2f} s" for S, v in ds.get("rollout_s", {}).items())
    out.append((f"decode token, {c['rows']} rows, {c['model']} model ({c['params'] / 1e6:.1f}M, "
                f"{layout(c)}): ms and fraction of the memory roofline (DRAM read bandwidth "
                f"{ds['read_bandwidth_gb_s']} GB/s, "
                "measured in the same process)", per + (f"; whole rollout {roll}" if roll else ""),
                "decode_step*.json"))
  grouped = lambda prefix: sorted(os.path.basename(p) for p in glob.glob(os.path.join(common.RESULTS,
                                                                                  f"{prefix}_unrolled_groups*.json")))
  for name in ([f"rollout{sfx}.json", f"rollout{sfx}_unrolled.json", *grouped(f"rollout{sfx}")]
               + ([] if quick else ["rollout_paper.json", *grouped("rollout_paper")])):
    ro = load(name)
    if ro:
      out += fmt_rollout(ro, name)
  ct = load(f"compile_time{sfx}.json")
  if ct:
    r = ct["ratios"]
    out.append(("rollout compile time R=8 / R=2 (B*G = 16)", f"{r['compile_cpu_R8_over_R2']:.2f} CPU, "
                f"{r['compile_R8_over_R2']:.2f} wall; StableHLO size {r['stablehlo_R8_over_R2']:.3f}",
                f"compile_time{sfx}.json"))
    out.append(("rollout compile time B*G=64 / 4 (R = 4)", f"{r['compile_cpu_B64_over_B4']:.2f} CPU, "
                f"{r['compile_B64_over_B4']:.2f} wall", f"compile_time{sfx}.json"))
  lm = load(f"logprob_memory{sfx}.json")
  if lm:
    c = lm["config"]
    out.append((f"log-prob head, value_and_grad, T={c['T']}, V={c['V']}, D={c['D']}",
                f"temp {lm['ours']['temp_bytes'] / 2 ** 30:.2f} GiB (ours) vs "
                f"{lm['dense']['temp_bytes'] / 2 ** 30:.2f} GiB (dense); [B,T,V] buffers: ours "
                f"{len(lm['ours']['btv_buffers'])}, dense "
                f"{len(lm['dense']['btv_buffers'])}", f"logprob_memory{sfx}.json"))
  dp = load("data_pipeline.json")
  if dp and "decode" in dp:
    clips = get(dp, "decode.clips", [])
    out.append(("video decode per video, seek vs decode-everything", "; ".join(
        f"{c['seconds']:.0f} s: {get(c, 'seek.median_s')} vs {get(c, 'exact.median_s')} s ({c.get('speedup')}x)"
        for c in clips), "data_pipeline.json"))
  return out


def table(quick: bool, runs: list) -> str:
  m = common.machine()
  lines = [f"Measured by `python bench/run_all.py{' --quick' if quick else ''}` on {m['host']} "
           f"({m['cpu_model']}, {m['cpus']} CPUs), commit {m['commit']}, finished {m['utc']} UTC; "
           f"jax {m['jax']}, torch {m.get('torch', '-')}.", ""]
  lines += ["| Bench | Measured |", "|---|---|"]
  for name, text, _ in rows(quick):
    lines.append(f"| {name} | {text or 'not run'} |")
  if runs:
    lines += ["", "Load average (1, 5, 15 min) before -> after each bench: " + "; ".join(
        f"{r['bench']} {r['load_before']} -> {r['load_after']} ({r['seconds']:.0f} s, rc {r['rc']})"
        + (" **loaded**" if r["load_before"][0] > m["cpus"] else "") for r in runs)]
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--threads", type=int, default=None, help="XLA and torch threads (default: all CPUs)")
  ap.add_argument("--only", default=",".join(ORDER))
  ap.add_argument("--table-only", action="store_true")
  args = ap.parse_args()
  threads = args.threads or len(os.sched_getaffinity(0))
  runs = []
  if not args.table_only:
    cmds = commands(args.quick, threads)
    for bench in [b for b in ORDER if b in args.only.split(",")]:
      for cmd in cmds[bench]:
        before, t0 = common.loadavg(), time.perf_counter()
        print(f"== {' '.join(cmd)}  (load {before})", flush=True)
        p = subprocess.run([sys.executable, os.path.join(HERE, cmd[0]), *cmd[1:]], cwd=common.ROOT, check=False)
        runs.append(dict(bench=" ".join(cmd), rc=p.returncode, seconds=time.perf_counter() - t0,
                         load_before=before, load_after=common.loadavg()))
  md = table(args.quick, runs)
  path = os.path.join(common.RESULTS, "table_quick.md" if args.quick else "table.md")
  os.makedirs(common.RESULTS, exist_ok=True)
  with open(path, "w") as f:
    f.write(md + "\n")
  print("\n" + md + f"\n\n(written to {path})")
  failed = [r["bench"] for r in runs if r["rc"]]
  if failed:
    raise SystemExit(f"failed: {failed}")


if __name__ == "__main__":
  main()
