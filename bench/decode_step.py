"""Cost of one rollout decode token vs the static cache length (issue 9: the step was O(cache_len) copies), and
the fraction of this machine's memory-bandwidth roofline it reaches.

  python bench/decode_step.py [--model full|quick] [--layers scanned|unrolled] [--rows 16] [--caches 64,320,1280]
                              [--rollout-caches 640,1280,2560] [--threads N] [--out ...]

Model: a `bench/rollout.py` model (`--model full`: 51.5M params, the default; `quick`: 10.8M), fp32, 16 rows.

  roofline  one decode step must read every decoder weight and the LM head once (shared by the rows) and each
            row's valid keys / values of every layer: bytes = 4 * (decoder + head params) + 2 * 4 * L * rows *
            used_slots * Hkv * Dh, with used_slots the mean filled length over the timed tokens (the minimum a
            step reads; the bucketed prefix it really reads is longer). Read bandwidth is measured in the same
            process and threads, the fastest of three jitted reads of a float32 buffer (`read_bandwidth`), at two
            sizes: `--bw-mib` MiB
            (far larger than any cache: the DRAM figure, `roofline_fraction`) and the step's own byte count,
            read again and again as the decode loop reads its weights (`roofline_fraction_same_size`). They
            differ where the step's working set fits a cache: this machine reports a 480 MiB L3, which holds the
            full model's 206 MB of weights, so a decode token there can read faster than DRAM allows (a
            fraction above 100% of the DRAM figure) and the same-size figure is the ceiling that applies.
  decode    a jitted `fori_loop` of K single-token `vlm.decode` calls carrying the KV cache (prefill of P tokens
            first, not timed), at each cache length S; every row writes at its own slot (a `[B]` write index, as
            in the rollout). Reports ms per token (median of --repeats).
  rollout   the whole greedy rollout (`make_rollout_fn`, B*G = 16, R = 4, T = 40) at several cache lengths: the
            same tokens are generated at every S, so the growth with S is the S-dependent cost of the rollout.
"""
from __future__ import annotations

import argparse, functools, os, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from bench.rollout import SETTINGS, biased_params, make_prompts, model_config  # noqa: E402
from videor4_jax import RolloutConfig, make_env, make_rollout_fn  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402


def decode_fns(config, params, S, rows, prefill=32, tokens=24):
  """(prefill_fn(params) -> (h, cache), decode_fn(params, h, cache) -> (h, cache), K): a prompt of `prefill` random
  tokens into a cache of S slots, then a jitted `fori_loop` of K = min(tokens, S - prefill) one-token decodes."""
  K = min(tokens, S - prefill)
  ids = jax.random.randint(jax.random.key(0), (rows, prefill), 10, 200)
  pos = jnp.broadcast_to(jnp.arange(prefill)[None, None], (3, rows, prefill))

  @jax.jit
  def prefill_fn(params):
    cache = vlm.init_cache(config, rows, S)
    x = vlm.embed_tokens(config, params, ids)
    h, cache = vlm.decode(config, params, x, pos, jnp.ones((rows, prefill), bool), cache,
                          jnp.zeros((rows,), jnp.int32))
    return h[:, -1], cache

  # The cache is donated (as inside the rollout, where it is a loop carry): otherwise every call would begin by
  # copying the whole [L, B, S, Hkv, Dh] input cache, an O(S) cost of this harness, not of a decode step.
  @functools.partial(jax.jit, donate_argnums=(2,))
  def decode_fn(params, h_bd, cache):
    def body(i, carry):
      h_bd, cache = carry
      tok_b = jnp.argmax(vlm.logits(config, params, h_bd), -1).astype(jnp.int32)
      slot = prefill + i
      w = jnp.full((rows,), slot, jnp.int32)
      p = jnp.full((3, rows, 1), slot, jnp.int32)
      h, cache = vlm.decode(config, params, vlm.embed_tokens(config, params, tok_b[:, None]), p,
                            jnp.ones((rows, 1), bool), cache, w)
      return h[:, 0], cache
    return jax.lax.fori_loop(0, K, body, (h_bd, cache))

  return prefill_fn, decode_fn, K


def decode_token_ms(prefill_fn, decode_fn, params, K) -> float:
  """One timed call: ms per token of K decodes (the prefill before it untimed)."""
  h, cache = jax.block_until_ready(prefill_fn(params))
  t0 = time.perf_counter()
  jax.block_until_ready(decode_fn(params, h, cache))
  return (time.perf_counter() - t0) / K * 1e3


def time_decode(config, params, S, rows, prefill=32, tokens=24, repeats=5):
  """ms per decode token at cache length S (median of `repeats` timed calls, after one untimed)."""
  prefill_fn, decode_fn, K = decode_fns(config, params, S, rows, prefill, tokens)
  jax.block_until_ready(decode_fn(params, *prefill_fn(params)))
  runs = [decode_token_ms(prefill_fn, decode_fn, params, K) for _ in range(repeats)]
  return float(np.median(runs)), [round(r, 2) for r in runs]


def time_rollout(env, params, prompts, G, repeats=3):
  fn = make_rollout_fn(env, num_generations=G, greedy=True)
  key = jax.random.key(0)
  compiled = fn.lower(params, prompts, key).compile()
  traj = jax.block_until_ready(compiled(params, prompts, key))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, prompts, key))
    runs.append(time.perf_counter() - t0)
  return float(np.median(runs)), [round(r, 3) for r in runs], traj


def read_bandwidth(mib: int, repeats: int = 5) -> float:
  """Bytes per second of the fastest of three jitted reads of a float32 buffer of `mib` MiB (median of `repeats`
  each): row sums of a [N, 512] view, one total sum, and a vector-matrix product (the access pattern of a
  one-row decode step). The fastest is the roofline: a probe slower than the machine flatters the step (a
  [256, N] row sum, this bench's probe before, read at 13 GB/s where these read at 22-27 GB/s)."""
  n = max(512, mib * 2 ** 20 // 4 // 512 * 512)
  buf = jnp.ones((n // 512, 512), jnp.float32)
  v = jnp.ones((n // 512,), jnp.float32)
  probes = (jax.jit(lambda x: x.sum(axis=1)), jax.jit(lambda x: x.sum()), jax.jit(lambda x: v @ x))
  best = 0.0
  for probe in probes:
    jax.block_until_ready(probe(buf))
    runs = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(probe(buf))
      runs.append(time.perf_counter() - t0)
    best = max(best, buf.nbytes / float(np.median(runs)))
  return best


def step_bytes(config, rows: int, used_slots: float) -> float:
  """Bytes one decode step must read: decoder + LM head weights once, the rows' used KV of every layer."""
  t = config.text
  p = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))["params"]
  weights = sum(x.size for x in jax.tree.leaves(p["decoder"])) + t.hidden_size * t.vocab_size
  kv = 2 * t.num_hidden_layers * rows * used_slots * t.num_key_value_heads * t.head_dim
  return 4.0 * (weights + kv)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", choices=("full", "quick"), default="full")
  ap.add_argument("--layers", choices=("scanned", "unrolled"), default="scanned",
                  help="scanned (the default config) or the CPU setting (vlm.cpu_setting: unrolled, cpu_layouts)")
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--caches", default="64,320,1280")
  ap.add_argument("--rollout-caches", default=None,
                  help="cache lengths of the whole-rollout timing (default: quick 320,640,1280; full 640,1280,2560, "
                       "as the full rollout needs >= 476 slots); '' skips it")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--bw-mib", type=int, default=1024)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.rollout_caches is None:
    args.rollout_caches = "320,640,1280" if args.model == "quick" else "640,1280,2560"
  threads = common.set_threads(args.threads)
  load_before = common.loadavg()
  s = SETTINGS[args.model]
  tok = Tokenizer.tiny()
  config = model_config(tok, s)
  params = biased_params(config, tok, **s["bias"])
  if args.layers == "unrolled":
    config, params = vlm.cpu_setting(config, params)
  rows = args.rows
  bw = read_bandwidth(args.bw_mib)
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  res = dict(config=dict(model=args.model, params=n_params, layers=args.layers, cpu_layouts=config.cpu_layouts,
                         rows=rows, prefill=32, tokens=24, text=s["text"], threads=threads),
             read_bandwidth_gb_s=round(bw / 1e9, 2), decode_ms_per_token={}, rollout_s={})
  print(f"model {args.model} ({n_params / 1e6:.1f}M params, {args.layers} layers), {rows} rows, {threads} threads; "
        f"read bandwidth {bw / 1e9:.1f} GB/s ({args.bw_mib} MiB sum)", flush=True)
  for S in [int(x) for x in args.caches.split(",") if x]:
    ms, runs = time_decode(config, params, S, rows, repeats=args.repeats)
    k = min(24, S - 32)
    nbytes = step_bytes(config, rows, 32 + (k + 1) / 2)
    frac = nbytes / (ms / 1e3) / bw
    bw_same = read_bandwidth(max(1, int(round(nbytes / 2 ** 20))))
    frac_same = nbytes / (ms / 1e3) / bw_same
    res["decode_ms_per_token"][str(S)] = dict(ms=round(ms, 2), runs=runs, bytes_per_step=int(nbytes),
                                              roofline_ms=round(nbytes / bw * 1e3, 2), roofline_fraction=round(frac, 3),
                                              read_bandwidth_same_size_gb_s=round(bw_same / 1e9, 2),
                                              roofline_fraction_same_size=round(frac_same, 3))
    print(f"decode S={S:5d}: {ms:7.2f} ms/token  {runs}; reads >= {nbytes / 1e6:.1f} MB: roofline "
          f"{nbytes / bw * 1e3:.2f} ms, reached {100 * frac:.0f}% (of {bw / 1e9:.1f} GB/s); {100 * frac_same:.0f}% "
          f"of {bw_same / 1e9:.1f} GB/s, the same reads of a buffer of the step's size", flush=True)
  if args.rollout_caches:
    time_rollouts(res, config, params, tok, s, args)
  res["machine"] = common.machine(threads, load_before=load_before, load_after=common.loadavg())
  name = (f"decode_step{'' if args.model == 'full' else '_quick'}{'_unrolled' if args.layers == 'unrolled' else ''}"
          f"{'' if rows == 16 else f'_rows{rows}'}.json")
  out = common.write_json(res, name, args.out)
  print("wrote", out)
  fr = [v["roofline_fraction"] for v in res["decode_ms_per_token"].values()]
  fs = [v["roofline_fraction_same_size"] for v in res["decode_ms_per_token"].values()]
  print(f"decode token ({args.model}, {rows} rows): {min(fr) * 100:.0f}-{max(fr) * 100:.0f}% of the measured memory "
        f"roofline ({bw / 1e9:.1f} GB/s, {args.bw_mib} MiB); {min(fs) * 100:.0f}-{max(fs) * 100:.0f}% of the read "
        f"bandwidth over a buffer of the step's size")
  return res


def time_rollouts(res, config, params, tok, s, args):
  """The whole greedy rollout at several cache lengths (same tokens at every S expected)."""
  prompts = make_prompts(tok, config, s, s["B"])
  rows = s["B"] * s["G"]
  gen = None
  for S in [int(x) for x in args.rollout_caches.split(",") if x]:
    rc = RolloutConfig(max_steps=s["R"], max_step_tokens=s["T"], cache_len=S, obs_hw=s["obs_hw"], max_clip_frames=4,
                       crop_min_px=4)
    env = make_env(config, rc, tok, s["frames"])
    sec, runs, traj = time_rollout(env, params, prompts, s["G"], repeats=max(1, args.repeats // 2))
    g = [np.asarray(traj.tokens[b])[np.asarray(traj.loss_mask[b]) > 0].tolist() for b in range(rows)]
    same = gen is None or g == gen
    gen = gen or g
    ntok = int(traj.num_generated.sum())
    res["rollout_s"][str(S)] = dict(s=round(sec, 3), runs=runs, tokens=ntok, same_tokens_as_first=same)
    print(f"rollout S={S:5d}: {sec:.3f} s ({ntok} tokens, {ntok / sec:.0f} tok/s, same tokens: {same}) {runs}",
          flush=True)


if __name__ == "__main__":
  main()
