"""The jitted rollout against a plain reference loop (no cache, full forward per token, host-side actions)."""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rumination_fixtures import NUM_FRAMES, make_prompts, make_setup
from videor4_jax.model import rope_index, vlm
from videor4_jax.processing import chat, grammar
from videor4_jax.rumination import pixel_ops
from videor4_jax.rumination.config import RolloutConfig
from videor4_jax.rumination.env import make_env
from videor4_jax.rumination.rollout import chunk_rows, make_rollout_fn, row_keys
from videor4_jax.rumination.sampling import sample_next
from videor4_jax.train.forward import sequence_hidden


def reference_rollout(tok, config, params, env, prompts, key, *, greedy, temperature=1.0):
  """Per row: rebuild the conversation, run the full forward (no cache) for every token, execute actions on the
  host (parse_action_text + pixel_ops.*_host + chat.observation_ids). Returns the generated tokens per row."""
  rc = env.rollout
  out = []
  S = rc.cache_len
  fwd = jax.jit(lambda p, x, pos, v: vlm.decode(config, p, x, pos, v)[0])
  encode = jax.jit(lambda p, px, g: vlm.encode_vision(config, p, px, g[None]))
  for row in range(prompts["input_ids"].shape[0]):
    m = prompts["attention_mask"][row].astype(bool)
    ids = list(prompts["input_ids"][row][m])
    items = [("video", prompts["pixel_values_videos"][row], prompts["video_grid_thw"][row])]
    item_embeds = [encode(params, items[0][1], items[0][2])]
    generated = []
    for step in range(rc.max_steps):
      gstate, step_tokens, stop = jnp.array([grammar.OUTSIDE_CALL]), [], None
      for t in range(rc.max_step_tokens):
        n_tok = len(ids)
        arr = np.full((1, S), tok.pad_id, np.int64)
        arr[0, :n_tok] = ids
        valid = np.arange(S)[None] < n_tok
        x = vlm.embed_tokens(config, params, jnp.asarray(arr))
        n = [int(np.prod(g)) // 4 for _, _, g in items]
        emb = jnp.concatenate([v[:k] for v, k in zip(item_embeds, n)])
        is_vis = ((arr == config.image_token_id) | (arr == config.video_token_id)) & valid
        x = vlm.merge_row_vision(x, jnp.asarray(is_vis), emb[None], jnp.ones((1, emb.shape[0]), bool))
        imgs = [g for kind, _, g in items if kind == "image"]
        vids = [g for kind, _, g in items if kind == "video"]
        pos, _ = rope_index.get_rope_index(config, arr, image_grid_thw=np.array(imgs) if imgs else None,
                                           video_grid_thw=np.array(vids) if vids else None,
                                           second_per_grid_ts=[rc.clip_seconds_per_group] * len(vids),
                                           attention_mask=valid.astype(np.int64))
        h = fwd(params, x, jnp.asarray(pos), jnp.asarray(valid))
        logits = vlm.logits(config, params, h[:, n_tok - 1])
        k = row_keys(key, step, t, prompts["input_ids"].shape[0])[row]
        tok_, _ = sample_next(k, logits, env.allowed_tokens(gstate), temperature=temperature, greedy=greedy)
        tok_id = int(tok_[0])
        new_state = env.advance_grammar(gstate, tok_)
        ids.append(tok_id)
        step_tokens.append(tok_id)
        generated.append(tok_id)
        if bool(env.grammar_accepts(new_state)[0]):
          stop = "call"
          break
        if tok_id == tok.im_end_id and int(gstate[0]) == grammar.OUTSIDE_CALL:
          stop = "answer"
          break
        gstate = new_state
      if stop != "call":
        break
      action, err = grammar.parse_action_text(tok.decode(step_tokens), num_frames=NUM_FRAMES,
                                              max_frames=rc.max_clip_frames)
      src = prompts["source_frames"][row]
      if err == 0 and action["name"] == "crop":
        px, err = pixel_ops.crop_host(src, action["frame"], jnp.array(action["bbox_2d"], jnp.float32),
                                      out_hw=rc.obs_hw, margin=rc.crop_margin, min_px=rc.crop_min_px)
        frames, kind = jnp.stack([px, px]), "image"
      elif err == 0:
        fr = np.zeros((rc.max_clip_frames,), np.int32)
        fr[:len(action["frames"])] = action["frames"]
        px, mask, groups, err = pixel_ops.clip_host(src, jnp.asarray(fr), len(action["frames"]), out_hw=rc.obs_hw)
        frames, kind = px[:2 * int(groups)], "video"
      err = int(err)
      gh, gw = rc.obs_hw[0] // 14, rc.obs_hw[1] // 14
      if err == 0:
        grid = np.array([frames.shape[0] // 2, gh, gw])
        items.append((kind, np.asarray(pixel_ops.to_patches(frames)), grid))
        item_embeds.append(encode(params, items[-1][1], grid))
        o_ids, _ = chat.observation_ids(tok, 0, int(grid.prod()) // 4, chat.IMAGE if kind == "image" else chat.VIDEO)
      else:
        o_ids, _ = chat.observation_ids(tok, err, 0, chat.IMAGE)
      ids += o_ids
    out.append(generated)
  return out


def _generated(traj, b):
  m = np.asarray(traj.loss_mask[b]) > 0
  return np.asarray(traj.tokens[b])[m].tolist()


@pytest.fixture(scope="module")
def setup():
  return make_setup()


@pytest.fixture(scope="module")
def rollout2(setup):
  """One jitted rollout (2 generations per prompt) shared by the tests below, so that it compiles once."""
  return make_rollout_fn(setup[3], num_generations=2)


@pytest.fixture(scope="module")
def rollout2_uncompacted(setup):
  """`rollout2` with `compact_rows` off: every loop computes all rows."""
  tok, config, _, env = setup
  return make_rollout_fn(make_env(config, dataclasses.replace(env.rollout, compact_rows=False), tok, NUM_FRAMES),
                         num_generations=2)


# What each case must exercise (1 = crop, 2 = clip executed without error). With these random weights greedy
# decoding writes degenerate boxes, so greedy crops end in error observations (seed 17); executed crops come from the
# sampled case.
MUST = {(True, 1): ({2}, False), (True, 17): ({2}, True), (False, 0): ({1, 2}, True)}


# (True, 1) exercises nothing the other two do not (clips, no error observation): slow.
@pytest.mark.parametrize("greedy,seed", [pytest.param(*case, marks=pytest.mark.slow) if case == (True, 1) else case
                                         for case in MUST])
def test_rollout_equals_plain_reference_loop(greedy, seed):
  tok, config, params, env = make_setup(seed=seed)
  rows = 3 if greedy else 4
  prompts = make_prompts(tok, config, rows, seed=seed)
  key = jax.random.key(seed)
  traj = make_rollout_fn(env, greedy=greedy)(params, prompts, key)
  ref = reference_rollout(tok, config, params, env, prompts, key, greedy=greedy)
  for b in range(rows):
    assert _generated(traj, b) == ref[b], f"row {b}"
  called, err = np.asarray(traj.actions.called), np.asarray(traj.actions.error)
  kinds = set(np.asarray(traj.actions.kind)[called & (err == 0)].tolist())
  must_kinds, must_error = MUST[(greedy, seed)]
  assert must_kinds <= kinds, kinds
  if must_error:   # some action ended in an error observation
    assert (err[called] != 0).any()


def test_recorded_logprobs_equal_teacher_forced(setup, rollout2):
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=1)
  traj = rollout2(params, prompts, jax.random.key(1))
  batch = dict(tokens=traj.tokens, positions=traj.positions, valid=traj.valid, mm_types=traj.mm_types,
               video_pixels=traj.video_pixels, video_grid=traj.video_grid, obs_pixels=traj.obs_pixels,
               obs_grid=traj.obs_grid)
  hidden = sequence_hidden(config, params, batch)
  logp_all = jax.nn.log_softmax(vlm.logits(config, params, hidden[:, :-1]), -1)
  tf = jnp.take_along_axis(logp_all, traj.tokens[:, 1:, None], -1)[..., 0]
  m = np.asarray(traj.loss_mask[:, 1:]) > 0
  assert m.sum() > 50
  tf, rec = np.asarray(tf)[m], np.asarray(traj.logp[:, 1:])[m]
  d = np.abs(tf - rec)
  likely = rec > -20.0
  print(f"rollout logp vs teacher-forced: max|diff|={d.max():.2e} at logp {rec[d.argmax()]:.1f}; "
        f"on logp > -20: max|diff|={d[likely].max():.2e} ({likely.sum()} of {len(d)} tokens); "
        f"max relative {(d / np.abs(tf).clip(1e-3)).max():.1e}")
  assert likely.sum() > 50
  # The literal 1e-5 on every token the policy could plausibly sample; grammar-forced tokens can have a full-softmax
  # logp far below that, where fp32 rounding scales with |logp|: 1e-6 relative there. Measured (fp32, CPU): max
  # 4.8e-6 on logp > -20; 1.14e-5 overall, at logp -60 (1.9e-7 relative).
  assert d[likely].max() <= 1e-5
  np.testing.assert_allclose(tf[~likely], rec[~likely], rtol=1e-6, atol=0)
  assert np.all(np.isfinite(np.asarray(traj.logp)))


def test_invalid_actions_give_error_observations_and_rows_go_on(setup, rollout2):
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=2)
  traj = rollout2(params, prompts, jax.random.key(2))
  err = np.asarray(traj.actions.error)
  called = np.asarray(traj.actions.called)
  assert (err[called] != 0).any() and (err[called] == 0).any()
  rr = np.arange(err.shape[1])[None] + 1 < env.rollout.max_steps
  b, r = np.argwhere(called & (err != 0) & rr)[0]      # an error before the last step, so the row can go on
  assert not bool(traj.obs_valid[b, r]) and int(traj.obs_grid[b, r, 0]) == 0
  text = tok.decode(np.asarray(traj.tokens[b])[np.asarray(traj.valid[b])])
  assert "Error: " + grammar.ERROR_MESSAGES[grammar.ActionError(int(err[b, r]))] in text
  # The row goes on: it generated tokens (loss mask 1) after the error observation's last slot.
  obs = chat.observation_ids(tok, int(err[b, r]), 0, chat.IMAGE)[0]
  toks = np.asarray(traj.tokens[b]).tolist()
  end = next(j + len(obs) for j in range(len(toks)) if toks[j:j + len(obs)] == obs)
  assert np.asarray(traj.loss_mask[b, end:]).sum() > 0
  for leaf in jax.tree.leaves(traj):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert np.all(np.isfinite(np.asarray(leaf)))


def test_row_result_independent_of_other_rows(setup):
  tok, config, params, env = setup
  fn = make_rollout_fn(env)
  a = make_prompts(tok, config, 3, seed=5)
  b = make_prompts(tok, config, 3, seed=6)
  for k in a:                                    # same row 0, different rows 1 and 2
    b[k][0] = a[k][0]
  ta, tb = fn(params, a, jax.random.key(7)), fn(params, b, jax.random.key(7))
  for f in ("tokens", "logp", "loss_mask", "valid"):
    np.testing.assert_array_equal(np.asarray(getattr(ta, f)[0]), np.asarray(getattr(tb, f)[0]))
  assert not np.array_equal(np.asarray(ta.logp[1]), np.asarray(tb.logp[1]))   # the other rows did change


def test_compiled_graph_does_not_grow_with_steps(setup):
  """R is a scan length: the program is the same size at R = 2 and R = 8 (compile time is printed, not asserted)."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 2)
  times, sizes = {}, {}
  for r in (2, 8):
    rc = RolloutConfig(max_steps=r, max_step_tokens=32, cache_len=128 + r * 110, obs_hw=(56, 56), max_clip_frames=4)
    _, _, _, env_r = make_setup(rc)
    t0 = time.perf_counter()
    lowered = make_rollout_fn(env_r).lower(params, prompts, jax.random.key(0))
    lowered.compile()
    times[r] = time.perf_counter() - t0
    sizes[r] = len(lowered.as_text())
  print(f"rollout compile time: R=2 {times[2]:.2f}s, R=8 {times[8]:.2f}s, ratio {times[8] / times[2]:.2f}; "
        f"program size ratio {sizes[8] / sizes[2]:.3f}")
  assert sizes[8] / sizes[2] < 1.02


def test_sharded_rollout_equals_single_device(setup, rollout2):
  """Batch over (data, fsdp), weights by the logical rules, on the 8-device CPU mesh."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from videor4_jax.parallel.sharding import make_mesh, param_shardings, use_mesh
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=4)
  fn = rollout2
  ref = fn(params, prompts, jax.random.key(4))
  mesh = make_mesh((2, 2, 2))
  sp = jax.device_put(params, param_shardings(config, mesh))
  batch_sharded = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp")))) for k, v in prompts.items()}
  with use_mesh(mesh):
    got = fn(sp, batch_sharded, jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  a, b = np.asarray(got.logp), np.asarray(ref.logp)
  d = np.abs(a - b)
  print(f"sharded rollout logp vs single device: max|diff|={d.max():.2e} at logp {b.flat[d.argmax()]:.1f}, "
        f"max relative {(d / np.abs(b).clip(1e-3)).max():.1e}")
  # Tensor-parallel matmuls reorder fp32 sums: measured 2.7e-5 at logp -15.0 (1.8e-6 relative), so a relative term.
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=3e-6)


def test_observation_positions_equal_rope_index_over_the_full_conversation(setup, rollout2):
  """Positions the rollout gave to its appended observation chunks (from each row's counter) equal
  get_rope_index over the finished conversation."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=0)
  traj = rollout2(params, prompts, jax.random.key(0))
  checked_vision = 0
  for b in range(8):
    v = np.asarray(traj.valid[b])
    ids = np.asarray(traj.tokens[b])[v][None]
    items = [("video", np.asarray(traj.video_grid[b]))]
    for r in range(env.rollout.max_steps):
      if bool(traj.obs_valid[b, r]):
        g = np.asarray(traj.obs_grid[b, r])
        items.append(("image" if int(traj.actions.kind[b, r]) == 1 else "video", g))
    imgs = [g for k, g in items if k == "image"]
    vids = [g for k, g in items if k == "video"]
    ref, _ = rope_index.get_rope_index(config, ids, image_grid_thw=np.array(imgs) if imgs else None,
                                       video_grid_thw=np.array(vids),
                                       second_per_grid_ts=[env.rollout.clip_seconds_per_group] * len(vids))
    np.testing.assert_array_equal(np.asarray(traj.positions[:, b])[:, v], ref[:, 0])
    checked_vision += len(items) - 1
  assert checked_vision > 0


def test_pooled_features_are_mean_vision_embeddings(setup, rollout2):
  """region_feats[b, r] is the mean vision-tower embedding of step r's crop (over its valid tokens), video_feats
  the mean over each temporal group of the global view: recomputed here from the recorded pixels, unpadded."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=1)
  traj = rollout2(params, prompts, jax.random.key(1))
  encode = jax.jit(lambda px, g: vlm.encode_vision(config, params, px, g[None]))
  called, err, kind = (np.asarray(x) for x in (traj.actions.called, traj.actions.error, traj.actions.kind))
  mask = np.asarray(traj.region_mask)
  np.testing.assert_array_equal(mask, called & (err == 0) & (kind == 1))
  assert mask.any()
  worst = 0.0
  for b, r in np.argwhere(mask):
    g = np.asarray(traj.obs_grid[b, r])
    ref = np.asarray(encode(np.asarray(traj.obs_pixels[b, r])[:int(g.prod())], g)).mean(0)
    worst = max(worst, np.abs(np.asarray(traj.region_feats[b, r]) - ref).max())
  for b in range(traj.tokens.shape[0]):
    g = np.asarray(traj.video_grid[b])
    emb = np.asarray(encode(np.asarray(traj.video_pixels[b])[:int(g.prod())], g))
    ref = emb.reshape(int(g[0]), -1, emb.shape[-1]).mean(1)
    worst = max(worst, np.abs(np.asarray(traj.video_feats[b]) - ref).max())
  print(f"pooled features vs recomputed: max|diff|={worst:.2e}")
  assert worst <= 1e-5


def test_narrow_observation_prefill_equals_reference_loop():
  """At 112-px observations a one-group outcome (crop, clip of <= 2 frames, error) fills 30 of the N = 46 slots, so
  the rollout prefills those observations in a second, narrower loop (env.observe(max_groups=1)); clips of 3-4
  frames go in the full-width loop. Both must match the plain reference loop token for token."""
  rc = RolloutConfig(max_steps=3, max_step_tokens=32, cache_len=512, obs_hw=(112, 112), max_clip_frames=4,
                     crop_min_px=4)
  tok, config, params, env = make_setup(rc, seed=3)
  assert env.templates.length_upto(1) < env.obs_len
  prompts = make_prompts(tok, config, 4, seed=3)
  key = jax.random.key(3)
  traj = make_rollout_fn(env, greedy=False)(params, prompts, key)
  ref = reference_rollout(tok, config, params, env, prompts, key, greedy=False)
  for b in range(4):
    assert _generated(traj, b) == ref[b], f"row {b}"
  called = np.asarray(traj.actions.called)
  kind, n = np.asarray(traj.actions.kind)[called], np.asarray(traj.actions.num_frames)[called]
  wide = (kind == grammar.KIND_CLIP) & (n > 2)
  print(f"calls: {called.sum()}, wide: {wide.sum()}, narrow: {(~wide).sum()}")
  assert (~wide).any() and wide.any()


def test_rollout_reuses_its_compiled_function(monkeypatch):
  """`rollout()` builds (and so compiles) one jitted function per env and settings, not one per call."""
  import gc
  import videor4_jax.rumination.rollout as ro
  built = []

  def fake_make(env, **kw):
    built.append(kw)
    return lambda params, prompts, key: ("ran", kw["num_generations"])

  monkeypatch.setattr(ro, "make_rollout_fn", fake_make)

  class Env:
    pass

  env = Env()
  for _ in range(3):
    assert ro.rollout(env, None, None, None, num_generations=2) == ("ran", 2)
  ro.rollout(env, None, None, None, num_generations=4)
  assert [b["num_generations"] for b in built] == [2, 4]
  n = len(ro._ROLLOUT_FNS)
  del env
  gc.collect()
  assert len(ro._ROLLOUT_FNS) == n - 2            # entries go with their env


def test_uncompacted_rollout_equals_compacted(setup, rollout2, rollout2_uncompacted):
  """`compact_rows` changes which rows a loop computes, not what a row gets: off, the tokens and actions are the
  compacted rollout's and the log-probs equal to fp32 rounding (the decoder runs on other batch shapes)."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=1)
  want = rollout2(params, prompts, jax.random.key(1))
  got = rollout2_uncompacted(params, prompts, jax.random.key(1))
  assert int(np.asarray(got.num_generated).min()) > 0 and np.asarray(got.actions.called).any()
  for field in ("tokens", "valid", "loss_mask", "positions", "length", "num_generated", "answered"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)), err_msg=field)
  for a, b in zip(jax.tree.leaves(got.actions), jax.tree.leaves(want.actions)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(got.logp), np.asarray(want.logp), atol=1e-5, rtol=1e-6)


def _step_lengths(loss_mask_bs):
  """Tokens each row generated per step: the j-th run of generated slots of a row is its step j (observation
  chunks, never empty, separate the runs)."""
  out = []
  for row in np.asarray(loss_mask_bs) > 0:
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    out.append((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist())
  return out


def _scheduled_work(traj, env, prompts, k):
  """The work counts the rollout's schedule implies, recomputed from what it produced: per decode iteration B rows
  while more than k rows run, then k rows; observation turns in chunks of k caller rows, one-group outcomes
  `length_upto(1)` slots and 1/max_groups of the patches wide; not compacting (k = B), all rows in one turn when
  any row called."""
  B, R = traj.tokens.shape[0], env.rollout.max_steps
  lengths = _step_lengths(traj.loss_mask)
  steps = [[r[j] for r in lengths if len(r) > j] for j in range(R)]
  iterations = [max(s, default=0) for s in steps]
  decode = [sum(B if sum(n > t for n in s) > k else k for t in range(it)) for s, it in zip(steps, iterations)]
  called = np.asarray(traj.actions.called)
  wide = called & ((np.asarray(traj.actions.kind) == grammar.KIND_CLIP) & (np.asarray(traj.actions.num_frames) > 2))
  n_full, n_one = env.obs_len, env.templates.length_upto(1)
  p_full = traj.obs_pixels.shape[2]
  p_one = p_full // env.templates.max_groups
  if k == B:
    obs = [(B * n_full * c.any(), B * p_full * c.any()) for c in called.T]
  else:
    if n_one == n_full:
      wide = called
    chunks = lambda n: -(-int(n) // k) * k
    obs = [(chunks(w.sum()) * n_full + chunks((c & ~w).sum()) * n_one,
            chunks(w.sum()) * p_full + chunks((c & ~w).sum()) * p_one) for w, c in zip(wide.T, called.T)]
  P, Tp = prompts["input_ids"].shape
  return dict(prompt_token_rows=P * Tp, prompt_patches=P * prompts["pixel_values_videos"].shape[1],
              decoding_rows_r=[len(s) for s in steps], decode_iterations_r=iterations, decode_token_rows_r=decode,
              observation_token_rows_r=[o[0] for o in obs], observation_patches_r=[o[1] for o in obs])


def test_work_counts_follow_the_schedule(setup, rollout2, rollout2_uncompacted):
  """The counts the rollout reports (Trajectory.work, read by bench/rollout.py) equal the ones recomputed from its
  output and its schedule, compacted and not."""
  tok, config, params, env = setup
  prompts = make_prompts(tok, config, 4, seed=7)    # seed and key: some decode iterations and observation turns
  B = 2 * 4                                         # run on fewer than B rows (checked below)
  for fn, k in ((rollout2, chunk_rows(B)), (rollout2_uncompacted, B)):
    traj = fn(params, prompts, jax.random.key(107))
    want = _scheduled_work(traj, env, prompts, k)
    got = {f.name: np.asarray(getattr(traj.work, f.name)).tolist() for f in dataclasses.fields(traj.work)}
    assert got == want, (k, got, want)
    assert int(traj.work.decoder_token_rows()) == (want["prompt_token_rows"] + sum(want["decode_token_rows_r"])
                                                   + sum(want["observation_token_rows_r"]))
    assert sum(want["observation_token_rows_r"]) > 0
    if k < B:   # the case compacts: some decode iterations and some observation turns ran on fewer than B rows
      assert any(d < B * it for d, it in zip(want["decode_token_rows_r"], want["decode_iterations_r"]))
      assert any(0 < o < B * env.obs_len for o in want["observation_token_rows_r"])


def test_cpu_setting_rollout_equals_default(setup, rollout2):
  """The CPU setting (vlm.cpu_setting: unrolled layers, cpu_layouts, so a head-major `[L, B, Hkv, S, Dh]` KV cache
  read in place by the batch-major attention dots) changes layouts, not results: the same tokens and actions as
  the default (scanned, `[L, B, S, Hkv, Dh]`) rollout, log-probs equal to fp32 rounding, through prompt prefill,
  compacted decode and observation prefill."""
  tok, config, params, env = setup
  cpu_config, cpu_params = vlm.cpu_setting(config, params)
  cpu_env = make_env(cpu_config, env.rollout, tok, NUM_FRAMES)
  assert vlm.init_cache(cpu_config, 2, 16).k.shape[vlm.cache_slot_axis(cpu_config)] == 16
  assert vlm.cache_slot_axis(cpu_config) != vlm.cache_slot_axis(config)
  prompts = make_prompts(tok, config, 4, seed=1)
  want = rollout2(params, prompts, jax.random.key(1))
  got = make_rollout_fn(cpu_env, num_generations=2)(cpu_params, prompts, jax.random.key(1))
  assert np.asarray(got.actions.called).any() and int(np.asarray(got.num_generated).min()) > 0
  for field in ("tokens", "valid", "loss_mask", "positions", "length", "num_generated", "answered"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)), err_msg=field)
  for a, b in zip(jax.tree.leaves(got.actions), jax.tree.leaves(want.actions)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(got.logp), np.asarray(want.logp), atol=1e-5, rtol=1e-6)
