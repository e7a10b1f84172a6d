"""Flax Qwen2.5-VL equals HF transformers on the same random weights: logits, rope index, modules, generation."""
import re

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import videor4_jax
from hf_tiny import make_tiny_hf_checkpoint, random_patches
from videor4_jax.model import rope_index, vlm
from videor4_jax.model.text import DecoderLayer, mrope_cos_sin
from videor4_jax.model.vision import PatchMerger

IMG, VID, VS, VE = 990, 991, 992, 993
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  from transformers import Qwen2_5_VLForConditionalGeneration
  path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("hf") / "tiny")
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
  config, params = videor4_jax.from_pretrained(path)
  return hf, config, params


def _vision(kind, grid):
  n = grid[0] * grid[1] * grid[2] // 4
  return [VS] + [IMG if kind == "image" else VID] * n + [VE]


def _case(name, rng):
  """(input_ids [B, T], attention_mask, images [(grid)], videos [(grid)], second_per_grid_ts)."""
  text = lambda n: list(rng.integers(3, 900, size=n))
  if name == "text":
    return np.array([text(24)]), None, [], [], None
  if name == "image":
    g = (1, 4, 6)
    return np.array([text(3) + _vision("image", g) + text(5)]), None, [g], [], None
  if name == "images":
    g1, g2 = (1, 4, 4), (1, 6, 4)
    return np.array([text(2) + _vision("image", g1) + text(4) + _vision("image", g2) + text(3)]), None, [g1, g2], [], None
  if name == "video":
    g = (2, 8, 12)   # 2 temporal groups, non-square, several windows per frame
    return np.array([text(4) + _vision("video", g) + text(6)]), None, [], [g], [1.5]
  if name == "long_mixed":
    gi, gv = (1, 8, 8), (4, 12, 16)
    ids = text(40) + _vision("image", gi) + text(110) + _vision("video", gv) + text(150)
    assert len(ids) >= 512
    return np.array([ids]), None, [gi], [gv], [0.5]
  if name == "two_videos":
    # Two videos; 2 tokens/s x 0.75 s and x 0.3 s are not integers, so HF truncates t * interval (0, 1, 3 / 0, 0, 1).
    g1, g2 = (3, 4, 4), (3, 4, 8)
    return (np.array([text(3) + _vision("video", g1) + text(2) + _vision("video", g2) + text(3)]), None, [],
            [g1, g2], [0.75, 0.3])
  if name == "left_padded":
    g0, g1 = (1, 4, 4), (1, 4, 8)
    row0 = text(3) + _vision("image", g0) + text(4)
    row1 = text(5) + _vision("image", g1) + text(6)
    width = max(len(row0), len(row1))
    rows, mask = [], []
    for r in (row0, row1):
      pad = width - len(r)
      rows.append([2] * pad + r)
      mask.append([0] * pad + [1] * len(r))
    return np.array(rows), np.array(mask), [g0, g1], [], None
  raise ValueError(name)


CASES = ["text", "image", "images", "video", "long_mixed", "left_padded", "two_videos"]


def _run_both(pair, name, seed=0):
  hf, config, params = pair
  rng = np.random.default_rng(seed)
  ids, mask, images, videos, spg = _case(name, rng)
  pv = random_patches(rng, images) if images else None
  pvv = random_patches(rng, videos) if videos else None
  types = rope_index.mm_token_types(config, ids)
  kw = dict(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(types))
  if mask is not None:
    kw["attention_mask"] = torch.tensor(mask)
  if images:
    kw.update(pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(images))
  if videos:
    kw.update(pixel_values_videos=torch.tensor(pvv), video_grid_thw=torch.tensor(videos))
  if spg is not None:
    kw["second_per_grid_ts"] = torch.tensor(spg)
  hf.model.rope_deltas = None
  with torch.no_grad():
    ref = hf(**kw).logits.numpy()
  ours = jax.jit(lambda p, *a: videor4_jax.forward(config, p, *a))(
      params, ids, mask, pv, None if not images else np.array(images), pvv,
      None if not videos else np.array(videos), None if spg is None else np.array(spg, np.float32))
  valid = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
  return np.asarray(ours), ref, valid, (ids, types, images, videos, spg, mask)


@pytest.mark.parametrize("name", CASES)
def test_logits_match_hf(pair, name):
  ours, ref, valid, _ = _run_both(pair, name)
  diff = np.abs(ours - ref)[valid].max()
  print(f"parity logits {name}: max|diff|={diff:.2e} (max|logit|={np.abs(ref).max():.1f})")
  assert diff <= LOGIT_TOL, f"{name}: max |logits diff| {diff:.2e}"


@pytest.mark.parametrize("name", CASES)
def test_rope_index_matches_hf(pair, name):
  hf, config, _ = pair
  ids, mask, images, videos, spg = _case(name, np.random.default_rng(0))
  types = rope_index.mm_token_types(config, ids)
  kw = dict(mm_token_type_ids=torch.tensor(types),
            image_grid_thw=torch.tensor(images) if images else None,
            video_grid_thw=torch.tensor(videos) if videos else None,
            second_per_grid_ts=torch.tensor(spg) if spg else None,
            attention_mask=torch.tensor(mask) if mask is not None else None)
  ref_pos, ref_delta = hf.model.get_rope_index(torch.tensor(ids), **kw)
  pos, delta = videor4_jax.get_rope_index(config, ids, types, np.array(images) if images else None,
                                          np.array(videos) if videos else None, spg, mask)
  np.testing.assert_array_equal(pos, ref_pos.numpy())
  np.testing.assert_array_equal(delta, ref_delta.numpy())
  if name == "two_videos":   # the case exercises truncation: per temporal group t offsets 0, 1, 3 and 0, 0, 1
    t = pos[0, 0][types[0] == 2]
    v1, v2 = t[:12] - t[0], t[12:] - t[12]
    assert v1[::4].tolist() == [0, 1, 3] and v2[::8].tolist() == [0, 0, 1]


def test_rope_chunks_continue_from_counter(pair):
  """Positions of a conversation computed in pieces (prompt, then appended chunks) equal the one-shot ones."""
  _, config, _ = pair
  rng = np.random.default_rng(3)
  g1, g2 = (2, 4, 8), (1, 8, 4)
  pieces = [([5] * 3 + _vision("video", g1) + [6] * 4, [], [g1]), ([7] * 2 + _vision("image", g2) + [8] * 1, [g2], []),
            ([9] * 5, [], [])]
  full = sum((p[0] for p in pieces), [])
  ref, _ = videor4_jax.get_rope_index(config, np.array([full]), image_grid_thw=np.array([g2]),
                                      video_grid_thw=np.array([g1]))
  start, got = jnp.zeros((1,), jnp.int32), []
  for ids, imgs, vids in pieces:
    ids = np.array([ids])
    pos, start = rope_index.mrope_positions(config, rope_index.mm_token_types(config, ids), None,
                                            image_grid_thw=np.array(imgs) if imgs else None,
                                            video_grid_thw=np.array(vids) if vids else None, start_b=start)
    got.append(np.asarray(pos))
  np.testing.assert_array_equal(np.concatenate(got, axis=-1), ref)
  del rng


def test_vision_tower_and_merger_match_hf(pair):
  hf, config, params = pair
  rng = np.random.default_rng(1)
  grids = [(2, 8, 12), (1, 4, 4)]
  pv = random_patches(rng, grids)
  with torch.no_grad():
    ref = hf.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grids)).pooler_output.numpy()
  ours = np.asarray(vlm.encode_vision(config, params, pv, np.array(grids)))
  d_tower = np.abs(ours - ref).max()
  print(f"parity vision tower: max|diff|={d_tower:.2e}")
  assert d_tower <= 1e-5
  # Padding patches appended after the valid ones change nothing (the rollout pads observations).
  padded = np.concatenate([pv, rng.normal(size=(16, pv.shape[1])).astype(np.float32)])
  ours_pad = np.asarray(vlm.encode_vision(config, params, padded, np.array(grids)))
  d_pad = np.abs(ours_pad[:len(ours)] - ours).max()
  print(f"parity vision padding patches: max|diff|={d_pad:.2e}")
  assert d_pad <= 1e-6
  x = rng.normal(size=(24, config.vision.hidden_size)).astype(np.float32)
  with torch.no_grad():
    ref_m = hf.model.visual.merger(torch.tensor(x)).numpy()
  ours_m = PatchMerger(config).apply({"params": params["params"]["visual"]["merger"]}, x)
  d_merger = np.abs(np.asarray(ours_m) - ref_m).max()
  print(f"parity merger: max|diff|={d_merger:.2e}")
  assert d_merger <= 1e-5


def test_one_decoder_layer_matches_hf(pair):
  hf, config, params = pair
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 12, config.text.hidden_size)).astype(np.float32)
  pos = np.broadcast_to(np.arange(12), (3, 1, 12)).copy()
  pos[1] += 3
  layer0 = jax.tree.map(lambda a: a[0], params["params"]["decoder"]["layers"])
  cos, sin = mrope_cos_sin(config, jnp.asarray(pos))
  mask = jnp.tril(jnp.ones((1, 12, 12), bool))
  (ours, _), _ = DecoderLayer(config).apply({"params": layer0}, (jnp.asarray(x), None), 0, (cos, sin, mask, None, None))
  with torch.no_grad():
    pe = hf.model.language_model.rotary_emb(torch.tensor(x), torch.tensor(pos))
    causal = torch.triu(torch.full((12, 12), torch.finfo(torch.float32).min), 1)[None, None]
    ref = hf.model.language_model.layers[0](torch.tensor(x), attention_mask=causal, position_embeddings=pe)
    ref = ref[0] if isinstance(ref, tuple) else ref
  d = np.abs(np.asarray(ours) - ref.numpy()).max()
  print(f"parity decoder layer: max|diff|={d:.2e}")
  assert d <= 1e-5


@pytest.mark.parametrize("name", ["video", "images"])
def test_cpu_setting_matches_hf_and_the_scanned_layout(pair, name):
  """The CPU setting (vlm.cpu_setting: scan_layers=False and cpu_layouts=True; bench/train_step.py --layers
  unrolled): the scanned params relaid out by vlm.unstack_layers give HF's logits, unrolled alone and with the
  decoder's dense layers on flat token rows."""
  hf, config, params = pair
  ours_scanned, ref, valid, (ids, _, images, videos, spg, mask) = _run_both(pair, name)
  cpu, relaid = vlm.cpu_setting(config, params)
  assert (cpu.scan_layers, cpu.cpu_layouts) == (False, True)
  unrolled = config.replace(scan_layers=False)
  assert "layers" not in relaid["params"]["decoder"] and "layers" in params["params"]["decoder"]
  rng = np.random.default_rng(0)
  _case(name, rng)                                   # the same draws as _run_both: the same patches
  pv = random_patches(rng, images) if images else None
  pvv = random_patches(rng, videos) if videos else None
  args = (ids, mask, pv, None if not images else np.array(images), pvv, None if not videos else np.array(videos),
          None if spg is None else np.array(spg, np.float32))
  for run_config in (unrolled, cpu):
    ours = np.asarray(jax.jit(lambda p, *a: videor4_jax.forward(run_config, p, *a))(relaid, *args))
    assert np.abs(ours - ref)[valid].max() <= LOGIT_TOL
    assert np.abs(ours - ours_scanned)[valid].max() <= 1e-5
  with pytest.raises(ValueError, match="no stacked 'layers'"):
    vlm.unstack_layers(config, relaid)


@pytest.mark.parametrize("name,q_chunk", [("long_mixed", 96), ("left_padded", 8)])
def test_query_chunked_attention_matches_hf(pair, name, q_chunk):
  """attention_q_chunk (the 7B recipe's memory setting) gives HF's logits; the chunks do not divide the length,
  so the padded, fully masked query rows are exercised too (and left padding masks whole rows)."""
  hf, config, params = pair
  full, ref, valid, (ids, _, images, videos, spg, mask) = _run_both(pair, name)
  assert ids.shape[1] % q_chunk != 0
  rng = np.random.default_rng(0)
  _case(name, rng)
  pv = random_patches(rng, images) if images else None
  pvv = random_patches(rng, videos) if videos else None
  args = (ids, mask, pv, None if not images else np.array(images), pvv, None if not videos else np.array(videos),
          None if spg is None else np.array(spg, np.float32))
  chunked = config.replace(attention_q_chunk=q_chunk)
  ours = np.asarray(jax.jit(lambda p, *a: videor4_jax.forward(chunked, p, *a))(params, *args))
  assert np.abs(ours - ref)[valid].max() <= LOGIT_TOL
  assert np.abs(ours - full)[valid].max() <= 1e-5


def test_query_chunked_attention_gradients_equal_whole():
  """Gradients through the chunked, rematerialized attention equal the whole-sequence ones (fully masked rows
  included), and the chunked backward never holds the whole [B, H, Q, K] scores: its jaxpr has no array of
  that size."""
  from videor4_jax.model.layers import masked_attention
  rng = np.random.default_rng(3)
  b, q_len, h, hkv, d = 2, 37, 4, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, q_len, n, d)), jnp.float32) for n in (h, hkv, hkv))
  mask = np.tril(np.ones((q_len, q_len), bool))[None].repeat(b, 0)
  mask[1, :5] = False                                   # padding rows: fully masked
  w = jnp.asarray(rng.normal(size=(b, q_len, h, d)), jnp.float32)
  loss = lambda chunk: lambda q, k, v: (masked_attention(q, k, v, mask, scale=0.3, q_chunk=chunk) * w).sum()
  whole = jax.grad(loss(0), argnums=(0, 1, 2))(q, k, v)
  chunked = jax.grad(loss(8), argnums=(0, 1, 2))(q, k, v)
  for a, c in zip(whole, chunked):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)
  scores_whole = re.compile(rf"f32\[[0-9,]*{q_len},{q_len}\]")         # float [..., Q, K] arrays
  assert scores_whole.search(str(jax.make_jaxpr(jax.grad(loss(0)))(q, k, v)))
  assert not scores_whole.search(str(jax.make_jaxpr(jax.grad(loss(8)))(q, k, v)))


@pytest.mark.parametrize("q_chunk", [0, 8])
def test_batch_major_attention_equals_the_einsum_form(q_chunk):
  """masked_attention(batch_major=True) (ModelConfig.cpu_layouts) gives the einsum form's outputs and gradients,
  with grouped KV heads, a query block that is not the key length (as over a cache prefix), fully masked rows and
  query chunks."""
  from videor4_jax.model.layers import masked_attention
  rng = np.random.default_rng(4)
  b, q_len, k_len, h, hkv, d = 2, 21, 29, 6, 2, 8
  q = jnp.asarray(rng.normal(size=(b, q_len, h, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, k_len, hkv, d)), jnp.float32) for _ in range(2))
  mask = rng.random((b, q_len, k_len)) < 0.6
  mask[0, 3] = False                                    # a fully masked row
  w = jnp.asarray(rng.normal(size=(b, q_len, h, d)), jnp.float32)

  def loss(batch_major):
    return lambda q, k, v: (masked_attention(q, k, v, mask, scale=0.3, q_chunk=q_chunk,
                                             batch_major=batch_major) * w).sum()
  val_e, grads_e = jax.value_and_grad(loss(False), argnums=(0, 1, 2))(q, k, v)
  val_b, grads_b = jax.value_and_grad(loss(True), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(float(val_b), float(val_e), rtol=1e-5)
  for a, c in zip(grads_e, grads_b):
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-5)
  out = masked_attention(q, k, v, mask, scale=0.3, batch_major=True)
  # each head reads its own KV group: head 5 (group 1) against a direct per-head softmax
  s = np.einsum("qd,kd->qk", np.asarray(q[1, :, 5]), np.asarray(k[1, :, 1])) * 0.3
  s = np.where(mask[1], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out[1, :, 5]), p @ np.asarray(v[1, :, 1]), rtol=1e-5, atol=1e-5)
