"""Multi-turn rumination rollout throughput: the jitted KV-kept rollout vs re-prefilling each turn vs HF PyTorch.

  python bench/rollout.py [--quick] [--out bench/results/rollout.json]

One random Qwen2.5-VL (JAX init, biased so that it really calls crop/clip tools: see `biased_params`), saved with
`save_pretrained` and reloaded by HF transformers, so all three implementations run the SAME weights (fp32):

  ours         `make_rollout_fn(env, num_generations=G, greedy=True)`: one compiled graph, the KV cache kept
               across the R turns (observation chunks are prefilled incrementally into the same cache).
  re-prefill   ours without the carried cache, as a Python loop over turns: per turn ONE jitted function that
               (a) re-embeds the whole conversation so far (text, the global video and every earlier observation
               through the vision tower), (b) prefills it into a FRESH cache of L + T slots (L = longest
               conversation rounded up to 16), (c) decodes greedily <= T tokens with the same grammar
               constraints, per-row stops and masking as the rollout, (d) parses the call, executes crop/clip
               in-graph (env.observe) and appends the observation turn to the token record. One compile per
               turn (L and the turn index are static); its compile time is first run minus timed run.
  HF           the PyTorch-recipe loop: per turn `model.generate` (greedy, KV cache within the turn,
               eos = `</tool_call>` / `<|im_end|>`, max_new_tokens = T) on the whole conversation so far (left
               padded batch of the still-running rows, re-prefilled, vision re-encoded), the same action grammar
               as a LogitsProcessor (numpy port of the automaton, so greedy tokens are comparable), then
               `parse_action_text` + `execute_host` on the host and the observation turn appended with its
               pixels (`pixel_values` + `image_grid_thw` for a crop, `pixel_values_videos` + `video_grid_thw`
               for a clip, `mm_token_type_ids` for M-RoPE).

Tokens = generated tokens (stop token included). Each implementation is timed `--repeats` times after a warm-up
(median reported, all runs kept in the JSON).

Workload. Random weights decide by chance whether a row calls a tool or answers at once; the biases of each
setting were chosen by a sweep (end_bias x qk_scale, seed 0) so that the rows really ruminate, as the bench is
about the multi-turn loop: >= 2 tool calls per row on average, half of the rows or more answering (quick: 2.0
calls per row, 12 of 16 rows answer; full: 2.5 calls per row, 8 of 16 answer). A workload without tool calls
stops the bench with an error. The JSON's `workload` has the calls-per-row histogram and, per implementation,
the decoder token-rows it computed (every slot of every row of every decoder call, padding included): their
ratio is the speed-up that equal per-token cost would give (`work_bound`), the ceiling of `ours_over_hf` where
both sides are compute bound.
"""
from __future__ import annotations

import argparse, dataclasses, functools, json, os, platform, sys, tempfile, time  # noqa: E401

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from videor4_jax import RolloutConfig, make_env, make_rollout_fn, save_pretrained  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig  # noqa: E402
from videor4_jax.processing import chat, grammar  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer, padded_vocab_size  # noqa: E402
from videor4_jax.rumination import observation, pixel_ops  # noqa: E402
from videor4_jax.rumination.sampling import sample_next  # noqa: E402
from videor4_jax.rumination.rollout import chunk_rows, may_need_wide_observation  # noqa: E402

SETTINGS = {
    "full": dict(text=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=16, num_attention_heads=8,
                           num_key_value_heads=2, mrope_section=(8, 12, 12)),
                 vision=dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, window_size=112,
                             fullatt_block_indexes=(3,)),
                 bias=dict(end_bias=7.7, clip_bias=0.1, qk_scale=5.0),
                 B=8, G=2, R=4, T=48, frames=8, src_hw=(224, 224), global_hw=(112, 112), obs_hw=(112, 112)),
    "quick": dict(text=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                            num_key_value_heads=2, mrope_section=(8, 12, 12)),
                  vision=dict(depth=2, hidden_size=128, intermediate_size=512, num_heads=2, window_size=56,
                              fullatt_block_indexes=(1,)),
                  bias=dict(end_bias=7.95, clip_bias=0.1, qk_scale=8.0),
                  B=8, G=2, R=4, T=40, frames=4, src_hw=(112, 112), global_hw=(56, 56), obs_hw=(56, 56)),
}
RUNNING, CALL, ANSWER, BUDGET = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------------ setup
def model_config(tok, s) -> ModelConfig:
  return ModelConfig(
      text=TextConfig(vocab_size=padded_vocab_size(tok), max_position_embeddings=4096, **s["text"]),
      vision=VisionConfig(out_hidden_size=s["text"]["hidden_size"], **s["vision"]),
      tie_word_embeddings=False, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
      vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id, bos_token_id=tok.pad_id,
      eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)


def biased_params(config, tok, seed=0, *, tool_bias=8.0, end_bias=7.5, clip_bias=0.0, qk_scale=1.0):
  """Random init + embedding dim 0 set to 1 and LM-head row 0 biased (as tests/rumination_fixtures.py), so that
  the model calls tools. Also: q/k kernels scaled by `qk_scale` (sharper, position-dependent attention: greedy
  rows and coordinates then differ, so some boxes are valid) and a small `clip_bias` (clips are mostly valid)."""
  params = vlm.init_params(config, jax.random.key(seed))
  p = params["params"]
  p["embed"]["embedding"] = p["embed"]["embedding"].at[:, 0].set(1.0)
  for n in ("q_proj", "k_proj"):
    p["decoder"]["layers"][n]["kernel"] = p["decoder"]["layers"][n]["kernel"] * qk_scale
  head = p["lm_head"]["kernel"].at[0, :].set(0.0)
  head = head.at[0, tok.tool_call_start_id].set(tool_bias).at[0, tok.im_end_id].set(end_bias)
  for text, bias in (("1", 3.0), ("2", 3.0), ("3", 3.0), ("4", 3.0), ("0", 3.0), (grammar.SEP, 6.0),
                     (grammar.CLOSE, 6.0), (grammar.BBOX_OPEN, 6.0), (grammar.CLIP_HEAD, clip_bias)):
    (i,) = tok.encode(text)
    head = head.at[0, i].set(bias)
  p["lm_head"]["kernel"] = head
  return params


def make_prompts(tok, n, frames, src_hw, global_hw, seed=0):
  """Right-padded prompts over random videos with a flat "sign" region (as tests/rumination_fixtures.py)."""
  rng = np.random.default_rng(seed)
  src = rng.integers(0, 256, size=(n, frames, *src_hw, 3), dtype=np.uint8)
  h, w = src_hw
  src[:, :, h // 6:h // 2, w // 4:3 * w // 4] = rng.integers(0, 256, size=(n, frames, 1, 1, 3), dtype=np.uint8)
  gv = np.stack([np.asarray(pixel_ops.to_patches(pixel_ops.resize_frames(jnp.asarray(s), global_hw))) for s in src])
  grid = np.array([frames // 2, global_hw[0] // 14, global_hw[1] // 14])
  rows = [chat.prompt_ids(tok, "What is written?", int(grid.prod()) // 4, chat.TINY_SYSTEM_PROMPT)[0]
          for _ in range(n)]
  ids = np.full((n, max(map(len, rows)) + 3), tok.pad_id, np.int32)
  mask = np.zeros(ids.shape, np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=gv.astype(np.float32),
              video_grid_thw=np.tile(grid, (n, 1)).astype(np.int32), source_frames=src)


# ------------------------------------------------------------------------------------------------ re-prefill
def _write_rows(buf, upd, off):
  return jax.vmap(lambda b, u, o: jax.lax.dynamic_update_slice_in_dim(b, u, o, axis=0))(buf, upd, off)


def make_reprefill(env):
  config, rc = env.config, env.rollout
  T, unit = rc.max_step_tokens, config.vision.spatial_merge_size ** 2
  enc = lambda params, px, g: jax.vmap(lambda p, gg: vlm.encode_vision(config, params, p, gg[None]))(px, g)

  @jax.jit
  def init(params, prompts):
    pf = env.prefill_inputs(params, prompts)          # only ids/positions/valid/types/counter are used (DCE)
    B, Tp = pf["ids"].shape
    S = rc.cache_len
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, S - Tp)])
    no = (env.clip_slots // 2) * (rc.obs_hw[0] // 14) * (rc.obs_hw[1] // 14)
    return dict(tokens=pad(pf["ids"]), positions=pad(pf["positions"]), valid=pad(pf["valid"]),
                mm_types=pad(pf["mm_types"]), loss_mask=jnp.zeros((B, S), bool),
                length=pf["valid"].sum(-1).astype(jnp.int32), counter=pf["next_counter"],
                done=jnp.zeros((B,), bool), answered=jnp.zeros((B,), bool), num_generated=jnp.zeros((B,), jnp.int32),
                obs_pixels=jnp.zeros((B, rc.max_steps, no, config.vision.patch_dim), jnp.float32),
                obs_grid=jnp.zeros((B, rc.max_steps, 3), jnp.int32))

  @functools.partial(jax.jit, static_argnames=("step", "L"))
  def turn(params, st, prompts, *, step, L):
    B = st["tokens"].shape[0]
    # (a) the whole conversation re-embedded: text + global video + every earlier observation (vision re-run)
    items = [(prompts["pixel_values_videos"], prompts["video_grid_thw"].astype(jnp.int32))]
    items += [(st["obs_pixels"][:, j], st["obs_grid"][:, j]) for j in range(step)]
    embs = [enc(params, px, g) for px, g in items]
    vvalid = [jnp.arange(e.shape[1])[None] < (g.prod(-1) // unit)[:, None] for e, (_, g) in zip(embs, items)]
    valid = st["valid"][:, :L]
    x = vlm.merge_row_vision(env.embed(params, st["tokens"][:, :L]), (st["mm_types"][:, :L] > 0) & valid,
                             jnp.concatenate(embs, 1), jnp.concatenate(vvalid, 1))
    # (b) full prefill into a fresh cache
    cache = env.init_cache(B, L + T)
    h, cache = env.decode(params, x, st["positions"][:, :, :L], valid, cache, jnp.zeros((B,), jnp.int32))
    last = jnp.take_along_axis(h, (st["length"] - 1)[:, None, None], axis=1)[:, 0]

    # (c) greedy grammar-constrained decode of one segment, per-row stops (as the rollout's decode_segment)
    def body(c):
      tok, _ = sample_next(jax.random.key(0), c["logits"], env.allowed_tokens(c["gstate"]), greedy=True)
      act = c["active"]
      g2 = env.advance_grammar(c["gstate"], tok)
      stop = jnp.where(env.grammar_accepts(g2), CALL,
                       jnp.where((tok == env.im_end_id) & (c["gstate"] == 0), ANSWER, RUNNING))
      pos = jnp.broadcast_to(c["counter"][None, :, None], (3, B, 1))
      hh, cache = env.decode(params, env.embed(params, tok[:, None]), pos, act[:, None], c["cache"], c["write"])
      adv = act.astype(jnp.int32)
      return dict(t=c["t"] + 1, cache=cache, logits=jnp.where(act[:, None], env.logits(params, hh[:, 0]), c["logits"]),
                  write=c["write"] + adv, counter=c["counter"] + adv, step_len=c["step_len"] + adv,
                  step_tokens=jnp.where(act[:, None], _write_rows(c["step_tokens"], tok[:, None], c["step_len"]),
                                        c["step_tokens"]),
                  gstate=jnp.where(act, g2, c["gstate"]), stop=jnp.where(act, stop, c["stop"]),
                  active=act & (stop == RUNNING))

    zeros = jnp.zeros((B,), jnp.int32)
    c = dict(t=jnp.int32(0), cache=cache, logits=env.logits(params, last), write=st["length"], counter=st["counter"],
             step_len=zeros, step_tokens=jnp.zeros((B, T), jnp.int32), gstate=zeros, stop=zeros, active=~st["done"])
    c = jax.lax.while_loop(lambda c: (c["t"] < T) & jnp.any(c["active"]), body, c)
    w0 = st["length"]
    tvalid = jnp.arange(T)[None] < c["step_len"][:, None]
    tpos = jnp.broadcast_to((st["counter"][:, None] + jnp.arange(T)[None])[None], (3, B, T))
    r = dict(st, tokens=_write_rows(st["tokens"], jnp.where(tvalid, c["step_tokens"], 0), w0),
             valid=_write_rows(st["valid"], tvalid, w0), mm_types=_write_rows(st["mm_types"], jnp.zeros_like(tvalid, jnp.int32), w0),
             loss_mask=_write_rows(st["loss_mask"], tvalid, w0),
             positions=jax.vmap(_write_rows, in_axes=(0, 0, None))(st["positions"], tpos, w0))
    # (d) parse + execute in-graph + append the observation turn (no cache: it is re-prefilled next turn)
    stop_b = jnp.where(c["active"], BUDGET, c["stop"])
    called = (stop_b == CALL) & ~st["done"]
    obs = env.observe(params, prompts["source_frames"], env.parse_action(c["step_tokens"], c["step_len"]), called,
                      c["counter"])
    w = c["write"]
    keep = lambda buf, upd: jnp.where(called[:, None], _write_rows(buf, upd, w), buf)
    r.update(tokens=keep(r["tokens"], obs["ids"]), valid=keep(r["valid"], obs["valid"]),
             mm_types=keep(r["mm_types"], obs["mm_types"]),
             positions=jnp.where(called[None, :, None],
                                 jax.vmap(_write_rows, in_axes=(0, 0, None))(r["positions"], obs["positions"], w),
                                 r["positions"]),
             obs_pixels=st["obs_pixels"].at[:, step].set(obs["pixels"]),
             obs_grid=st["obs_grid"].at[:, step].set(jnp.where(called[:, None], obs["grid"], 0)),
             length=w + obs["valid"].sum(-1).astype(jnp.int32),
             counter=jnp.where(called, obs["next_counter"], c["counter"]),
             answered=st["answered"] | ((stop_b == ANSWER) & ~st["done"]), done=st["done"] | (stop_b != CALL),
             num_generated=st["num_generated"] + c["step_len"])
    return r

  def run(params, prompts, widths=None):
    """Runs the loop; appends each turn's re-prefilled width L to `widths` (for the work count)."""
    st = init(params, prompts)
    for step in range(rc.max_steps):
      done, length = jax.device_get((st["done"], st["length"]))
      if done.all():
        break
      L = int(min(-(-length.max() // 16) * 16, rc.cache_len))
      if widths is not None:
        widths.append(L)
      st = turn(params, st, prompts, step=step, L=L)
    return jax.block_until_ready(st)
  return run


# ------------------------------------------------------------------------------------------------ HF PyTorch
def hf_rollout(model, tok, env, prompts, work=None):
  import torch
  from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
  rc, auto, V = env.rollout, env.automaton, env.free_mask.shape[0]
  table = np.zeros((auto.edge_tok.shape[0], V), bool)          # allowed tokens per automaton state
  for s in range(table.shape[0]):
    table[s, auto.edge_tok[s][auto.edge_tok[s] >= 0]] = True
  table[grammar.FREE] = env.free_mask
  table[~table.any(1)] = True                                   # no edge (accept): unconstrained, as sample_next

  def gstep(s, t):
    if s == grammar.DEAD or s == auto.accept:
      return s
    if s == grammar.FREE:
      return grammar.START if t == auto.tool_call_start_id else grammar.FREE
    hit = auto.edge_tok[s] == t
    return int(auto.edge_next[s][hit.argmax()]) if hit.any() else grammar.DEAD

  class Grammar(LogitsProcessor):
    def __init__(self, n, start):
      self.state, self.start = [grammar.FREE] * n, start

    def __call__(self, input_ids, scores):
      if input_ids.shape[1] > self.start:
        self.state = [gstep(s, int(t)) for s, t in zip(self.state, input_ids[:, -1].tolist())]
      allowed = torch.from_numpy(np.stack([table[s] if s >= 0 else np.ones(V, bool) for s in self.state]))
      return scores.masked_fill(~allowed, -float("inf"))

  stops = {tok.tool_call_end_id, tok.im_end_id}
  gc = GenerationConfig(do_sample=False, max_new_tokens=rc.max_step_tokens, eos_token_id=sorted(stops),
                        pad_token_id=tok.pad_id, bos_token_id=tok.pad_id)
  gh, gw = rc.obs_hw[0] // 14, rc.obs_hw[1] // 14
  n = prompts["input_ids"].shape[0]
  convs = [dict(ids=prompts["input_ids"][i][prompts["attention_mask"][i] > 0].tolist(), gen=[], done=False,
                items=[("video", prompts["pixel_values_videos"][i], prompts["video_grid_thw"][i], 1.0)])
           for i in range(n)]
  for _ in range(rc.max_steps):
    active = [i for i in range(n) if not convs[i]["done"]]
    if not active:
      break
    L = max(len(convs[i]["ids"]) for i in active)
    ids = np.full((len(active), L), tok.pad_id, np.int64)
    mask = np.zeros_like(ids)
    for j, i in enumerate(active):
      ids[j, L - len(convs[i]["ids"]):], mask[j, L - len(convs[i]["ids"]):] = convs[i]["ids"], 1
    types = np.where(ids == tok.image_pad_id, 1, np.where(ids == tok.video_pad_id, 2, 0))
    kw = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              mm_token_type_ids=torch.from_numpy(types))
    for kind, px, grid in (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos",
                                                                         "video_grid_thw")):
      its = [it for i in active for it in convs[i]["items"] if it[0] == kind]
      if its:
        kw[px] = torch.from_numpy(np.concatenate([it[1] for it in its]).astype(np.float32))
        kw[grid] = torch.from_numpy(np.stack([it[2] for it in its]).astype(np.int64))
        if kind == "video":
          kw["second_per_grid_ts"] = torch.tensor([it[3] for it in its], dtype=torch.float32)
    model.model.rope_deltas = None
    out = model.generate(**kw, generation_config=gc, logits_processor=LogitsProcessorList([Grammar(len(active), L)]))
    if work is not None:          # decoder token-rows: the prefill of L slots, then one slot per later new token
      work.append(len(active) * (out.shape[1] - 1))
    for j, i in enumerate(active):
      c, toks = convs[i], out[j, L:].tolist()
      end = next((k + 1 for k, t in enumerate(toks) if t in stops), None)
      toks = toks[:end] if end else toks[:rc.max_step_tokens]
      c["ids"] += toks
      c["gen"] += toks
      if not end or toks[-1] == tok.im_end_id:          # answered or cut at the budget: the row stops
        c["done"] = True
        continue
      action, err = grammar.parse_action_text(tok.decode(toks), num_frames=env.num_frames,
                                              max_frames=rc.max_clip_frames)
      modality, groups = chat.IMAGE, 0
      if action is not None:
        frames, groups, err, modality = observation.execute_host(
            prompts["source_frames"][i], action, obs_hw=rc.obs_hw, max_clip_frames=rc.max_clip_frames,
            crop_margin=rc.crop_margin, crop_min_px=rc.crop_min_px, num_frames=env.num_frames)
      if int(err) == 0:
        patches = np.asarray(pixel_ops.to_patches_host(jnp.asarray(frames[:2 * groups])))
        c["items"].append(("image" if modality == chat.IMAGE else "video", patches, np.array([groups, gh, gw]),
                           rc.clip_seconds_per_group))
      c["ids"] += chat.observation_ids(tok, int(err), groups * gh * gw // 4, modality)[0]
  return [c["gen"] for c in convs]


# ------------------------------------------------------------------------------------------------ workload
def step_lengths(loss_mask_bs):
  """Tokens each row generated per step: the j-th run of generated slots of a row is its step j."""
  out = []
  for row in np.asarray(loss_mask_bs) > 0:
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    out.append((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist())
  return out


def decode_iterations(lengths, R):
  """Iterations of each step's decode loop (it runs until the longest row of the step stops)."""
  return [max([r[j] for r in lengths if len(r) > j], default=0) for j in range(R)]


def ours_work(traj, prompts, env, G):
  """Decoder token-rows of the KV-kept rollout (as rollout.py runs it): the prompt prefill once per prompt; per
  decode iteration B rows while more than k rows are running, then k rows; per step ceil(callers / k) chunks of
  k rows x N observation slots, where callers whose outcome has one frame group at most (not a clip of > 2
  frames) get chunks `templates.length_upto(1)` slots wide (k = rollout.chunk_rows)."""
  P, Tp = prompts["input_ids"].shape
  B, R, N = P * G, env.rollout.max_steps, env.obs_len
  k = chunk_rows(B, env.rollout.compact_rows)
  called = np.asarray(traj.actions.called)
  wide = called & may_need_wide_observation(np.asarray(traj.actions.kind), np.asarray(traj.actions.num_frames))
  n1 = env.templates.length_upto(1)
  if n1 == N or k == B:
    wide = called
  obs = sum(-(-int(w) // k) * k * N + -(-int(c - w) // k) * k * n1 for w, c in zip(wide.sum(0), called.sum(0)))
  lengths = step_lengths(traj.loss_mask)
  decode = 0
  for j, n in enumerate(decode_iterations(lengths, R)):
    running = [sum(len(r) > j and r[j] > t for r in lengths) for t in range(n)]
    decode += sum(B if a > k else k for a in running)
  return P * Tp + decode + obs


# ------------------------------------------------------------------------------------------------ main
def timed(fn, repeats):
  """(last result, median seconds, every run's seconds) of `repeats` calls of fn."""
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    runs.append(round(time.perf_counter() - t0, 4))
  return out, float(np.median(runs)), runs


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="~15M-parameter model, smaller frames, T=40 (about a minute)")
  ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
  ap.add_argument("--out", default=None, help="result JSON (default bench/results/rollout[_quick].json)")
  args = ap.parse_args()
  import torch
  import transformers
  from transformers import Qwen2_5_VLForConditionalGeneration
  transformers.logging.set_verbosity_error()
  s = SETTINGS["quick" if args.quick else "full"]
  B, G, R, T = s["B"], s["G"], s["R"], s["T"]
  tok = Tokenizer.tiny()
  config = model_config(tok, s)
  params = biased_params(config, tok, **s["bias"])
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  prompts = make_prompts(tok, B, s["frames"], s["src_hw"], s["global_hw"])
  probe = make_env(config, RolloutConfig(max_steps=R, max_step_tokens=T, obs_hw=s["obs_hw"]), tok, s["frames"])
  S = -(-(prompts["input_ids"].shape[1] + R * (T + probe.obs_len)) // 16) * 16
  rc = RolloutConfig(max_steps=R, max_step_tokens=T, cache_len=S, obs_hw=s["obs_hw"], max_clip_frames=4,
                     crop_min_px=4)
  env = make_env(config, rc, tok, s["frames"])
  rep = {k: np.repeat(v, G, axis=0) for k, v in prompts.items()}     # the rollout's row order (b*G + g)
  key = jax.random.key(0)
  res = {"config": dict(params=n_params, text=s["text"], vision=s["vision"], bias=s["bias"], B=B, G=G, rows=B * G, R=R,
                        max_step_tokens=T, cache_len=S, prompt_len=int(prompts["attention_mask"].sum(1).max()),
                        obs_len=env.obs_len, frames=s["frames"], global_hw=s["global_hw"], obs_hw=s["obs_hw"],
                        greedy=True, dtype="float32", quick=args.quick)}
  print(f"model: {n_params / 1e6:.1f}M params; rows {B}x{G}, R={R}, T={T}, cache {S}", flush=True)

  # ours, KV cache kept across turns
  fn = make_rollout_fn(env, num_generations=G, greedy=True)
  t0 = time.perf_counter()
  compiled = fn.lower(params, prompts, key).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(params, prompts, key))               # warm-up
  traj, dt, runs = timed(lambda: jax.block_until_ready(compiled(params, prompts, key)), args.repeats)
  ntok = int(traj.num_generated.sum())
  ours_gen = [np.asarray(traj.tokens[b])[np.asarray(traj.loss_mask[b]) > 0].tolist() for b in range(B * G)]
  called, err = np.asarray(traj.actions.called), np.asarray(traj.actions.error)
  kind = np.asarray(traj.actions.kind)
  res["ours_kv"] = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1),
                        compile_s=round(compile_s, 2), calls=int(called.sum()),
                        crops_ok=int((called & (err == 0) & (kind == 1)).sum()),
                        clips_ok=int((called & (err == 0) & (kind == 2)).sum()),
                        errors=int((called & (err != 0)).sum()), answered=int(np.asarray(traj.answered).sum()),
                        mean_final_len=float(np.asarray(traj.length).mean()))
  print("ours (KV kept):", res["ours_kv"], flush=True)
  per_row = called.sum(1)
  if not per_row.any():
    sys.exit(f"the workload has no tool call (all {B * G} rows answered at once): it does not measure the multi-turn "
             f"loop; re-tune SETTINGS[...]['bias'] (end_bias lower / qk_scale) with this bench")
  lengths = step_lengths(traj.loss_mask)
  res["workload"] = dict(calls_per_row=round(float(per_row.mean()), 2),
                         rows_by_calls=np.bincount(per_row, minlength=R + 1).tolist(),
                         answered=int(np.asarray(traj.answered).sum()),
                         decode_iterations_per_step=decode_iterations(lengths, R),
                         active_rows_per_step=[sum(len(r) > j for r in lengths) for j in range(R)],
                         token_rows=dict(ours_kv=ours_work(traj, prompts, env, G)))

  # ours, re-prefill each turn
  run = make_reprefill(env)
  rep_j = jax.tree.map(jnp.asarray, rep)
  t0 = time.perf_counter()
  run(params, rep_j)                                                  # compiles one graph per turn
  first = time.perf_counter() - t0
  st, dt, runs = timed(lambda: run(params, rep_j), args.repeats)
  ntok = int(st["num_generated"].sum())
  rp_gen = [np.asarray(st["tokens"][b])[np.asarray(st["loss_mask"][b])].tolist() for b in range(B * G)]
  res["ours_reprefill"] = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1),
                               compile_s=round(first - dt, 2), first_run_s=round(first, 2))
  print("ours (re-prefill):", res["ours_reprefill"], flush=True)
  widths = []
  run(params, rep_j, widths)
  res["workload"]["token_rows"]["ours_reprefill"] = int(B * G * sum(
      w + n for w, n in zip(widths, decode_iterations(step_lengths(st["loss_mask"]), R))))

  # HF PyTorch
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(d, config, params)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
  warm = {k: v[:2] for k, v in rep.items()}
  hf_rollout(model, tok, make_env(config, dataclasses.replace(rc, max_steps=1, max_step_tokens=4), tok, s["frames"]), warm)
  hf_gen, dt, runs = timed(lambda: hf_rollout(model, tok, env, rep), args.repeats)
  ntok = sum(map(len, hf_gen))
  res["hf"] = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1), batched=True,
                   attn_implementation=model.config._attn_implementation, torch_threads=torch.get_num_threads(),
                   note="rows batched with left padding; finished rows leave the batch between turns")
  print("HF:", res["hf"], flush=True)
  work = []
  hf_rollout(model, tok, env, rep, work)
  tr = res["workload"]["token_rows"]
  tr["hf"] = int(sum(work))
  res["workload"]["work_bound"] = dict(hf_over_ours=round(tr["hf"] / tr["ours_kv"], 2),
                                       reprefill_over_ours=round(tr["ours_reprefill"] / tr["ours_kv"], 2))
  print("workload:", res["workload"], flush=True)

  same = lambda a, b: float(np.mean([x == y for x, y in zip(a, b)]))
  res["identical_rows"] = dict(ours_vs_hf=same(ours_gen, hf_gen), ours_vs_reprefill=same(ours_gen, rp_gen),
                               reprefill_vs_hf=same(rp_gen, hf_gen))
  tps = lambda k: res[k]["tokens_per_s"]
  res["ratios"] = dict(ours_over_hf=round(tps("ours_kv") / tps("hf"), 2),
                       kv_over_reprefill=round(tps("ours_kv") / tps("ours_reprefill"), 2),
                       reprefill_over_hf=round(tps("ours_reprefill") / tps("hf"), 2))
  res["machine"] = dict(host=platform.node(), cpus=os.cpu_count(), loadavg=[round(x, 2) for x in os.getloadavg()],
                        jax=jax.__version__, jax_backend=jax.default_backend(), torch=torch.__version__,
                        transformers=transformers.__version__, python=platform.python_version(),
                        note=f"median of {args.repeats} timed runs after warm-up; the machine may be shared (see loadavg)")
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "rollout_quick.json" if args.quick else "rollout.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=2)
  print(json.dumps(res["identical_rows"]))
  wb = res["workload"]["work_bound"]
  print(f"rollout: ours/HF tokens/s = {res['ratios']['ours_over_hf']:.2f}x (decoder work HF/ours "
        f"{wb['hf_over_ours']:.2f}x); KV-kept/re-prefill = {res['ratios']['kv_over_reprefill']:.2f}x (work "
        f"{wb['reprefill_over_ours']:.2f}x); {res['workload']['calls_per_row']} calls per row")


if __name__ == "__main__":
  main()
