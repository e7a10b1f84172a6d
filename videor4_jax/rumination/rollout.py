"""The jitted rumination rollout: one compiled graph, KV cache kept across turns.

    prefill(prompt) -> scan over R steps:
        while_loop decode (<= T tokens, per-row stop; grammar-constrained inside a tool call)
        parse the call in-graph -> crop / clip the source frames -> vision tower -> observation chunk
        -> incremental prefill of the chunk into the same cache, positions continuing from the row's counter

Shapes are static (rows B*G, cache S, steps R, tokens per step T, observation length N); rows that answered or
failed keep running masked (their writes are invalid and do not advance), so compile time does not grow with R.
Every row's computation depends only on its own inputs and its own key (`fold_in(key, row)`), so a row's result
does not change when the other rows of the batch change.
"""
from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp

from videor4_jax.rumination import env as env_lib
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.sampling import sample_next
from videor4_jax.rumination.trajectory import Actions, Trajectory

STOP_RUNNING, STOP_TOOL_CALL, STOP_ANSWER, STOP_BUDGET = 0, 1, 2, 3


def _write_rows(buf_bs, upd_bn, offset_b):
  """Writes `upd[b]` into `buf[b]` at slot `offset[b]` (per-row offsets)."""
  return jax.vmap(lambda buf, upd, off: jax.lax.dynamic_update_slice_in_dim(buf, upd, off, axis=0))(
      buf_bs, upd_bn, offset_b)


def _row_keys(key, step, t, rows):
  """The sampling key of each row at (step, t): `rows` is a row count or an array of row indices."""
  rows = jnp.arange(rows) if isinstance(rows, int) else rows
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, r), step), t))(rows)


def chunk_rows(rows: int, compact: bool = True) -> int:
  """k, the rows of a compacted chunk (observation turns, the end of a decode segment): the smallest divisor of
  `rows` that is >= rows / 4, or all rows when not compacting (`RolloutConfig.compact_rows`)."""
  return min(d for d in range(1, rows + 1) if rows % d == 0 and 4 * d >= rows) if compact else rows


def may_need_wide_observation(kind, num_frames):
  """Calls whose outcome may hold more than one frame group (pixel_ops.clip pairs frames into groups): clips of
  more than 2 frames. Every other outcome fits `templates.length_upto(1)` slots. numpy or jax arrays."""
  return (kind == env_lib.KIND_CLIP) & (num_frames > 2)


def rollout(env: env_lib.RuminationEnv, params, prompts: dict, key: jax.Array, *, num_generations: int = 1,
            greedy: bool = False, temperature: float | None = None, top_p: float | None = None) -> Trajectory:
  """Ruminates on a batch of prompts. See `make_rollout_fn` for the jitted form and the prompt fields.

  The jitted function is kept per (env, settings) while the env lives, so a loop of calls compiles once.
  """
  settings = (num_generations, greedy, temperature, top_p)
  entry = _ROLLOUT_FNS.get((id(env), settings))
  if entry is None or entry[0]() is not env:
    fn = make_rollout_fn(env, num_generations=num_generations, greedy=greedy, temperature=temperature, top_p=top_p)
    entry = _ROLLOUT_FNS[(id(env), settings)] = (weakref.ref(env), fn)
    weakref.finalize(env, _ROLLOUT_FNS.pop, (id(env), settings), None)
  return entry[1](params, prompts, key)


_ROLLOUT_FNS: dict = {}    # (id(env), settings) -> (weakref to env, jitted rollout)


def make_rollout_fn(env: env_lib.RuminationEnv, *, num_generations: int = 1, greedy: bool = False,
                    temperature: float | None = None, top_p: float | None = None):
  """Returns `jit(fn)(params, prompts, key) -> Trajectory` with B*G rows.

  prompts (right-padded, one video per row, as `data.pipeline` produces):
    input_ids [B, Tp] int32, attention_mask [B, Tp], pixel_values_videos [B, Nv, P], video_grid_thw [B, 3],
    source_frames [B, F, H, W, 3] uint8.
  """
  rc: RolloutConfig = env.rollout
  temperature = rc.temperature if temperature is None else temperature
  top_p = rc.top_p if top_p is None else top_p
  sample = functools.partial(sample_next, temperature=temperature, top_p=top_p, greedy=greedy)
  G = num_generations

  def fn(params, prompts, key):
    input_ids_pt = prompts["input_ids"].astype(jnp.int32)
    P, Tp = input_ids_pt.shape
    B = P * G
    S, R, T = rc.cache_len, rc.max_steps, rc.max_step_tokens
    N = env.obs_len
    if Tp + R * (T + N) > S:
      raise ValueError(f"cache_len={S} < prompt {Tp} + max_steps {R} * (max_step_tokens {T} + observation {N})")

    # ---- prefill -------------------------------------------------------------------------------------------
    # Once per prompt: the G rows of a prompt share its vision tower pass and its prompt prefill (a G-fold saving
    # of the rollout's largest compute-bound piece); the [P, Tp] prefix cache is then repeated into the
    # [B, S] cache, row b * G + g taking prompt b.
    rep = lambda x, axis=0: jnp.repeat(x, G, axis=axis)
    pf = env.prefill_inputs(params, prompts)     # right-aligned embeds, positions, valid, counter, video feats
    hidden_ptd, prefix = env.decode(params, pf["embeds"], pf["positions"], pf["valid"], env.init_cache(P, Tp),
                                    jnp.zeros((P,), jnp.int32))
    cache = env.init_cache(B, S)
    cache = cache.replace(k=cache.k.at[:, :, :Tp].set(rep(prefix.k, 1)),
                          v=cache.v.at[:, :, :Tp].set(rep(prefix.v, 1)),
                          valid=cache.valid.at[:, :Tp].set(rep(prefix.valid)))
    length_p = pf["valid"].sum(-1).astype(jnp.int32)
    last_h_pd = jnp.take_along_axis(hidden_ptd, (length_p - 1)[:, None, None], axis=1)[:, 0]
    logits_bv = rep(env.logits(params, last_h_pd))
    pf = dict(pf, embeds=None, positions=rep(pf["positions"], 1),
              **{n: rep(pf[n]) for n in ("ids", "valid", "mm_types", "next_counter", "video_feats")})
    length_b = rep(length_p)
    prompts = jax.tree.map(rep, prompts)

    pad_s = S - Tp
    rec = dict(
        tokens=jnp.pad(pf["ids"], ((0, 0), (0, pad_s))),
        positions=jnp.pad(pf["positions"], ((0, 0), (0, 0), (0, pad_s))),
        valid=jnp.pad(pf["valid"], ((0, 0), (0, pad_s))),
        loss_mask=jnp.zeros((B, S), jnp.float32),
        logp=jnp.zeros((B, S), jnp.float32),
        forced=jnp.zeros((B, S), bool),
        mm_types=jnp.pad(pf["mm_types"], ((0, 0), (0, pad_s))),
    )
    state = dict(cache=cache, write=length_b, counter=pf["next_counter"], logits=logits_bv,
                 done=jnp.zeros((B,), bool), answered=jnp.zeros((B,), bool), rec=rec,
                 last_clip=jnp.zeros((B, env.video_groups), bool), num_generated=jnp.zeros((B,), jnp.int32))

    # ---- one rumination step ---------------------------------------------------------------------------------
    k = chunk_rows(B, rc.compact_rows)

    def decode_segment(state, step):
      def cond(c):
        return (c["t"] < T) & jnp.any(c["active"])

      def advance(c, sel_k):
        """One token for rows `sel_k` (`[k]` distinct row indices; None: all rows). Rows of the selection that
        are not active compute but change nothing."""
        rows_k = jnp.arange(B) if sel_k is None else sel_k
        take = lambda x: x if sel_k is None else jnp.take(x, sel_k, axis=0)
        act_k, gstate_k, slot_k, counter_k = take(c["active"]), take(c["gstate"]), take(c["write"]), take(c["counter"])
        allowed_kv = env.allowed_tokens(gstate_k)
        keys = _row_keys(key, step, c["t"], rows_k)
        tok_k, logp_k = jax.vmap(lambda k, l, a: tuple(x[0] for x in sample(k, l[None], a[None])))(
            keys, take(c["logits"]), allowed_kv)
        next_gstate_k = env.advance_grammar(gstate_k, tok_k)
        ends_call_k = env.grammar_accepts(next_gstate_k)
        ends_answer_k = (tok_k == env.im_end_id) & (gstate_k == 0)
        stop_k = jnp.where(ends_call_k, STOP_TOOL_CALL, jnp.where(ends_answer_k, STOP_ANSWER, STOP_RUNNING))
        # Active rows record the sampled token at their write slot (and in their step record); the others keep
        # what was there.
        write_at = lambda buf, col_k, val: buf.at[rows_k, col_k].set(jnp.where(act_k, val, buf[rows_k, col_k]))
        at_slot = lambda buf, val: write_at(buf, slot_k, val)
        r = c["rec"]
        r = dict(r, tokens=at_slot(r["tokens"], tok_k), valid=at_slot(r["valid"], True),
                 loss_mask=at_slot(r["loss_mask"], 1.0), logp=at_slot(r["logp"], logp_k),
                 forced=at_slot(r["forced"], allowed_kv.sum(-1) == 1), mm_types=at_slot(r["mm_types"], 0),
                 positions=jax.vmap(at_slot)(r["positions"], jnp.broadcast_to(counter_k, (3, rows_k.shape[0]))))
        pos_3k1 = jnp.broadcast_to(counter_k[None, :, None], (3, rows_k.shape[0], 1))
        h_k1d, cache = env.decode(params, env.embed(params, tok_k[:, None]), pos_3k1, act_k[:, None], c["cache"],
                                  slot_k, rows=sel_k)
        keep = lambda old, new: old.at[rows_k].set(jnp.where(act_k.reshape((-1,) + (1,) * (new.ndim - 1)), new,
                                                             old[rows_k]))
        step_len_k = take(c["step_len"])    # < T: a row's step length is at most t, and the loop runs while t < T
        return dict(c, t=c["t"] + 1, cache=cache, rec=r,
                    logits=keep(c["logits"], env.logits(params, h_k1d[:, 0])),
                    write=keep(c["write"], slot_k + 1), counter=keep(c["counter"], counter_k + 1),
                    step_tokens=write_at(c["step_tokens"], step_len_k, tok_k),
                    step_len=keep(c["step_len"], step_len_k + 1),
                    gstate=keep(c["gstate"], next_gstate_k), stop=keep(c["stop"], stop_k),
                    active=keep(c["active"], stop_k == STOP_RUNNING))

      c0 = dict(t=jnp.int32(0), cache=state["cache"], logits=state["logits"], rec=state["rec"],
                write=state["write"], counter=state["counter"], active=~state["done"],
                gstate=jnp.zeros((B,), jnp.int32), stop=jnp.zeros((B,), jnp.int32),
                step_tokens=jnp.zeros((B, T), jnp.int32), step_len=jnp.zeros((B,), jnp.int32))
      # Rows only stop within a segment, so it runs as two loops: all B rows while more than k are running, then
      # the (at most k) rows still running, gathered once (k as for the observation turn below): finished rows
      # stop costing compute. A lax.cond per token would copy the KV cache in and out of its branches instead; a
      # third loop at B/2 rows measured no faster here (and costs one more copy of the decoder to compile).
      c = jax.lax.while_loop(lambda c: cond(c) & (c["active"].sum() > k), lambda c: advance(c, None), c0)
      if k < B:
        sel_k = jnp.argsort(~c["active"], stable=True)[:k]
        c = jax.lax.while_loop(cond, lambda c: advance(c, sel_k), c)
      # Rows still running at the budget are cut: they fail (no answer) and stop.
      stop_b = jnp.where(c["active"], STOP_BUDGET, c["stop"])
      return c, stop_b

    def step_fn(state, step):
      was_done_b = state["done"]
      c, stop_b = decode_segment(state, step)
      called_b = (stop_b == STOP_TOOL_CALL) & ~was_done_b
      action = env.parse_action(c["step_tokens"], c["step_len"])

      def observe_and_prefill(cache, sel_k, called_k, max_groups=None):
        """Observation turn of rows `sel_k` (all rows when None): vision tower, prefill into those rows of the
        cache, logits of the turn's last token. `max_groups`: see `env.observe` (a narrower prefill)."""
        take = (lambda x: x) if sel_k is None else (lambda x: jnp.take(x, sel_k, axis=0))
        obs = env.observe(params, take(prompts["source_frames"]), jax.tree.map(take, action), called_k,
                          take(c["counter"]), max_groups)
        n = obs["embeds"].shape[1]
        h_knd, cache = env.decode(params, obs["embeds"], obs["positions"][:, :, :n], obs["valid"][:, :n], cache,
                                  take(c["write"]), rows=sel_k)
        n_k = obs["valid"].sum(-1).astype(jnp.int32)
        last_h_kd = jnp.take_along_axis(h_knd, jnp.maximum(n_k - 1, 0)[:, None, None], axis=1)[:, 0]
        obs = {k: v for k, v in obs.items() if k != "embeds"}
        return cache, jnp.where(called_k[:, None], env.logits(params, last_h_kd), take(c["logits"])), obs

      # The vision tower and the observation prefill cost as much per row as a prompt prefill, and only the rows
      # that called a tool need them. So they run on the callers only, in chunks of k rows (k = the smallest
      # divisor of B that is >= B/4): one compiled copy of the turn, run ceil(callers / k) times, i.e. zero times
      # in a step where no row called. The last chunk's tail repeats its last caller (the same row computed
      # twice writes the same values twice), so a chunk touches no other row. Observations that cannot have more
      # than one frame group (a crop, a clip of <= 2 frames, any error) fill at most `length_upto(1)` of the N
      # slots (30 of 46 at 112 px with K = 4, 78 of 270 at 224 px with K = 8), so when narrower they go in a second
      # loop, prefilled that wide. Rows that did not call keep zero outputs (no valid token, no pixels, error 0).
      out_shape = jax.eval_shape(lambda: observe_and_prefill(c["cache"], None, called_b)[2])
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
      carry = (c["cache"], c["logits"], zeros)
      if k == B:   # no gather (rows sharded over devices: see RolloutConfig.compact_rows)
        carry = jax.lax.fori_loop(0, called_b.any().astype(jnp.int32),      # a loop: a cond would copy the cache
                                  lambda j, carry: observe_and_prefill(carry[0], None, called_b), carry)
      else:
        wide_b = called_b & may_need_wide_observation(action["kind"], action["num_frames"])
        narrow = env.templates.length_upto(1) < N
        passes = [(wide_b, None), (called_b & ~wide_b, 1)] if narrow else [(called_b, None)]
        for callers_b, max_groups in passes:
          order_b = jnp.argsort(~callers_b, stable=True)
          n_callers = callers_b.sum()

          def chunk(j, carry, order_b=order_b, n_callers=n_callers, max_groups=max_groups):
            cache, logits_bv, obs = carry
            sel_k = order_b[jnp.minimum(j * k + jnp.arange(k), n_callers - 1)]
            cache, logits_kv, obs_k = observe_and_prefill(cache, sel_k, jnp.ones((k,), bool), max_groups)
            obs = {n: (obs[n].at[:, sel_k] if n == "positions" else obs[n].at[sel_k]).set(v)
                   for n, v in obs_k.items()}
            return cache, logits_bv.at[sel_k].set(logits_kv), obs

          carry = jax.lax.fori_loop(0, (n_callers + k - 1) // k, chunk, carry)
      cache, logits_bv, obs = carry
      chunk_valid_bn = obs["valid"]
      pos_3bn, next_counter_b = obs["positions"], obs["next_counter"]
      n_b = chunk_valid_bn.sum(-1).astype(jnp.int32)
      r = c["rec"]
      w = c["write"]
      keep = lambda buf, upd: jnp.where(called_b[:, None], _write_rows(buf, upd, w), buf)
      r = dict(r, tokens=keep(r["tokens"], obs["ids"]), valid=keep(r["valid"], chunk_valid_bn),
               mm_types=keep(r["mm_types"], obs["mm_types"]),
               positions=jnp.where(called_b[None, :, None],
                                   jax.vmap(_write_rows, in_axes=(0, 0, None))(r["positions"], pos_3bn, w),
                                   r["positions"]))
      answered_b = state["answered"] | ((stop_b == STOP_ANSWER) & ~was_done_b)
      done_b = was_done_b | (stop_b != STOP_TOOL_CALL)
      new_state = dict(cache=cache, write=w + n_b, counter=jnp.where(called_b, next_counter_b, c["counter"]),
                       logits=logits_bv, done=done_b, answered=answered_b, rec=r,
                       last_clip=jnp.where(obs["clip_groups"].any(-1, keepdims=True), obs["clip_groups"],
                                           state["last_clip"]),
                       num_generated=state["num_generated"] + c["step_len"])
      per_step = dict(kind=jnp.where(called_b, action["kind"], 0), frame=action["frame"], box=action["box"],
                      frames=action["frames"], num_frames=action["num_frames"],
                      error=jnp.where(called_b, obs["error"], 0), called=called_b,
                      obs_pixels=obs["pixels"], obs_grid=obs["grid"], obs_valid=called_b & obs["has_vision"],
                      region_feat=obs["pooled"], region_mask=called_b & obs["is_crop_ok"])
      return new_state, per_step

    state, steps = jax.lax.scan(step_fn, state, jnp.arange(R))
    sw = lambda x: jnp.swapaxes(x, 0, 1)   # [R, B, ...] -> [B, R, ...]
    rec = state["rec"]
    return Trajectory(
        tokens=rec["tokens"], positions=rec["positions"], valid=rec["valid"], loss_mask=rec["loss_mask"],
        forced=rec["forced"],
        logp=rec["logp"], mm_types=rec["mm_types"], length=state["write"],
        video_pixels=prompts["pixel_values_videos"], video_grid=prompts["video_grid_thw"].astype(jnp.int32),
        obs_pixels=sw(steps["obs_pixels"]), obs_grid=sw(steps["obs_grid"]), obs_valid=sw(steps["obs_valid"]),
        actions=Actions(kind=sw(steps["kind"]), frame=sw(steps["frame"]), box=sw(steps["box"]),
                        frames=sw(steps["frames"]), num_frames=sw(steps["num_frames"]), error=sw(steps["error"]),
                        called=sw(steps["called"])),
        answered=state["answered"], video_feats=pf["video_feats"], region_feats=sw(steps["region_feat"]),
        region_mask=sw(steps["region_mask"]), last_clip_groups=state["last_clip"],
        num_generated=state["num_generated"])

  return jax.jit(fn)
