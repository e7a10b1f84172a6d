"""Multi-turn rumination rollout throughput: the jitted KV-kept rollout vs re-prefilling each turn vs HF PyTorch.

  python bench/rollout.py [--shape {quick,full,paper}] [--quick] [--layers scanned|unrolled] [--runs 5] [--threads N] [--out PATH]

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
               its compile time is first run minus the median timed run.
  HF           the PyTorch-recipe loop: per turn `model.generate` (greedy, KV cache within the turn,
               eos = `</tool_call>` / `<|im_end|>`, max_new_tokens = T) on the whole conversation so far (left
               padded batch of the still-running rows, re-prefilled, vision re-encoded), the same action grammar
               as a LogitsProcessor (numpy port of the automaton, so greedy tokens are comparable), then
               `parse_action_text` + `execute_host` on the host and the observation turn appended with its
               pixels (`pixel_values` + `image_grid_thw` for a crop, `pixel_values_videos` + `video_grid_thw`
               for a clip, `mm_token_type_ids` for M-RoPE).

Timing (the conventions of bench/common.py). Each implementation runs in a process of its own (`common.Worker`,
started one after the other; in one process, the memory one side frees costs the next side page faults on this
VM: docs/BENCHMARKS.md). XLA and torch get the same thread count (`--threads`, default every CPU of the process;
`common.set_threads`, called before JAX runs anything: importing jax creates no CPU client, the first
computation does). Each implementation first runs untimed (ours: AOT lower + compile, timed apart, then
one run; re-prefill: the first run, which compiles one graph per turn; HF: one whole rollout, which also counts
its decoder work), then the timed runs alternate implementation by implementation (ours, re-prefill, HF, ours,
... `common.alternate`, `--runs` each), so that load from other jobs on a shared machine hits all three alike.
Per implementation the JSON keeps every run's wall and process-CPU seconds and their median / quartiles / min /
max (`common.spread`); `seconds` and `tokens_per_s` come from the median wall time. Tokens = generated tokens (stop
token included). `machine` (`common.machine`) has the CPU, thread counts, commit and the load average before and
after the timed part (`loadavg_before`, `loadavg_after`).

Shapes (`--shape`, SETTINGS; `--quick` = `--shape quick`; default full; every shape fp32, greedy):

  quick   ~11M-parameter model, 4 frames, 56x56 global view and observations, B=8 x G=2 rows, R=4, T=40.
  full    ~51M-parameter model, 8 frames, 112x112 global view and observations, B=8 x G=2 rows, R=4, T=48.
  paper   the Video-R4 paper's workload shape with the full model's dims: 16 frames of a 224x224 global view
          (8 temporal groups x 64 = 512 video tokens per prompt), observations of 336x336 (24x24 patches, one
          merged vision token per 28x28 pixels: 144 tokens per frame group), so a crop re-encodes to 144 vision
          tokens and a clip (max_clip_frames = 4, 2 temporal groups) to 288; R=4 turns, G=8 generations of B=2
          prompts (16 rows), T=48 (cache 1952 slots: prompt 545 + 4 x (48 + observation 302)). Biases: the
          full setting's (end_bias 7.7, clip_bias 0.1, qk_scale 5.0), unchanged, as the rows call tools with them.
          Measured (seed 0): 4.0 calls per row, rows by calls [0, 0, 0, 0, 16]: every row calls a tool at each
          of the R=4 turns and none answers (the rollout stops them at R); every call is a valid clip of ONE frame
          (`workload.clips_by_frames`), so each observation re-encodes to 144 vision tokens (one temporal group),
          not the 288 that a 3-4 frame clip would give (288 is the observation slot budget, obs_len 302); no crop.
          6 generated tokens per turn (384 in all), so the workload is prefill and vision bound, not decode bound;
          decoder token-rows ours 11592, re-prefill 51584, HF 50944 (work bound HF/ours 4.39x, re-prefill/ours
          4.45x). Greedy: the G=8 rows of a prompt are identical, so the workload is 2 prompts'
          trajectories, each 8 times (end_bias 7.9 instead: one prompt answers at once, the other calls 4 times;
          8.1 and up: no call). Output bench/results/rollout_paper.json.

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

import argparse, functools, json, os, sys, tempfile, time  # noqa: E401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "bench")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402  (bench/common.py: threads, ABAB timing, spread, machine record)
import rumination_fixtures as fixtures  # noqa: E402
from rumination_fixtures import biased_params  # noqa: E402,F401  (the other benches read it from here)
from videor4_jax import RolloutConfig, make_env, make_rollout_fn, make_row_group_rollout_fn, save_pretrained  # noqa
from videor4_jax.rumination.row_groups import GROUPS  # noqa: E402
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
                 B=8, G=2, R=4, T=48, frames=8, src_hw=(224, 224), global_hw=(112, 112), obs_hw=(112, 112),
                 max_clip_frames=4),
    "quick": dict(text=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                            num_key_value_heads=2, mrope_section=(8, 12, 12)),
                  vision=dict(depth=2, hidden_size=128, intermediate_size=512, num_heads=2, window_size=56,
                              fullatt_block_indexes=(1,)),
                  bias=dict(end_bias=7.95, clip_bias=0.1, qk_scale=8.0),
                  B=8, G=2, R=4, T=40, frames=4, src_hw=(112, 112), global_hw=(56, 56), obs_hw=(56, 56),
                  max_clip_frames=4),
}
# The Video-R4 paper's workload shape on the full model: 16 frames of a 224x224 global view, observations that
# re-encode to 144 vision tokens per crop (336x336 = 12x12 merged tokens) and 288 per clip (4 frames = 2 temporal
# groups), R = 4, G = 8, B = 2 (16 rows), T = 48. Biases: the full setting's (with them every row calls a clip at
# each of the 4 turns: see the module docstring).
SETTINGS["paper"] = dict(SETTINGS["full"], B=2, G=8, R=4, T=48, frames=16, src_hw=(224, 224), global_hw=(224, 224),
                         obs_hw=(336, 336), max_clip_frames=4)


# ------------------------------------------------------------------------------------------------ setup
def model_config(tok, s):
  return fixtures.model_config(tok, s["text"], s["vision"])


def make_prompts(tok, config, s, n, seed=0):
  """`n` prompts of setting `s` (tests/rumination_fixtures.py), the sign region a share of the frame."""
  h, w = s["src_hw"]
  return fixtures.make_prompts(tok, config, n, seed, frames=s["frames"], src_hw=s["src_hw"],
                               global_hw=s["global_hw"], sign_box=(h // 6, h // 2, w // 4, 3 * w // 4))


# ------------------------------------------------------------------------------------------------ re-prefill
def make_reprefill(env, row_groups: int = 1):
  """The rollout without its carried cache. Per turn one jitted function (static turn index and width L) that
  re-embeds and re-prefills the whole conversation into a fresh cache of L + T slots, then runs the rollout's own
  decode segment and observation (env.observe, no prefill) on it. `run(params, prompts)` returns the final state
  (rollout_state.RolloutState without cache and logits) and the decoder token-rows it computed. `row_groups` > 1:
  each turn runs on the rows split over that many devices, one group per device, as the row-group rollout does
  (`grouped_turn`)."""
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
    work = B * L + seg.token_rows
    return dict(state=state, token_rows=st["token_rows"] + (jax.lax.psum(work, GROUPS) if row_groups > 1 else work),
                obs_pixels=st["obs_pixels"].at[:, step].set(obs.pixels_bnp),
                obs_grid=st["obs_grid"].at[:, step].set(jnp.where(called_b[:, None], obs.grid_b3, 0)))

  jit_turn = functools.partial(jax.jit, static_argnames=("step", "L"))(
      turn if row_groups == 1 else grouped_turn(turn, row_groups))

  def run(params, prompts):
    st = init(params, prompts)
    for step in range(rc.max_steps):
      done, length = jax.device_get((st["state"].done_b, st["state"].write_b))
      if done.all():
        break
      L = int(min(-(-length.max() // 16) * 16, rc.cache_len))   # the longest conversation, rounded up to 16
      st = jit_turn(params, st, prompts, step=step, L=L)
    return jax.block_until_ready((st["state"], st["token_rows"]))
  return run


def grouped_turn(turn, row_groups: int):
  """`turn` on rows split over the first `row_groups` devices, one group of consecutive rows per device (shard_map,
  as rumination/row_groups.py runs the rollout): params whole on each, rows' arrays split (M-RoPE positions on
  their axis 1), the work count summed."""
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:row_groups]), (GROUPS,))
  spec = lambda path, _: P() if "token_rows" in jax.tree_util.keystr(path) else \
      P(None, GROUPS) if "positions_3bs" in jax.tree_util.keystr(path) else P(GROUPS)

  def fn(params, st, prompts, *, step, L):
    st_specs = jax.tree_util.tree_map_with_path(spec, st)
    return jax.shard_map(functools.partial(turn, step=step, L=L), mesh=mesh, in_specs=(P(), st_specs, P(GROUPS)),
                         out_specs=st_specs, check_vma=False)(params, st, prompts)
  return fn


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
OUT_NAMES = dict(quick="rollout_quick.json", full="rollout.json", paper="rollout_paper.json")


def setup(shape):
  """The bench's model, prompts and env for setting `shape` (SETTINGS), and the results' `config` entry."""
  s = SETTINGS[shape]
  B, G, R, T, K = s["B"], s["G"], s["R"], s["T"], s["max_clip_frames"]
  tok = Tokenizer.tiny()
  config = model_config(tok, s)
  params = biased_params(config, tok, **s["bias"])
  prompts = make_prompts(tok, config, s, B)
  probe = make_env(config, RolloutConfig(max_steps=R, max_step_tokens=T, obs_hw=s["obs_hw"], max_clip_frames=K),
                   tok, s["frames"])
  S = -(-(prompts["input_ids"].shape[1] + R * (T + probe.obs_len)) // 16) * 16
  rc = RolloutConfig(max_steps=R, max_step_tokens=T, cache_len=S, obs_hw=s["obs_hw"], max_clip_frames=K,
                     crop_min_px=4)
  env = make_env(config, rc, tok, s["frames"])
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  unit = config.vision.spatial_merge_size ** 2
  cfg = dict(shape=shape, params=n_params, text=s["text"], vision=s["vision"], bias=s["bias"], B=B, G=G, rows=B * G,
             R=R, max_step_tokens=T, cache_len=S, prompt_len=int(prompts["attention_mask"].sum(1).max()),
             obs_len=env.obs_len, frames=s["frames"], src_hw=s["src_hw"], global_hw=s["global_hw"],
             obs_hw=s["obs_hw"], max_clip_frames=K,
             video_tokens=int(prompts["video_grid_thw"][0].prod()) // unit,
             crop_tokens=env.observation_patches(1) // unit, clip_tokens=env.observation_patches() // unit,
             greedy=True, dtype="float32", quick=shape == "quick")
  print(f"model: {n_params / 1e6:.1f}M params; shape {shape}: rows {B}x{G}, R={R}, T={T}, cache {S}, "
        f"{s['frames']} frames {s['global_hw']}, video {cfg['video_tokens']} tokens, crop {cfg['crop_tokens']} / clip "
        f"{cfg['clip_tokens']} tokens, obs_len {env.obs_len}", flush=True)
  return tok, config, params, prompts, env, cfg


def prepare_ours(env, params, prompts, G, row_groups=1):
  """The jitted rollout compiled and run once: (timed callable, untimed info, tool-call stats, the workload from the
  work the rollout reports, each row's generated tokens). Exits when the workload has no tool call. `row_groups`
  > 1: the row-group rollout over that many devices (rumination/row_groups.py)."""
  key = jax.random.key(0)
  fn = make_rollout_fn(env, num_generations=G, greedy=True) if row_groups == 1 else \
      make_row_group_rollout_fn(env, jax.devices()[:row_groups], num_generations=G, greedy=True)
  t0 = time.perf_counter()
  compiled = fn.lower(params, prompts, key).compile()
  compile_s = time.perf_counter() - t0
  first_s, _, traj = common.timed(lambda: jax.block_until_ready(compiled(params, prompts, key)))   # warm-up
  called, err = np.asarray(traj.actions.called), np.asarray(traj.actions.error)
  kind = np.asarray(traj.actions.kind)
  info = dict(tokens=int(traj.num_generated.sum()), compile_s=round(compile_s, 2), first_run_s=round(first_s, 3),
              calls=int(called.sum()), crops_ok=int((called & (err == 0) & (kind == 1)).sum()),
              clips_ok=int((called & (err == 0) & (kind == 2)).sum()), errors=int((called & (err != 0)).sum()),
              answered=int(np.asarray(traj.answered).sum()), mean_final_len=float(np.asarray(traj.length).mean()))
  print("ours (KV kept), untimed run:", info, flush=True)
  per_row = called.sum(1)
  if not per_row.any():
    sys.exit(f"the workload has no tool call (all {called.shape[0]} rows answered at once): it does not measure the "
             f"multi-turn loop; re-tune SETTINGS[...]['bias'] (end_bias lower / qk_scale) with this bench")
  work = jax.device_get(traj.work)
  workload = dict(calls_per_row=round(float(per_row.mean()), 2),
                  rows_by_calls=np.bincount(per_row, minlength=env.rollout.max_steps + 1).tolist(),
                  clips_by_frames=np.bincount(np.asarray(traj.actions.num_frames)[called & (err == 0) & (kind == 2)],
                                              minlength=env.rollout.max_clip_frames + 1).tolist(),
                  answered=int(np.asarray(traj.answered).sum()),
                  decode_iterations_per_step=work.decode_iterations_r.tolist(),
                  active_rows_per_step=work.decoding_rows_r.tolist(),
                  vision_patches=dict(ours_kv=int(work.prompt_patches + work.observation_patches_r.sum())),
                  token_rows=dict(ours_kv=int(work.decoder_token_rows())))
  run = lambda: jax.block_until_ready(compiled(params, prompts, key))
  return run, info, workload, generated_rows(traj.tokens, traj.loss_mask)


def prepare_reprefill(env, params, rep, row_groups=1):
  """The re-prefill loop's first run (it compiles one graph per turn): (timed callable, info, token-rows, rows)."""
  run = make_reprefill(env, row_groups)
  rep_j = jax.tree.map(jnp.asarray, rep)
  first_s, _, (state, token_rows) = common.timed(lambda: run(params, rep_j))
  info = dict(tokens=int(state.num_generated_b.sum()), first_run_s=round(first_s, 2))
  print("ours (re-prefill), untimed first run:", info, flush=True)
  return (lambda: run(params, rep_j)), info, int(token_rows), generated_rows(state.record.tokens_bs,
                                                                             state.record.loss_mask_bs)


def prepare_hf(config, params, tok, env, rep):
  """HF on the same weights and one whole untimed rollout (warm-up, and it counts the decoder token-rows):
  (timed callable, info, token-rows, rows)."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(d, config, params)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
  work = []
  first_s, _, hf_gen = common.timed(lambda: hf_rollout(model, tok, env, rep, work))
  info = dict(tokens=sum(map(len, hf_gen)), first_run_s=round(first_s, 2), batched=True,
              attn_implementation=model.config._attn_implementation, torch_threads=torch.get_num_threads(),
              note="rows batched with left padding; finished rows leave the batch between turns")
  print("HF, untimed first run:", info, flush=True)
  return (lambda: hf_rollout(model, tok, env, rep)), info, int(sum(work)), hf_gen


def generated_rows(tokens_bs, loss_mask_bs):
  """Each row's generated tokens (loss mask on)."""
  tokens_bs, loss_mask_bs = np.asarray(tokens_bs), np.asarray(loss_mask_bs)
  return [tokens_bs[b][loss_mask_bs[b] > 0].tolist() for b in range(tokens_bs.shape[0])]


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", choices=("quick", "full", "paper"), default="full",
                  help="quick: ~11M model, small frames; full: ~51M model; paper: the paper's workload shape on the "
                       "full model (16 frames 224x224, crop 144 / clip 288 vision tokens, G=8, B=2)")
  ap.add_argument("--quick", dest="shape", action="store_const", const="quick", help="alias of --shape quick")
  ap.add_argument("--runs", "--repeats", dest="runs", type=int, default=5,
                  help="timed runs per implementation, alternated ABC ABC ... (median and spread)")
  ap.add_argument("--threads", type=int, default=None, help="threads for XLA and torch alike (default: all CPUs)")
  ap.add_argument("--layers", choices=("scanned", "unrolled"), default="scanned",
                  help="ours (both sides): scanned decoder layers (the default config) or the CPU setting "
                       "(vlm.cpu_setting: unrolled layers, cpu_layouts); HF is the same either way")
  ap.add_argument("--row-groups", type=int, default=1,
                  help="ours (both sides): the rows split into this many groups run side by side, one per CPU "
                       "device (rumination/row_groups.py; the workers get XLA_FLAGS "
                       "--xla_force_host_platform_device_count); the fast setting is one group per thread")
  ap.add_argument("--out", default=None, help="result JSON (default bench/results/rollout[_quick|_paper].json)")
  ap.add_argument("--worker", choices=SIDES, default=None, help="internal: one implementation in this process")
  return ap.parse_args(argv)


SIDES = ("ours_kv", "ours_reprefill", "hf")


def side_worker(args):
  """`--worker SIDE`: one implementation in this process (common.serve) after its untimed run. Reports its info,
  each row's generated tokens, its decoder token-rows and (ours_kv) the workload."""
  tok, config, params, prompts, env, cfg = setup(args.shape)
  ours_config, ours_params, ours_env = config, params, env
  if args.layers == "unrolled":    # HF keeps the scanned config and params it is saved from
    ours_config, ours_params = vlm.cpu_setting(config, params)
    ours_env = make_env(ours_config, env.rollout, tok, cfg["frames"])
  rep = {k: np.repeat(v, cfg["G"], axis=0) for k, v in prompts.items()}     # the rollout's row order (b*G + g)
  report = dict(config=dict(cfg, cpu_layouts=ours_config.cpu_layouts))
  if args.worker == "ours_kv":
    run, info, report["workload"], rows = prepare_ours(ours_env, ours_params, prompts, cfg["G"], args.row_groups)
  elif args.worker == "ours_reprefill":
    run, info, report["token_rows"], rows = prepare_reprefill(ours_env, ours_params, rep, args.row_groups)
  else:
    import transformers
    transformers.logging.set_verbosity_error()
    run, info, report["token_rows"], rows = prepare_hf(config, params, tok, env, rep)
  common.serve(run, dict(report, info=info, rows=rows))


def main(argv=None):
  """The bench top to bottom: the thread count first (common.set_threads, before JAX's CPU client exists, i.e.
  before any computation; importing jax above created none). Each implementation runs in a process of its own
  (common.Worker: one side's freed memory costs another page faults on this VM; docs/BENCHMARKS.md), started one
  after the other (setup and untimed run), then timed alternately; the JSON."""
  args = parse_args(argv)
  threads = common.set_threads(args.threads)
  if args.worker:
    return side_worker(args)
  argv = [sys.executable, os.path.abspath(__file__), "--shape", args.shape, "--layers", args.layers, "--threads",
          str(threads), "--row-groups", str(args.row_groups)]
  devices = dict(XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count="
                           f"{args.row_groups}".strip())
  workers = {}
  for side in SIDES:
    workers[side] = common.Worker(argv + ["--worker", side], side, env=None if side == "hf" else devices)
  rep = {k: w.info for k, w in workers.items()}
  cfg = dict(rep["ours_kv"]["config"], runs=args.runs, threads=threads, layers=args.layers,
             row_groups=args.row_groups)
  info = {k: r["info"] for k, r in rep.items()}
  rows = {k: r["rows"] for k, r in rep.items()}
  res = {"config": cfg, "workload": rep["ours_kv"]["workload"]}

  load_before = common.loadavg()
  print(f"timing: {args.runs} runs each, alternated {' / '.join(SIDES)}; {threads} threads; load {load_before}",
        flush=True)
  t = common.alternate_workers(workers, args.runs)
  for w in workers.values():
    w.close()
  load_after = common.loadavg()
  for k in SIDES:
    med, ntok = t[k]["wall"]["median"], info[k]["tokens"]
    res[k] = dict(info[k], seconds=round(med, 3), runs_s=t[k]["wall_s"], tokens_per_s=round(ntok / med, 1),
                  tokens_per_cpu_s=round(ntok / t[k]["cpu"]["median"], 1), **t[k])
    if k == "ours_reprefill":
      res[k]["compile_s"] = round(info[k]["first_run_s"] - med, 2)
    print(f"{k}: {res[k]['tokens_per_s']} tok/s (median {med:.3f} s, {t[k]['wall']['min']:.3f}-"
          f"{t[k]['wall']['max']:.3f}; CPU {t[k]['cpu']['median']:.3f} s)", flush=True)

  tr = res["workload"]["token_rows"]
  tr.update(ours_reprefill=rep["ours_reprefill"]["token_rows"], hf=rep["hf"]["token_rows"])
  res["workload"]["work_bound"] = dict(hf_over_ours=round(tr["hf"] / tr["ours_kv"], 2),
                                       reprefill_over_ours=round(tr["ours_reprefill"] / tr["ours_kv"], 2))
  print("workload:", res["workload"], flush=True)

  same = lambda a, b: float(np.mean([x == y for x, y in zip(rows[a], rows[b])]))
  res["identical_rows"] = dict(ours_vs_hf=same("ours_kv", "hf"), ours_vs_reprefill=same("ours_kv", "ours_reprefill"),
                               reprefill_vs_hf=same("ours_reprefill", "hf"))
  ratio = lambda a, b, key="tokens_per_s": round(res[a][key] / res[b][key], 2)
  res["ratios"] = dict(ours_over_hf=ratio("ours_kv", "hf"), kv_over_reprefill=ratio("ours_kv", "ours_reprefill"),
                       reprefill_over_hf=ratio("ours_reprefill", "hf"))
  res["ratios_cpu_time"] = {k: ratio(*{"ours_over_hf": ("ours_kv", "hf"),
                                       "kv_over_reprefill": ("ours_kv", "ours_reprefill"),
                                       "reprefill_over_hf": ("ours_reprefill", "hf")}[k], "tokens_per_cpu_s")
                            for k in res["ratios"]}
  import transformers
  res["machine"] = common.machine(
      threads, loadavg_before=load_before, loadavg_after=load_after, xla_eigen_threads=common.xla_threads(),
      transformers=transformers.__version__, isolation="one process per implementation",
      note=f"median of {args.runs} timed runs per implementation, alternated run by run after an untimed run each; "
           f"the machine may be shared (see loadavg_before / loadavg_after)")
  name = OUT_NAMES[args.shape].replace(".json", "_unrolled.json" if args.layers == "unrolled" else ".json")
  name = name.replace(".json", f"_groups{args.row_groups}.json" if args.row_groups > 1 else ".json")
  out = common.write_json(res, name, args.out)
  print(f"wrote {out}")
  print(json.dumps(res["identical_rows"]))
  wb = res["workload"]["work_bound"]
  print(f"rollout ({args.shape}): ours/HF tokens/s = {res['ratios']['ours_over_hf']:.2f}x (decoder work HF/ours "
        f"{wb['hf_over_ours']:.2f}x); KV-kept/re-prefill = {res['ratios']['kv_over_reprefill']:.2f}x (work "
        f"{wb['reprefill_over_ours']:.2f}x); {res['workload']['calls_per_row']} calls per row")
  return res


if __name__ == "__main__":
  main()
