"""Multi-turn rumination rollout throughput: the jitted KV-kept rollout vs re-prefilling each turn vs HF PyTorch.

  python bench/rollout.py [--quick] [--out bench/results/rollout.json]

One random Qwen2.5-VL (JAX init, biased so that it really calls crop/clip tools: see `biased_params`), saved with
`save_pretrained` and reloaded by HF transformers, so all three implementations run the SAME weights (fp32):

  ours         `make_rollout_fn(env, num_generations=G, greedy=True)`: one compiled graph, the KV cache kept
               across the R turns (observation chunks are prefilled incrementally into the same cache).
  re-prefill   ours without the carried cache, as a Python loop over turns: per turn ONE jitted function that
               (a) re-embeds the whole conversation so far (text, the global video and every earlier observation
               through the vision tower), (b) prefills it into a FRESH cache of L + T slots (L = longest
               conversation rounded up to 16), (c) runs the rollout's own decode segment on it
               (`rollout.decode_segment`: same grammar constraints, per-row stops, masking and row compaction),
               (d) parses the call, executes crop/clip in-graph (env.observe) and appends the observation turn to
               the token record (`rollout.next_state`). One compile per turn (L and the turn index are static);
               its compile time is first run minus timed run.
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
the decoder token-rows it computed (every slot of every row of every decoder call, padding included; ours as the
rollout reports them, `Trajectory.work`): their ratio is the speed-up that equal per-token cost would give
(`work_bound`), the ceiling of `ours_over_hf` where both sides are compute bound.
"""
from __future__ import annotations

import argparse, dataclasses, functools, json, os, platform, sys, tempfile, time  # noqa: E401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rumination_fixtures as fixtures  # noqa: E402
from rumination_fixtures import biased_params  # noqa: E402,F401  (the other benches read it from here)
from videor4_jax import RolloutConfig, make_env, make_rollout_fn, save_pretrained  # noqa: E402
from videor4_jax.model import vlm  # noqa: E402
from videor4_jax.processing import chat, grammar, image  # noqa: E402
from videor4_jax.processing.tokenizer import Tokenizer  # noqa: E402
from videor4_jax.rumination import observation, pixel_ops, rollout as rollout_lib  # noqa: E402
from videor4_jax.rumination.rollout_state import Context  # noqa: E402
from videor4_jax.rumination.sampling import sample_next  # noqa: E402

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


# ------------------------------------------------------------------------------------------------ setup
def model_config(tok, s):
  return fixtures.model_config(tok, s["text"], s["vision"])


def make_prompts(tok, config, s, n, seed=0):
  """`n` prompts of setting `s` (tests/rumination_fixtures.py), the sign region a share of the frame."""
  h, w = s["src_hw"]
  return fixtures.make_prompts(tok, config, n, seed, frames=s["frames"], src_hw=s["src_hw"],
                               global_hw=s["global_hw"], sign_box=(h // 6, h // 2, w // 4, 3 * w // 4))


# ------------------------------------------------------------------------------------------------ re-prefill
def make_reprefill(env):
  """The rollout without its carried cache. Per turn one jitted function (static turn index and width L) that
  re-embeds and re-prefills the whole conversation into a fresh cache of L + T slots, then runs the rollout's own
  decode segment and observation (env.observe, no prefill) on it. `run(params, prompts)` returns the final state
  (rollout_state.RolloutState without cache and logits) and the decoder token-rows it computed."""
  config, rc = env.config, env.rollout
  T, unit = rc.max_step_tokens, config.vision.spatial_merge_size ** 2
  encode = lambda params, px, g: jax.vmap(lambda p, gg: vlm.encode_vision(config, params, p, gg[None]))(px, g)
  greedy = functools.partial(sample_next, greedy=True)

  @jax.jit
  def init(params, prompts):
    state, _ = rollout_lib.prefill_prompts(env, params, prompts, 1)     # its prefill is unused (dead code)
    B = prompts["input_ids"].shape[0]
    return dict(state=state.replace(cache=None, logits_bv=None), token_rows=jnp.int32(0),
                obs_pixels=jnp.zeros((B, rc.max_steps, env.observation_patches(), config.vision.patch_dim)),
                obs_grid=jnp.zeros((B, rc.max_steps, 3), jnp.int32))

  @functools.partial(jax.jit, static_argnames=("step", "L"))
  def turn(params, st, prompts, *, step, L):
    state, record = st["state"], st["state"].record
    B = record.tokens_bs.shape[0]
    # the whole conversation re-embedded: text + global video + every earlier observation (vision re-run)
    items = [(prompts["pixel_values_videos"], prompts["video_grid_thw"].astype(jnp.int32))]
    items += [(st["obs_pixels"][:, j], st["obs_grid"][:, j]) for j in range(step)]
    embs = [encode(params, px, g) for px, g in items]
    vvalid = [jnp.arange(e.shape[1])[None] < (g.prod(-1) // unit)[:, None] for e, (_, g) in zip(embs, items)]
    valid = record.valid_bs[:, :L]
    x = vlm.merge_row_vision(env.embed(params, record.tokens_bs[:, :L]), (record.mm_types_bs[:, :L] > 0) & valid,
                             jnp.concatenate(embs, 1), jnp.concatenate(vvalid, 1))
    h, cache = env.decode(params, x, record.positions_3bs[:, :, :L], valid, env.init_cache(B, L + T),
                          jnp.zeros((B,), jnp.int32))
    last = jnp.take_along_axis(h, (state.write_b - 1)[:, None, None], axis=1)[:, 0]
    ctx = Context(env, params, jax.random.key(0), greedy, B, rollout_lib.chunk_rows(B, rc.compact_rows),
                  prompts["source_frames"])
    seg = rollout_lib.decode_segment(ctx, state.replace(cache=cache, logits_bv=env.logits(params, last)), step)
    stop_b, called_b = rollout_lib.segment_outcome(seg, state.done_b)
    obs = env.observe(params, prompts["source_frames"], env.parse_action(seg.step_tokens_bt, seg.step_len_b),
                      called_b, seg.counter_b)
    state = rollout_lib.next_state(state, seg, stop_b, called_b, obs, cache=None, logits_bv=None)
    return dict(state=state, token_rows=st["token_rows"] + B * L + seg.token_rows,
                obs_pixels=st["obs_pixels"].at[:, step].set(obs.pixels_bnp),
                obs_grid=st["obs_grid"].at[:, step].set(jnp.where(called_b[:, None], obs.grid_b3, 0)))

  def run(params, prompts):
    st = init(params, prompts)
    for step in range(rc.max_steps):
      done, length = jax.device_get((st["state"].done_b, st["state"].write_b))
      if done.all():
        break
      L = int(min(-(-length.max() // 16) * 16, rc.cache_len))   # the longest conversation, rounded up to 16
      st = turn(params, st, prompts, step=step, L=L)
    return jax.block_until_ready((st["state"], st["token_rows"]))
  return run


# ------------------------------------------------------------------------------------------------ HF PyTorch
def grammar_processor(env, tok, num_rows: int, prompt_len: int):
  """A transformers LogitsProcessor that applies the rollout's action automaton (processing/grammar.py) row by
  row, as the rollout's constrained decoding does (free text outside a call, the automaton's edges inside)."""
  import torch
  from transformers import LogitsProcessor
  auto, V = env.automaton, env.free_mask.shape[0]
  table = np.zeros((auto.edge_tok.shape[0], V), bool)          # allowed tokens per automaton state
  for s in range(table.shape[0]):
    table[s, auto.edge_tok[s][auto.edge_tok[s] >= 0]] = True
  table[grammar.OUTSIDE_CALL] = env.free_mask
  table[~table.any(1)] = True                                   # no edge (accept): unconstrained, as sample_next

  def gstep(s, t):
    if s == grammar.DEAD or s == auto.accept:
      return s
    if s == grammar.OUTSIDE_CALL:
      return grammar.CALL_START if t == auto.tool_call_start_id else grammar.OUTSIDE_CALL
    hit = auto.edge_tok[s] == t
    return int(auto.edge_next[s][hit.argmax()]) if hit.any() else grammar.DEAD

  class Grammar(LogitsProcessor):
    def __init__(self):
      self.state = [grammar.OUTSIDE_CALL] * num_rows

    def __call__(self, input_ids, scores):
      if input_ids.shape[1] > prompt_len:
        self.state = [gstep(s, int(t)) for s, t in zip(self.state, input_ids[:, -1].tolist())]
      allowed = torch.from_numpy(np.stack([table[s] if s >= 0 else np.ones(V, bool) for s in self.state]))
      return scores.masked_fill(~allowed, -float("inf"))

  return Grammar()


def hf_batch(convs, active, tok):
  """HF generate's inputs for the active conversations: left-padded ids and every vision item so far."""
  import torch
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
  return kw, L


def hf_observe(env, tok, conv, toks, source_frames):
  """Executes the step's call on the host (observation.execute_host, the SFT data's executor) and appends the
  observation turn (and its vision item) to the conversation."""
  rc = env.rollout
  gh, gw = rc.obs_hw[0] // image.PATCH, rc.obs_hw[1] // image.PATCH
  action, err = grammar.parse_action_text(tok.decode(toks), num_frames=env.num_frames,
                                          max_frames=rc.max_clip_frames)
  modality, groups = chat.IMAGE, 0
  if action is not None:
    frames, groups, err, modality = observation.execute_host(
        source_frames, action, obs_hw=rc.obs_hw, max_clip_frames=rc.max_clip_frames,
        crop_margin=rc.crop_margin, crop_min_px=rc.crop_min_px, num_frames=env.num_frames)
  if int(err) == 0:
    patches = np.asarray(pixel_ops.to_patches_host(jnp.asarray(frames[:image.TEMPORAL * groups])))
    conv["items"].append(("image" if modality == chat.IMAGE else "video", patches, np.array([groups, gh, gw]),
                          rc.clip_seconds_per_group))
  conv["ids"] += chat.observation_ids(tok, int(err), groups * gh * gw // image.MERGE ** 2, modality)[0]


def hf_rollout(model, tok, env, prompts, work=None):
  """The rumination loop with HF generate: one generate call per step over the still-running conversations,
  each re-prefilled from its first token (HF keeps no cache across the observation turns)."""
  from transformers import GenerationConfig, LogitsProcessorList
  rc = env.rollout
  stops = {tok.tool_call_end_id, tok.im_end_id}
  gc = GenerationConfig(do_sample=False, max_new_tokens=rc.max_step_tokens, eos_token_id=sorted(stops),
                        pad_token_id=tok.pad_id, bos_token_id=tok.pad_id)
  n = prompts["input_ids"].shape[0]
  convs = [dict(ids=prompts["input_ids"][i][prompts["attention_mask"][i] > 0].tolist(), gen=[], done=False,
                items=[("video", prompts["pixel_values_videos"][i], prompts["video_grid_thw"][i], 1.0)])
           for i in range(n)]
  for _ in range(rc.max_steps):
    active = [i for i in range(n) if not convs[i]["done"]]
    if not active:
      break
    kw, L = hf_batch(convs, active, tok)
    model.model.rope_deltas = None
    processors = LogitsProcessorList([grammar_processor(env, tok, len(active), L)])
    out = model.generate(**kw, generation_config=gc, logits_processor=processors)
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
      hf_observe(env, tok, c, toks, prompts["source_frames"][i])
  return [c["gen"] for c in convs]


# ------------------------------------------------------------------------------------------------ main
def timed(fn, repeats):
  """(last result, median seconds, every run's seconds) of `repeats` calls of fn."""
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    runs.append(round(time.perf_counter() - t0, 4))
  return out, float(np.median(runs)), runs


def setup(quick):
  """The bench's model, prompts and env for setting quick / full, and the results' `config` entry."""
  s = SETTINGS["quick" if quick else "full"]
  B, G, R, T = s["B"], s["G"], s["R"], s["T"]
  tok = Tokenizer.tiny()
  config = model_config(tok, s)
  params = biased_params(config, tok, **s["bias"])
  prompts = make_prompts(tok, config, s, B)
  probe = make_env(config, RolloutConfig(max_steps=R, max_step_tokens=T, obs_hw=s["obs_hw"]), tok, s["frames"])
  S = -(-(prompts["input_ids"].shape[1] + R * (T + probe.obs_len)) // 16) * 16
  rc = RolloutConfig(max_steps=R, max_step_tokens=T, cache_len=S, obs_hw=s["obs_hw"], max_clip_frames=4,
                     crop_min_px=4)
  env = make_env(config, rc, tok, s["frames"])
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  cfg = dict(params=n_params, text=s["text"], vision=s["vision"], bias=s["bias"], B=B, G=G, rows=B * G, R=R,
             max_step_tokens=T, cache_len=S, prompt_len=int(prompts["attention_mask"].sum(1).max()),
             obs_len=env.obs_len, frames=s["frames"], global_hw=s["global_hw"], obs_hw=s["obs_hw"], greedy=True,
             dtype="float32", quick=quick)
  print(f"model: {n_params / 1e6:.1f}M params; rows {B}x{G}, R={R}, T={T}, cache {S}", flush=True)
  return tok, config, params, prompts, env, cfg


def bench_ours(env, params, prompts, G, repeats):
  """The jitted rollout: timing, tool-call stats, the workload (from the work the rollout reports)."""
  key = jax.random.key(0)
  fn = make_rollout_fn(env, num_generations=G, greedy=True)
  t0 = time.perf_counter()
  compiled = fn.lower(params, prompts, key).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(params, prompts, key))               # warm-up
  traj, dt, runs = timed(lambda: jax.block_until_ready(compiled(params, prompts, key)), repeats)
  ntok = int(traj.num_generated.sum())
  called, err = np.asarray(traj.actions.called), np.asarray(traj.actions.error)
  kind = np.asarray(traj.actions.kind)
  res = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1),
             compile_s=round(compile_s, 2), calls=int(called.sum()),
             crops_ok=int((called & (err == 0) & (kind == 1)).sum()),
             clips_ok=int((called & (err == 0) & (kind == 2)).sum()),
             errors=int((called & (err != 0)).sum()), answered=int(np.asarray(traj.answered).sum()),
             mean_final_len=float(np.asarray(traj.length).mean()))
  print("ours (KV kept):", res, flush=True)
  per_row = called.sum(1)
  if not per_row.any():
    sys.exit(f"the workload has no tool call (all {called.shape[0]} rows answered at once): it does not measure the "
             f"multi-turn loop; re-tune SETTINGS[...]['bias'] (end_bias lower / qk_scale) with this bench")
  work = jax.device_get(traj.work)
  workload = dict(calls_per_row=round(float(per_row.mean()), 2),
                  rows_by_calls=np.bincount(per_row, minlength=env.rollout.max_steps + 1).tolist(),
                  answered=int(np.asarray(traj.answered).sum()),
                  decode_iterations_per_step=work.decode_iterations_r.tolist(),
                  active_rows_per_step=work.decoding_rows_r.tolist(),
                  vision_patches=dict(ours_kv=int(work.prompt_patches + work.observation_patches_r.sum())),
                  token_rows=dict(ours_kv=int(work.decoder_token_rows())))
  return res, workload, generated_rows(traj.tokens, traj.loss_mask)


def bench_reprefill(env, params, rep, repeats):
  run = make_reprefill(env)
  rep_j = jax.tree.map(jnp.asarray, rep)
  t0 = time.perf_counter()
  run(params, rep_j)                                                  # compiles one graph per turn
  first = time.perf_counter() - t0
  (state, token_rows), dt, runs = timed(lambda: run(params, rep_j), repeats)
  ntok = int(state.num_generated_b.sum())
  res = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1),
             compile_s=round(first - dt, 2), first_run_s=round(first, 2))
  print("ours (re-prefill):", res, flush=True)
  return res, int(token_rows), generated_rows(state.record.tokens_bs, state.record.loss_mask_bs)


def bench_hf(config, params, tok, env, rep, frames, repeats):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(d, config, params)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
  warm = {k: v[:2] for k, v in rep.items()}
  hf_rollout(model, tok, make_env(config, dataclasses.replace(env.rollout, max_steps=1, max_step_tokens=4), tok,
                                  frames), warm)
  hf_gen, dt, runs = timed(lambda: hf_rollout(model, tok, env, rep), repeats)
  ntok = sum(map(len, hf_gen))
  res = dict(tokens=ntok, seconds=round(dt, 3), runs_s=runs, tokens_per_s=round(ntok / dt, 1), batched=True,
             attn_implementation=model.config._attn_implementation, torch_threads=torch.get_num_threads(),
             note="rows batched with left padding; finished rows leave the batch between turns")
  print("HF:", res, flush=True)
  work = []
  hf_rollout(model, tok, env, rep, work)
  return res, int(sum(work)), hf_gen


def generated_rows(tokens_bs, loss_mask_bs):
  """Each row's generated tokens (loss mask on)."""
  tokens_bs, loss_mask_bs = np.asarray(tokens_bs), np.asarray(loss_mask_bs)
  return [tokens_bs[b][loss_mask_bs[b] > 0].tolist() for b in range(tokens_bs.shape[0])]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="~15M-parameter model, smaller frames, T=40 (about a minute)")
  ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
  ap.add_argument("--out", default=None, help="result JSON (default bench/results/rollout[_quick].json)")
  args = ap.parse_args()
  import torch
  import transformers
  transformers.logging.set_verbosity_error()
  tok, config, params, prompts, env, cfg = setup(args.quick)
  G = cfg["G"]
  rep = {k: np.repeat(v, G, axis=0) for k, v in prompts.items()}     # the rollout's row order (b*G + g)
  res = {"config": cfg}
  res["ours_kv"], res["workload"], ours_gen = bench_ours(env, params, prompts, G, args.repeats)
  res["ours_reprefill"], rp_rows, rp_gen = bench_reprefill(env, params, rep, args.repeats)
  res["hf"], hf_rows, hf_gen = bench_hf(config, params, tok, env, rep, cfg["frames"], args.repeats)
  tr = res["workload"]["token_rows"]
  tr.update(ours_reprefill=rp_rows, hf=hf_rows)
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
                        note=f"median of {args.repeats} timed runs after warm-up; the machine may be shared "
                             f"(see loadavg)")
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
