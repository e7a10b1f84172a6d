"""Cost of one rollout decode token vs the static cache length (issue 9: the step was O(cache_len) copies).

  python bench/decode_step.py [--caches 64,320,1280] [--rollout-caches 320,640,1280] [--out ...]

Model: the `bench/rollout.py --quick` model (10.8M params), 16 rows, fp32.

  decode    a jitted `fori_loop` of K single-token `vlm.decode` calls carrying the KV cache (prefill of P tokens
            first, not timed), at each cache length S; every row writes at its own slot (a `[B]` write index, as
            in the rollout). Reports ms per token (median of --repeats).
  rollout   the whole greedy rollout (`make_rollout_fn`, B*G = 16, R = 4, T = 40) at several cache lengths: the
            same tokens are generated at every S, so the growth with S is the S-dependent cost of the rollout.
"""
from __future__ import annotations

import argparse, functools, json, os, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.rollout import SETTINGS, biased_params, make_prompts, model_config  # noqa: E402
from videor4_jax import RolloutConfig, make_env, make_rollout_fn  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402


def time_decode(config, params, S, rows, prefill=32, tokens=24, repeats=5):
  """ms per decode token at cache length S (K = min(tokens, S - prefill) tokens per timed call)."""
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

  jax.block_until_ready(decode_fn(params, *prefill_fn(params)))
  runs = []
  for _ in range(repeats):
    h, cache = jax.block_until_ready(prefill_fn(params))
    t0 = time.perf_counter()
    jax.block_until_ready(decode_fn(params, h, cache))
    runs.append((time.perf_counter() - t0) / K * 1e3)
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


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--caches", default="64,320,1280")
  ap.add_argument("--rollout-caches", default="320,640,1280")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  s = SETTINGS["quick"]
  tok = Tokenizer.tiny()
  config = model_config(tok, s)
  params = biased_params(config, tok, **s["bias"])
  rows = s["B"] * s["G"]
  res = dict(decode_ms_per_token={}, rollout_s={}, machine=dict(loadavg=[round(x, 2) for x in os.getloadavg()]))
  for S in [int(x) for x in args.caches.split(",") if x]:
    ms, runs = time_decode(config, params, S, rows, repeats=args.repeats)
    res["decode_ms_per_token"][str(S)] = dict(ms=round(ms, 2), runs=runs)
    print(f"decode S={S:5d}: {ms:7.2f} ms/token  {runs}", flush=True)
  prompts = make_prompts(tok, config, s, s["B"])
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
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "decode_step.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=2)
  print("wrote", out)


if __name__ == "__main__":
  main()
