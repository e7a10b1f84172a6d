"""The chunked log-probs never hold a [B, T, V] buffer, forward or backward: read from the compiled graph.

A smaller analogue of bench/logprob_memory.py (T = 8192, V = 152064 there): value_and_grad of sum(logp) is
compiled from abstract shapes (nothing is allocated), then (a) the optimized HLO is scanned for any array shape
with both T and V among its dimensions, and (b) the buffer assignment's temp bytes are compared at two sequence
lengths. The chunked version's peak is O(B * seq_chunk * V) (one sequence chunk's logits, rematerialized in the
backward pass), so it must not grow with T, while the dense log_softmax baseline grows by one f32 [B, dT, V]
array or more. The baseline must show both properties, else the checks would prove nothing.
"""
import re

import jax
import jax.numpy as jnp
import pytest

from videor4_jax.rl.logprobs import token_logprobs

B, V, D = 2, 16384, 64
T_SHORT, T_LONG = 1024, 4096
SHAPE_RE = re.compile(r"\b(?:pred|s8|s32|u8|u32|bf16|f16|f32|f64)\[([0-9,]*)\]")


def _dense(h, w, y):
  z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
  return jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), y[..., None], axis=-1)[..., 0]


def _compile(fn, T):
  loss = lambda h, w, y: fn(h, w, y).sum()
  args = (jax.ShapeDtypeStruct((B, T, D), jnp.bfloat16), jax.ShapeDtypeStruct((D, V), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, T), jnp.int32))
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
  shapes = {tuple(int(d) for d in s.split(",") if d) for s in SHAPE_RE.findall(compiled.as_text())}
  return compiled.memory_analysis().temp_size_in_bytes, shapes


@pytest.fixture(scope="module")
def graphs():
  return {(name, T): _compile(fn, T) for name, fn in (("ours", token_logprobs), ("dense", _dense))
          for T in (T_SHORT, T_LONG)}


def test_chunked_logprobs_hold_no_btv_buffer(graphs):
  has_tv = lambda s: T_LONG in s and V in s
  _, dense_shapes = graphs["dense", T_LONG]
  _, ours_shapes = graphs["ours", T_LONG]
  assert any(has_tv(s) for s in dense_shapes), sorted(dense_shapes)    # the scan does see [B, T, V] when it exists
  assert not [s for s in ours_shapes if has_tv(s)]


def test_chunked_logprobs_temp_memory_does_not_grow_with_t(graphs):
  growth_f32 = B * (T_LONG - T_SHORT) * V * 4          # one f32 logits array over the extra tokens
  ours = {T: graphs["ours", T][0] for T in (T_SHORT, T_LONG)}
  dense = {T: graphs["dense", T][0] for T in (T_SHORT, T_LONG)}
  assert dense[T_LONG] - dense[T_SHORT] >= growth_f32, dense
  assert ours[T_LONG] - ours[T_SHORT] < growth_f32 / 20, ours
  assert ours[T_LONG] < B * T_LONG * V * 4 / 2, ours   # below half of one f32 [B, T, V] array
