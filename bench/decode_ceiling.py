"""What bounds one decode token at full size: the decode step against its own weight reads done alone.

  python bench/decode_ceiling.py [--model full|quick] [--rows 1] [--cache 320] [--runs 7] [--threads N] [--out ...]

`bench/decode_step.py` relates a decode token to the read bandwidth of one long streaming read. A decode token
does not read its weights that way: it reads 113 separate matrices (7 per layer, then the LM head), each through
a matrix-vector product (a matrix product of `--rows` rows). This bench times, alternating run by run (ABAB...,
`--runs` each, same threads):

  decode       the decode step of the CPU setting (`vlm.cpu_setting`), one token, `--rows` rows, cache `--cache`
               (`decode_step.decode_fns`: K tokens in one jitted loop, per-token time).
  xla_gemv     only the step's matrix products: `--rows` rows through every decoder kernel and the LM head
               (`vlm.logits`), in layer order (matrix-vector products at one row), chained so that none can be
               skipped or reordered; one jitted program, K times in a fori_loop. No attention, norms, rope, cache
               writes or sampling.
  xla_gemv_fused  the same bytes as 4 products per layer (q|k|v and gate|up concatenated), as a fused-weight
               layout would read them.
  xla_gemv_out_major  the same products with each kernel stored `[out, in]` (as torch stores a Linear) and read as
               `x @ W^T`: XLA's matrix-vector kernel then reads each output's weights contiguously.
  torch_gemv   the same products in PyTorch on the same weights (`x @ W`, K times; no autograd).
  hf_decode    HF transformers' Qwen2.5-VL on the same weights: one-token forwards with its KV cache after the
               same prompt length, `--rows` rows (the per-token cost that HF's rollout pays in `generate`).
  read_probe   `decode_step.read_bandwidth` on a buffer of the same byte count (the roofline decode_step uses).

Bytes = the matrices read (decoder kernels + LM head, float32). Each side's GB/s = bytes / its per-token time.
`decode_vs_gemv` = xla_gemv / decode time (what the step's other work costs); `gemv_vs_probe` = xla_gemv GB/s /
probe GB/s (what the GEMV kernels reach of the streaming read). JSON: bench/results/decode_ceiling[_quick].json.
"""
from __future__ import annotations

import argparse, os, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def kernels_in_layer_order(params, fused: bool = False) -> list:
  """The decoder's dense kernels as `[in, out]` arrays, layer 0 first, in the order a layer uses them (q, k, v, o,
  gate, up, down). fused: q|k|v and gate|up concatenated along `out` (4 products per layer instead of 7)."""
  import jax.numpy as jnp
  dec = params["params"]["decoder"]
  layers = sorted((k for k in dec if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
  out = []
  for name in layers:
    p = dec[name]
    q, k, v, o = (p[n]["kernel"].reshape(p[n]["kernel"].shape[0], -1) for n in ("q_proj", "k_proj", "v_proj",
                                                                               "o_proj"))
    gate, up, down = (p["mlp"][n]["kernel"] for n in ("gate_proj", "up_proj", "down_proj"))
    out += ([jnp.concatenate([q, k, v], 1), o, jnp.concatenate([gate, up], 1), down] if fused
            else [q, k, v, o, gate, up, down])
  return out


def xla_gemv_fn(config, params, kernels, K, rows, out_major=False):
  """A jitted program of K rounds of the chained matrix-vector products (decoder kernels, then the LM head).
  out_major: the kernels given as `[out, in]` (transposed, as torch stores a Linear) and read as `x @ W^T`."""
  import jax
  import jax.numpy as jnp
  from videor4_jax.model import vlm
  product = (lambda x, w: jnp.einsum("bk,nk->bn", x, w)) if out_major else (lambda x, w: x @ w)

  @jax.jit
  def run(params, kernels, c):
    def one(_, acc):
      for w in kernels:
        acc = acc + product(jnp.full((rows, w.shape[1 if out_major else 0]), acc, w.dtype), w).sum() * 1e-9
      return acc + vlm.logits(config, params, jnp.full((rows, config.text.hidden_size), acc)).sum() * 1e-9
    return jax.lax.fori_loop(0, K, one, c)

  return lambda: jax.block_until_ready(run(params, kernels, jnp.float32(1.0)))


def torch_gemv_fn(kernels, head_dv, K, rows):
  import numpy as np
  import torch
  ws = [torch.from_numpy(np.array(w)) for w in kernels + [head_dv]]    # the head last, as x @ W like the kernels

  def run():
    with torch.no_grad():
      acc = 1.0
      for _ in range(K):
        for w in ws:
          acc = acc + float((torch.full((rows, w.shape[0]), acc) @ w).sum()) * 1e-9
    return acc
  return run


def hf_decode_fn(config, params, rows, K, prefill=32):
  """HF Qwen2.5-VL on the same weights (saved with `save_pretrained`): a `prefill`-token prompt (untimed), then K
  greedy one-token forwards with its KV cache; returns ms per token."""
  import tempfile
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  from videor4_jax import save_pretrained
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(d, config, params)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
  ids = torch.randint(10, 200, (rows, prefill), generator=torch.Generator().manual_seed(0))

  def run():
    with torch.no_grad():
      out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
      t0 = time.perf_counter()
      for _ in range(K):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(input_ids=tok, cache=out.cache, use_cache=True, logits_to_keep=1)
      return (time.perf_counter() - t0) / K * 1e3
  return run


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", choices=("full", "quick"), default="full")
  ap.add_argument("--rows", type=int, default=1)
  ap.add_argument("--cache", type=int, default=320)
  ap.add_argument("--runs", type=int, default=7)
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  threads = common.set_threads(args.threads)
  load_before = common.loadavg()
  import jax
  import numpy as np
  from bench.decode_step import decode_fns, decode_token_ms, read_bandwidth
  from bench.rollout import SETTINGS, biased_params, model_config
  from videor4_jax.model import vlm
  from videor4_jax.processing.tokenizer import Tokenizer

  s, tok = SETTINGS[args.model], Tokenizer.tiny()
  config = model_config(tok, s)
  config, params = vlm.cpu_setting(config, biased_params(config, tok, **s["bias"]))
  kernels = kernels_in_layer_order(params)
  head_dv = vlm.head_weight(config, params)             # [D, V], tied or not
  nbytes = 4 * (sum(w.size for w in kernels) + head_dv.size)
  prefill_fn, decode_fn, K = decode_fns(config, params, args.cache, args.rows)
  xla_gemv = xla_gemv_fn(config, params, kernels, K, args.rows)
  torch_gemv = torch_gemv_fn(kernels, head_dv, K, args.rows)
  xla_fused = xla_gemv_fn(config, params, kernels_in_layer_order(params, fused=True), K, args.rows)
  xla_out_major = xla_gemv_fn(config, params, [jax.numpy.asarray(np.asarray(w).T) for w in kernels], K, args.rows,
                              out_major=True)
  per_token = {"decode": lambda: decode_token_ms(prefill_fn, decode_fn, params, K),
               "hf_decode": hf_decode_fn(config, params, args.rows, K),
               "xla_gemv": lambda: common.timed(xla_gemv)[0] / K * 1e3,
               "xla_gemv_fused": lambda: common.timed(xla_fused)[0] / K * 1e3,
               "xla_gemv_out_major": lambda: common.timed(xla_out_major)[0] / K * 1e3,
               "torch_gemv": lambda: common.timed(torch_gemv)[0] / K * 1e3,
               "read_probe": lambda: nbytes / read_bandwidth(max(1, round(nbytes / 2 ** 20)), repeats=3) * 1e3}
  for fn in per_token.values():      # compile / warm up, untimed
    fn()
  runs = {k: [] for k in per_token}
  for _ in range(args.runs):
    for name, fn in per_token.items():
      runs[name].append(fn())
  ms = {k: float(np.median(v)) for k, v in runs.items()}
  gbs = {k: nbytes / (v / 1e3) / 1e9 for k, v in ms.items()}
  res = dict(config=dict(model=args.model, rows=args.rows, cache=args.cache, tokens=K, matrices=len(kernels) + 1,
                         bytes=int(nbytes), layers="unrolled", cpu_layouts=config.cpu_layouts, threads=threads),
             ms_per_token={k: dict(median=round(ms[k], 3), runs=[round(x, 3) for x in v]) for k, v in runs.items()},
             gb_s={k: round(v, 2) for k, v in gbs.items()},
             decode_vs_gemv=round(ms["xla_gemv"] / ms["decode"], 3),
             gemv_vs_probe=round(gbs["xla_gemv"] / gbs["read_probe"], 3),
             torch_gemv_vs_probe=round(gbs["torch_gemv"] / gbs["read_probe"], 3),
             fused_vs_gemv=round(ms["xla_gemv"] / ms["xla_gemv_fused"], 3),
             out_major_gemv_vs_probe=round(gbs["xla_gemv_out_major"] / gbs["read_probe"], 3),
             decode_ours_vs_hf=round(ms["hf_decode"] / ms["decode"], 3),
             decode_vs_probe=round(gbs["decode"] / gbs["read_probe"], 3))
  res["machine"] = common.machine(threads, load_before=load_before, load_after=common.loadavg())
  out = common.write_json(res, f"decode_ceiling{'' if args.model == 'full' else '_quick'}.json", args.out)
  for k in per_token:
    print(f"{k:18s} {ms[k]:7.2f} ms/token  {gbs[k]:5.1f} GB/s  {[round(x, 2) for x in runs[k]]}")
  print(f"decode ours/HF {res['decode_ours_vs_hf']:.2f}x; {nbytes / 1e6:.1f} MB of matrices per token; decode "
        f"reaches {100 * res['decode_vs_probe']:.0f}% of the probe, its GEMVs alone {100 * res['gemv_vs_probe']:.0f}% "
        f"(torch's {100 * res['torch_gemv_vs_probe']:.0f}%); "
        f"the step's other work leaves decode at {100 * res['decode_vs_gemv']:.0f}% of its GEMVs' time. Wrote {out}")
  return res


if __name__ == "__main__":
  main()
