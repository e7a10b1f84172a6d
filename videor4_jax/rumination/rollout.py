"""The jitted rumination rollout: one compiled graph, KV cache kept across turns. Read top to bottom:

    prefill_prompts                       vision tower and prompt prefill, once per prompt, into the [B, S] cache
    lax.scan over R steps of rumination_step:
        decode_segment                    while_loop, <= T tokens (decode_token), per-row stop; grammar-constrained
                                          inside a tool call
        env.parse_action                  the call, parsed in-graph
        observation_turns                 crop / clip the source frames -> vision tower -> observation chunk,
                                          prefilled into the same cache, positions continuing from the row's counter
    to_trajectory

Shapes are static (rows B*G, cache S, steps R, tokens per step T, observation length N); rows that answered or
failed keep running masked (their writes are invalid and do not advance), so compile time does not grow with R.
Every row's computation depends only on its own inputs and its own key (`row_keys`), so a row's result does not
change when the other rows of the batch change. The rollout counts its own work (`trajectory.RolloutWork`).
"""
from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp

from videor4_jax.model.vlm import KVCache, cache_slot_axis
from videor4_jax.processing.grammar import OUTSIDE_CALL
from videor4_jax.parallel.sharding import constrain_rows
from videor4_jax.rumination import env as env_lib
from videor4_jax.rumination.rollout_state import Context, ObservationTurns, Record, RolloutState, Segment, StepRecord
from videor4_jax.rumination.sampling import sample_next
from videor4_jax.rumination.trajectory import Actions, RolloutWork, Trajectory

STOP_RUNNING, STOP_TOOL_CALL, STOP_ANSWER, STOP_BUDGET = 0, 1, 2, 3    # why a row's decode segment ended


def row_keys(key, step, t, rows):
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


# ---- entry points --------------------------------------------------------------------------------------------------
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
  return jax.jit(rollout_body(env, num_generations=num_generations, greedy=greedy, temperature=temperature,
                              top_p=top_p))


def rollout_body(env: env_lib.RuminationEnv, *, num_generations: int = 1, greedy: bool = False,
                 temperature: float | None = None, top_p: float | None = None):
  """The rollout unjitted: `fn(params, prompts, key, row_offset=0) -> Trajectory`. `row_offset` (int or traced
  int32): the index of this batch's first row in a larger batch it is a slice of. Rows draw their samples by
  their index in that larger batch (`row_keys`), so a slice gives its rows the tokens the whole batch would
  (row_groups.py runs slices side by side)."""
  rc = env.rollout
  sample = functools.partial(sample_next, temperature=rc.temperature if temperature is None else temperature,
                             top_p=rc.top_p if top_p is None else top_p, greedy=greedy)

  def fn(params, prompts, key, row_offset=0):
    params = cast_to_compute(params, env.config.dtype)
    num_prompts, prompt_len = prompts["input_ids"].shape
    check_cache_fits(env, prompt_len)
    rows = num_prompts * num_generations
    repeated = jax.tree.map(lambda x: jnp.repeat(x, num_generations, axis=0), prompts)   # row b*G + g: prompt b
    state, video_feats_bgd = prefill_prompts(env, params, prompts, num_generations)
    ctx = Context(env, params, key, sample, rows, chunk_rows(rows, rc.compact_rows), repeated["source_frames"],
                  row_offset)
    state, steps = jax.lax.scan(functools.partial(rumination_step, ctx), state, jnp.arange(rc.max_steps))
    prompt_work = (num_prompts * prompt_len, num_prompts * prompts["pixel_values_videos"].shape[1])
    return to_trajectory(state, steps, repeated, video_feats_bgd, prompt_work)

  return fn


def cast_to_compute(params, dtype):
  """Float params wider than the compute dtype, cast to it once per rollout (the model casts every weight to the
  compute dtype where it uses it, so the result is the same; a decode token then reads, and under FSDP gathers,
  half the bytes of f32 master weights)."""
  dtype = jnp.dtype(dtype)
  narrow = lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype.itemsize > dtype.itemsize \
      else p
  return jax.tree.map(narrow, params)


def check_cache_fits(env: env_lib.RuminationEnv, prompt_len: int):
  rc = env.rollout
  S, R, T, N = rc.cache_len, rc.max_steps, rc.max_step_tokens, env.obs_len
  if prompt_len + R * (T + N) > S:
    raise ValueError(f"cache_len={S} < prompt {prompt_len} + max_steps {R} * (max_step_tokens {T} + observation {N})")


# ---- prompt prefill ------------------------------------------------------------------------------------------------
def prefill_prompts(env: env_lib.RuminationEnv, params, prompts: dict, num_generations: int):
  """The first state, and the pooled global-view features `[B, Gv, D]`.

  Once per prompt: the G rows of a prompt share its vision tower pass and its prompt prefill (a G-fold saving of
  the rollout's largest compute-bound piece); the [P, Tp] prefix cache is then repeated into the [B, S] cache,
  row b * G + g taking prompt b.
  """
  repeat = lambda x, axis=0: jnp.repeat(x, num_generations, axis=axis)
  num_prompts, prompt_len = prompts["input_ids"].shape
  rows, cache_len = num_prompts * num_generations, env.rollout.cache_len
  prompt = env.prefill_inputs(params, prompts)    # right-aligned embeds, positions, valid, counter, video feats
  hidden_ptd, prefix = env.decode(params, prompt["embeds"], prompt["positions"], prompt["valid"],
                                  env.init_cache(num_prompts, prompt_len), jnp.zeros((num_prompts,), jnp.int32))
  cache = env.init_cache(rows, cache_len)
  # The cache (`[L, B, S, Hkv, Dh]`, head-major under cpu_layouts) is the rollout's largest array: its rows go
  # where the batch's rows are; the prompt prefix fills its first slots.
  put_prefix = lambda buf, pre: constrain_rows(jax.lax.dynamic_update_slice_in_dim(
      buf, repeat(pre, 1), 0, axis=cache_slot_axis(env.config)), 1)
  cache = cache.replace(k=put_prefix(cache.k, prefix.k), v=put_prefix(cache.v, prefix.v),
                        valid=constrain_rows(cache.valid.at[:, :prompt_len].set(repeat(prefix.valid))))
  length_p = prompt["valid"].sum(-1).astype(jnp.int32)
  last_hidden_pd = jnp.take_along_axis(hidden_ptd, (length_p - 1)[:, None, None], axis=1)[:, 0]
  pad_s = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, cache_len - prompt_len)])
  record = Record(tokens_bs=pad_s(repeat(prompt["ids"])), positions_3bs=pad_s(repeat(prompt["positions"], 1)),
                  valid_bs=pad_s(repeat(prompt["valid"])), loss_mask_bs=jnp.zeros((rows, cache_len), jnp.float32),
                  logp_bs=jnp.zeros((rows, cache_len), jnp.float32), forced_bs=jnp.zeros((rows, cache_len), bool),
                  mm_types_bs=pad_s(repeat(prompt["mm_types"])))
  state = RolloutState(cache=cache, record=record, write_b=repeat(length_p), counter_b=repeat(prompt["next_counter"]),
                       logits_bv=repeat(env.logits(params, last_hidden_pd)), done_b=jnp.zeros((rows,), bool),
                       answered_b=jnp.zeros((rows,), bool), last_clip_bg=jnp.zeros((rows, env.video_groups), bool),
                       num_generated_b=jnp.zeros((rows,), jnp.int32))
  return state, repeat(prompt["video_feats"])


# ---- one rumination step -------------------------------------------------------------------------------------------
def rumination_step(ctx: Context, state: RolloutState, step) -> tuple[RolloutState, StepRecord]:
  """Decode segment, in-graph parse, observation turns of the rows that called, record of the step."""
  seg = decode_segment(ctx, state, step)
  stop_b, called_b = segment_outcome(seg, state.done_b)
  action = ctx.env.parse_action(seg.step_tokens_bt, seg.step_len_b)
  turns = observation_turns(ctx, seg, action, called_b)
  obs = turns.obs
  actions = Actions(kind=jnp.where(called_b, action["kind"], 0), frame=action["frame"], box=action["box"],
                    frames=action["frames"], num_frames=action["num_frames"],
                    error=jnp.where(called_b, obs.error_b, 0), called=called_b)
  record = StepRecord(actions=actions, obs_pixels_bnp=obs.pixels_bnp, obs_grid_b3=obs.grid_b3,
                      obs_valid_b=called_b & obs.has_vision_b, region_feat_bd=obs.pooled_bd,
                      region_mask_b=called_b & obs.crop_ok_b, decoding_rows=(~state.done_b).sum(dtype=jnp.int32),
                      decode_iterations=seg.t, decode_token_rows=seg.token_rows,
                      observation_token_rows=turns.token_rows, observation_patches=turns.patches)
  return next_state(state, seg, stop_b, called_b, obs, turns.cache, turns.logits_bv), record


def segment_outcome(seg: Segment, was_done_b):
  """`(stop_b, called_b)`: why each row's segment ended (rows still running at the budget are cut: they fail),
  and which rows called a tool."""
  stop_b = jnp.where(seg.active_b, STOP_BUDGET, seg.stop_b)
  return stop_b, (stop_b == STOP_TOOL_CALL) & ~was_done_b


def next_state(state: RolloutState, seg: Segment, stop_b, called_b, obs: env_lib.Observation, cache,
               logits_bv) -> RolloutState:
  """The state after a step: the segment's tokens and the observation chunks (env.observe's outputs, zero for
  rows that did not call) recorded, counters advanced past them; rows that did not call are done."""
  return RolloutState(
      cache=cache, record=append_observation(seg.record, obs, called_b, seg.write_b),
      write_b=seg.write_b + obs.valid_bn.sum(-1).astype(jnp.int32),
      counter_b=jnp.where(called_b, obs.next_counter_b, seg.counter_b), logits_bv=logits_bv,
      done_b=state.done_b | (stop_b != STOP_TOOL_CALL),
      answered_b=state.answered_b | ((stop_b == STOP_ANSWER) & ~state.done_b),
      last_clip_bg=jnp.where(obs.clip_groups_bg.any(-1, keepdims=True), obs.clip_groups_bg, state.last_clip_bg),
      num_generated_b=state.num_generated_b + seg.step_len_b)


def append_observation(record: Record, obs: dict, called_b, write_b) -> Record:
  """The observation chunk (env.observe's ids, validity, types, positions) written at each calling row's slot."""
  write = lambda buf_bs, chunk_bn: jax.vmap(
      lambda buf, chunk, at: jax.lax.dynamic_update_slice_in_dim(buf, chunk, at, axis=0))(buf_bs, chunk_bn, write_b)
  write_if_called = lambda buf_bs, chunk_bn: jnp.where(called_b[:, None], write(buf_bs, chunk_bn), buf_bs)
  return record.replace(
      tokens_bs=write_if_called(record.tokens_bs, obs.ids_bn),
      valid_bs=write_if_called(record.valid_bs, obs.valid_bn),
      mm_types_bs=write_if_called(record.mm_types_bs, obs.mm_types_bn),
      positions_3bs=jnp.where(called_b[None, :, None], jax.vmap(write)(record.positions_3bs, obs.positions_3bn),
                              record.positions_3bs))


# ---- decode segment ------------------------------------------------------------------------------------------------
def decode_segment(ctx: Context, state: RolloutState, step) -> Segment:
  """Up to T tokens per row, each row until it closes a tool call or answers (`Segment.stop_b`).

  Rows only stop within a segment, so it runs as two loops: all B rows while more than k are running, then the (at
  most k) rows still running, gathered once (k = `Context.chunk_k`, as for the observation turns): finished rows
  stop costing compute. A lax.cond per token would copy the KV cache in and out of its branches instead; a third
  loop at B/2 rows measured no faster here (and costs one more copy of the decoder to compile). Not compacting
  (k = B): one loop over all rows.
  """
  B, k, T = ctx.rows, ctx.chunk_k, ctx.env.rollout.max_step_tokens
  seg = Segment(t=jnp.int32(0), cache=state.cache, record=state.record, logits_bv=state.logits_bv,
                write_b=state.write_b, counter_b=state.counter_b, active_b=~state.done_b,
                gstate_b=jnp.full((B,), OUTSIDE_CALL, jnp.int32), stop_b=jnp.full((B,), STOP_RUNNING, jnp.int32),
                step_tokens_bt=jnp.zeros((B, T), jnp.int32), step_len_b=jnp.zeros((B,), jnp.int32),
                token_rows=jnp.int32(0))
  decoding = lambda seg: (seg.t < T) & jnp.any(seg.active_b)
  if k == B:   # not compacting: all rows to the end
    return jax.lax.while_loop(decoding, lambda seg: decode_token(ctx, seg, step, None), seg)
  seg = jax.lax.while_loop(lambda seg: decoding(seg) & (seg.active_b.sum() > k),
                           lambda seg: decode_token(ctx, seg, step, None), seg)
  running_k = jnp.argsort(~seg.active_b, stable=True)[:k]
  return jax.lax.while_loop(decoding, lambda seg: decode_token(ctx, seg, step, running_k), seg)


def decode_token(ctx: Context, seg: Segment, step, sel_k) -> Segment:
  """One token for rows `sel_k` (`[k]` distinct row indices; None: all rows). Rows of the selection that are not
  active compute but change nothing."""
  env, params = ctx.env, ctx.params
  rows_k = jnp.arange(ctx.rows) if sel_k is None else sel_k
  take = lambda x_b: x_b if sel_k is None else jnp.take(x_b, sel_k, axis=0)
  active_k, gstate_k, slot_k, counter_k = take(seg.active_b), take(seg.gstate_b), take(seg.write_b), take(seg.counter_b)
  allowed_kv = env.allowed_tokens(gstate_k)
  tok_k, logp_k = jax.vmap(lambda key, logits_v, allowed_v: tuple(
      x[0] for x in ctx.sample(key, logits_v[None], allowed_v[None])))(
          row_keys(ctx.key, step, seg.t, rows_k + ctx.row_offset), take(seg.logits_bv), allowed_kv)
  next_gstate_k = env.advance_grammar(gstate_k, tok_k)
  ends_answer_k = (tok_k == env.im_end_id) & (gstate_k == OUTSIDE_CALL)
  stop_k = jnp.where(env.grammar_accepts(next_gstate_k), STOP_TOOL_CALL,
                     jnp.where(ends_answer_k, STOP_ANSWER, STOP_RUNNING))
  record = record_sampled(seg.record, rows_k, active_k, slot_k, counter_k, tok_k, logp_k,
                          forced_k=allowed_kv.sum(-1) == 1)
  positions_3k1 = jnp.broadcast_to(counter_k[None, :, None], (3, rows_k.shape[0], 1))
  hidden_k1d, cache = env.decode(params, env.embed(params, tok_k[:, None]), positions_3k1, active_k[:, None],
                                 seg.cache, slot_k, rows=sel_k)
  update = functools.partial(_update_active_rows, rows_k, active_k)
  step_len_k = take(seg.step_len_b)    # < T: a row's step length is at most t, and the loop runs while t < T
  return seg.replace(
      t=seg.t + 1, cache=cache, record=record, logits_bv=update(seg.logits_bv, env.logits(params, hidden_k1d[:, 0])),
      write_b=update(seg.write_b, slot_k + 1), counter_b=update(seg.counter_b, counter_k + 1),
      step_tokens_bt=_set_cells_where(seg.step_tokens_bt, rows_k, step_len_k, active_k, tok_k),
      step_len_b=update(seg.step_len_b, step_len_k + 1), gstate_b=update(seg.gstate_b, next_gstate_k),
      stop_b=update(seg.stop_b, stop_k), active_b=update(seg.active_b, stop_k == STOP_RUNNING),
      token_rows=seg.token_rows + rows_k.shape[0])


def record_sampled(record: Record, rows_k, active_k, slot_k, counter_k, tok_k, logp_k, forced_k) -> Record:
  """Active rows record the sampled token at their write slot; the others keep what was there."""
  at_slot = lambda buf_bs, value_k: _set_cells_where(buf_bs, rows_k, slot_k, active_k, value_k)
  return Record(tokens_bs=at_slot(record.tokens_bs, tok_k), valid_bs=at_slot(record.valid_bs, True),
                loss_mask_bs=at_slot(record.loss_mask_bs, 1.0), logp_bs=at_slot(record.logp_bs, logp_k),
                forced_bs=at_slot(record.forced_bs, forced_k), mm_types_bs=at_slot(record.mm_types_bs, 0),
                positions_3bs=jax.vmap(at_slot)(record.positions_3bs,
                                                jnp.broadcast_to(counter_k, (3, rows_k.shape[0]))))


def _set_cells_where(buf_bx, rows_k, cols_k, mask_k, value_k):
  """`buf[rows[i], cols[i]] = value[i]` where `mask[i]`."""
  return buf_bx.at[rows_k, cols_k].set(jnp.where(mask_k, value_k, buf_bx[rows_k, cols_k]))


def _update_active_rows(rows_k, active_k, old_b, new_k):
  """`old[rows[i]] = new[i]` where `active[i]` (whole rows: `new` is `[k, ...]`)."""
  active = active_k.reshape((-1,) + (1,) * (new_k.ndim - 1))
  return old_b.at[rows_k].set(jnp.where(active, new_k, old_b[rows_k]))


# ---- observation turns ---------------------------------------------------------------------------------------------
def observation_turns(ctx: Context, seg: Segment, action: dict, called_b) -> ObservationTurns:
  """The observation turns of the rows that called a tool: vision tower, prefill into the cache, next logits.

  They cost as much per row as a prompt prefill, and only the rows that called need them. So they run on the
  callers only, in chunks of k rows (`Context.chunk_k`): one compiled copy of the turn, run ceil(callers / k)
  times, i.e. zero times in a step where no row called. The last chunk's tail repeats its last caller (the same row
  computed twice writes the same values twice), so a chunk touches no other row. Observations that cannot have
  more than one frame group (`may_need_wide_observation`) fill at most `length_upto(1)` of the N slots (30 of 46
  at 112 px with K = 4, 78 of 270 at 224 px with K = 8), so when narrower they go in a second loop, prefilled that
  wide. Rows that did not call keep zero outputs (no valid token, no pixels, error 0).
  """
  env, B, k = ctx.env, ctx.rows, ctx.chunk_k
  obs_shape = jax.eval_shape(lambda: observe_rows(ctx, seg, action, seg.cache, None, called_b)[2])
  turns = ObservationTurns(cache=seg.cache, logits_bv=seg.logits_bv,
                           obs=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), obs_shape),
                           token_rows=jnp.int32(0), patches=jnp.int32(0))
  if k == B:   # no gather (rows sharded over devices: see RolloutConfig.compact_rows)
    def all_rows(_, turns):
      cache, logits_bv, obs = observe_rows(ctx, seg, action, turns.cache, None, called_b)
      return ObservationTurns(cache, logits_bv, obs, *_turn_work(env, turns, B, None))

    return jax.lax.fori_loop(0, called_b.any().astype(jnp.int32), all_rows, turns)   # a cond would copy the cache
  wide_b = called_b & may_need_wide_observation(action["kind"], action["num_frames"])
  if env.templates.length_upto(1) < env.obs_len:
    passes = [(wide_b, None), (called_b & ~wide_b, 1)]
  else:
    passes = [(called_b, None)]
  for callers_b, max_groups in passes:
    turns = _caller_chunks(ctx, seg, action, turns, callers_b, max_groups)
  return turns


def _caller_chunks(ctx: Context, seg: Segment, action: dict, turns: ObservationTurns, callers_b,
                   max_groups) -> ObservationTurns:
  """The observation turns of rows `callers_b`, k at a time (see `observation_turns`)."""
  k = ctx.chunk_k
  order_b = jnp.argsort(~callers_b, stable=True)
  num_callers = callers_b.sum()

  def chunk(j, turns):
    sel_k = order_b[jnp.minimum(j * k + jnp.arange(k), num_callers - 1)]
    cache, logits_kv, obs_k = observe_rows(ctx, seg, action, turns.cache, sel_k, jnp.ones((k,), bool), max_groups)
    by_row = [o.replace(positions_3bn=None) for o in (turns.obs, obs_k)]      # positions: rows on axis 1
    obs = jax.tree.map(lambda whole, part: whole.at[sel_k].set(part), *by_row)
    obs = obs.replace(positions_3bn=turns.obs.positions_3bn.at[:, sel_k].set(obs_k.positions_3bn))
    return ObservationTurns(cache, turns.logits_bv.at[sel_k].set(logits_kv), obs,
                            *_turn_work(ctx.env, turns, k, max_groups))

  return jax.lax.fori_loop(0, (num_callers + k - 1) // k, chunk, turns)


def _turn_work(env: env_lib.RuminationEnv, turns: ObservationTurns, rows: int, max_groups):
  """The work counts after one more observation turn of `rows` rows, `max_groups` wide (see env.observe)."""
  slots = env.obs_len if max_groups is None else env.templates.length_upto(max_groups)
  return turns.token_rows + rows * slots, turns.patches + rows * env.observation_patches(max_groups)


def observe_rows(ctx: Context, seg: Segment, action: dict, cache: KVCache, sel_k, called_k, max_groups=None):
  """Observation turn of rows `sel_k` (all rows when None): `(cache, logits [k, V], env.observe outputs)`.

  Executes the rows' actions, runs the vision tower, prefills the chunk into those rows of the cache at their
  write slots and returns the logits after the turn's last token (the rows' old logits where `called_k` is off).
  """
  env, params = ctx.env, ctx.params
  take = (lambda x: x) if sel_k is None else (lambda x: jnp.take(x, sel_k, axis=0))
  obs = env.observe(params, take(ctx.source_frames_b), jax.tree.map(take, action), called_k, take(seg.counter_b),
                    max_groups)
  n = obs.embeds_bnd.shape[1]
  hidden_knd, cache = env.decode(params, obs.embeds_bnd, obs.positions_3bn[:, :, :n], obs.valid_bn[:, :n], cache,
                                 take(seg.write_b), rows=sel_k)
  n_k = obs.valid_bn.sum(-1).astype(jnp.int32)
  last_hidden_kd = jnp.take_along_axis(hidden_knd, jnp.maximum(n_k - 1, 0)[:, None, None], axis=1)[:, 0]
  obs = obs.replace(embeds_bnd=None)        # the prefill's input; not kept past the turn
  return cache, jnp.where(called_k[:, None], env.logits(params, last_hidden_kd), take(seg.logits_bv)), obs


# ---- trajectory ----------------------------------------------------------------------------------------------------
def to_trajectory(state: RolloutState, steps: StepRecord, prompts_b: dict, video_feats_bgd,
                  prompt_work: tuple[int, int]) -> Trajectory:
  """The trajectory record from the final state and the per-step records (`[R, B, ...]` -> `[B, R, ...]`)."""
  by_row = lambda x: jnp.swapaxes(x, 0, 1)
  record = state.record
  work = RolloutWork(prompt_token_rows=jnp.int32(prompt_work[0]), prompt_patches=jnp.int32(prompt_work[1]),
                     decoding_rows_r=steps.decoding_rows, decode_iterations_r=steps.decode_iterations,
                     decode_token_rows_r=steps.decode_token_rows,
                     observation_token_rows_r=steps.observation_token_rows,
                     observation_patches_r=steps.observation_patches)
  return Trajectory(
      tokens=record.tokens_bs, positions=record.positions_3bs, valid=record.valid_bs, loss_mask=record.loss_mask_bs,
      forced=record.forced_bs, logp=record.logp_bs, mm_types=record.mm_types_bs, length=state.write_b,
      video_pixels=prompts_b["pixel_values_videos"], video_grid=prompts_b["video_grid_thw"].astype(jnp.int32),
      obs_pixels=by_row(steps.obs_pixels_bnp), obs_grid=by_row(steps.obs_grid_b3), obs_valid=by_row(steps.obs_valid_b),
      actions=jax.tree.map(by_row, steps.actions), answered=state.answered_b, video_feats=video_feats_bgd,
      region_feats=by_row(steps.region_feat_bd), region_mask=by_row(steps.region_mask_b),
      last_clip_groups=state.last_clip_bg, num_generated=state.num_generated_b, work=work)
