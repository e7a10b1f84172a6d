"""Memory of the chunked token log-probs against a dense log_softmax, from the compiled graph (nothing runs).

  python bench/logprob_memory.py [--quick] [--out bench/results/logprob_memory[_quick].json]

Both graphs are `jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))` with loss = sum_t logp[b, t] over hidden
states h [B, T, D] and the LM head W [D, V] in bf16 (the GRPO/SFT step's head, forward and backward), lowered
from `jax.ShapeDtypeStruct`s and compiled for this CPU (the buffer assignment is what the memory analysis
reports; no array of these sizes is ever allocated):

  ours   videor4_jax.rl.logprobs.token_logprobs (sequence chunks of 256 x vocabulary chunks of 8192,
         online logsumexp, rematerialized chunk body)
  dense  logits = h @ W in f32, jax.nn.log_softmax over V, gather the targets

Reported per graph: memory_analysis() temp bytes, the largest buffer shape in the optimized HLO, and every
buffer whose shape has both T and V (or V padded to the vocabulary chunk) among its dimensions: a [B, T, V]
logits array or its gradient. Ours must have none; the dense baseline does.
Default size T = 8192, V = 152064 (Qwen2.5-VL), D = 3584 (7B); `--quick`: T = 1024, V = 32768, D = 512.
Final line: temp-bytes ratio dense/ours and the [B, T, V] verdicts.
"""
from __future__ import annotations

import argparse, json, os, platform, re, sys, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from videor4_jax.rl.logprobs import token_logprobs  # noqa: E402

SHAPE_RE = re.compile(r"\b(pred|s8|s16|s32|s64|u8|u32|bf16|f16|f32|f64)\[([0-9,]*)\]")
BYTES = dict(pred=1, s8=1, u8=1, s16=2, bf16=2, f16=2, s32=4, u32=4, f32=4, s64=8, f64=8)


def dense_logprobs(h_btd, w_dv, y_bt):
  z_btv = jnp.einsum("btd,dv->btv", h_btd, w_dv, preferred_element_type=jnp.float32)
  return jnp.take_along_axis(jax.nn.log_softmax(z_btv, axis=-1), y_bt[..., None], axis=-1)[..., 0]


def hlo_shapes(text):
  """Every distinct (dtype, dims) array shape written in an HLO module text."""
  return {(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in SHAPE_RE.findall(text)}


def analyze(logprob_fn, B, T, V, D, vocab_multiple=8192):
  """Compiles value_and_grad of sum(logp) from abstract args; returns the memory figures and the [B,T,V] buffers."""
  loss = lambda h, w, y: logprob_fn(h, w, y).sum()
  args = (jax.ShapeDtypeStruct((B, T, D), jnp.bfloat16), jax.ShapeDtypeStruct((D, V), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, T), jnp.int32))
  t0 = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
  secs = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  shapes = hlo_shapes(compiled.as_text())
  v_dims = {V, -(-V // vocab_multiple) * vocab_multiple}
  btv = sorted({(t, s) for t, s in shapes if T in s and v_dims & set(s)})
  size = lambda ts: int(np.prod(ts[1], dtype=np.int64)) * BYTES[ts[0]]
  largest = max(shapes, key=size)
  return dict(compile_s=round(secs, 2), temp_bytes=int(mem.temp_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
              largest_buffer=f"{largest[0]}{list(largest[1])}", largest_buffer_bytes=size(largest),
              btv_buffers=[f"{t}{list(s)}" for t, s in btv])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="T=1024, V=32768, D=512")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  B, (T, V, D) = args.batch, ((1024, 32768, 512) if args.quick else (8192, 152064, 3584))
  res = dict(config=dict(B=B, T=T, V=V, D=D, dtype="bfloat16", seq_chunk=256, vocab_chunk=8192,
                         logits_f32_bytes=B * T * V * 4))
  for name, fn in (("ours", token_logprobs), ("dense", dense_logprobs)):
    res[name] = analyze(fn, B, T, V, D)
    r = res[name]
    print(f"{name:>5}: temp {r['temp_bytes'] / 2**30:8.3f} GiB, largest buffer {r['largest_buffer']} "
          f"({r['largest_buffer_bytes'] / 2**30:.3f} GiB), [B,T,V] buffers: {r['btv_buffers'] or 'none'} "
          f"(compiled in {r['compile_s']}s)", flush=True)
  res["ratios"] = dict(temp_dense_over_ours=round(res["dense"]["temp_bytes"] / max(res["ours"]["temp_bytes"], 1), 1))
  res["checks"] = dict(ours_has_no_btv=not res["ours"]["btv_buffers"], dense_has_btv=bool(res["dense"]["btv_buffers"]))
  res["machine"] = dict(host=platform.node(), jax=jax.__version__, backend=jax.default_backend())
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "logprob_memory_quick.json" if args.quick else "logprob_memory.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=2)
  assert res["checks"]["ours_has_no_btv"], f"chunked log-probs hold a [B, T, V] buffer: {res['ours']['btv_buffers']}"
  assert res["checks"]["dense_has_btv"], "the dense baseline shows no [B, T, V] buffer: the HLO scan is broken"
  print(f"logprob memory (T={T}, V={V}): temp dense/ours = {res['ratios']['temp_dense_over_ours']:.1f}x; "
        f"ours [B,T,V] buffers: none; dense: {len(res['dense']['btv_buffers'])}")


if __name__ == "__main__":
  main()
