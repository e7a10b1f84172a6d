"""The VLM: token embedding, vision tower, merge of vision embeddings into the sequence, decoder, LM head.

Pure functions over a params pytree (`{"params": ...}` of the Linen module `Qwen25VL`); all jittable.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from videor4_jax.model.config import ModelConfig
from videor4_jax.model.rope_index import IMAGE, VIDEO, mrope_positions
from videor4_jax.model.text import KVCache, TextDecoder, cache_slot_axis, init_cache  # noqa: F401  (re-exported)
from videor4_jax.model.vision import VisionTower


class Qwen25VL(nn.Module):
  config: ModelConfig

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.text.vocab_size, c.text.hidden_size, dtype=jnp.dtype(c.dtype),
                          param_dtype=jnp.dtype(c.param_dtype),
                          embedding_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                                      ("vocab", "embed")))
    self.visual = VisionTower(c)
    self.decoder = TextDecoder(c)
    if not c.tie_word_embeddings:
      self.lm_head = nn.Dense(c.text.vocab_size, use_bias=False, dtype=jnp.dtype(c.dtype),
                              param_dtype=jnp.dtype(c.param_dtype),
                              kernel_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                                       ("embed", "vocab")))

  def embed_tokens(self, ids):
    return self.embed(ids)

  def encode_vision(self, pixel_values, grid_thw):
    return self.visual(pixel_values, grid_thw)

  def decode(self, x_btd, positions_3bt, mask_bqk, cache_kv=None, write_index=None, rows=None):
    return self.decoder(x_btd, positions_3bt, mask_bqk, cache_kv, write_index, rows)

  def head_weight(self):
    if self.config.tie_word_embeddings:
      return self.embed.embedding.T
    return self.lm_head.variables["params"]["kernel"]

  def __call__(self, ids, positions_3bt, mask_bqk, pixel_values, grid_thw):
    """Used only to initialize every parameter."""
    x = self.embed_tokens(ids)
    x = x + self.encode_vision(pixel_values, grid_thw).sum() * 0
    h, _ = self.decode(x, positions_3bt, mask_bqk)
    if self.config.tie_word_embeddings:
      return self.embed.attend(h)
    return self.lm_head(h)


def init_params(config: ModelConfig, key: jax.Array):
  """Random parameters (boxed logical-axis metadata removed): `{"params": ...}`."""
  v = config.vision
  n = 4 * v.spatial_merge_size ** 2
  pv = jnp.zeros((n, v.patch_dim), jnp.float32)
  grid = jnp.array([[1, v.spatial_merge_size * 2, v.spatial_merge_size * 2]], jnp.int32)
  ids = jnp.zeros((1, 4), jnp.int32)
  pos = jnp.zeros((3, 1, 4), jnp.int32)
  mask = jnp.ones((1, 4, 4), bool)
  return nn.unbox(Qwen25VL(config).init(key, ids, pos, mask, pv, grid))


def _module(config):
  return Qwen25VL(config)


def embed_tokens(config, params, ids_bt):
  return _module(config).apply(params, ids_bt, method=Qwen25VL.embed_tokens)


def encode_vision(config, params, pixel_values, grid_thw):
  """`[N, patch_dim]`, `[n, 3]` -> merged embeddings `[N / 4, D]`."""
  return _module(config).apply(params, pixel_values, grid_thw, method=Qwen25VL.encode_vision)


def head_weight(config, params):
  """LM head as `[D, V]` (the embedding transposed when tied)."""
  return _module(config).apply(params, method=Qwen25VL.head_weight)


def logits(config, params, hidden):
  w = head_weight(config, params)
  return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)


def attention_mask_for(token_valid_bt, cache: KVCache | None, write_index_b):
  """Slot mask `[B, T, S]`: query slot q sees key slot s iff valid[s] and s <= q."""
  b, t = token_valid_bt.shape
  if cache is None:
    q = jnp.arange(t)
    return token_valid_bt[:, None, :] & (q[None, None, :] <= q[None, :, None])
  s = cache.valid.shape[1]
  q_slot = write_index_b[:, None] + jnp.arange(t)[None]                                   # [B, T]
  k_slot = jnp.arange(s)
  return (cache.valid[:, None, :] | False) & (k_slot[None, None, :] <= q_slot[:, :, None])


def decode(config: ModelConfig, params, inputs_embeds, positions, token_valid, cache: KVCache | None = None,
           write_index=None, rows=None):
  """Runs the decoder. Returns `(hidden [B, T, D] after the final norm, cache)`; see text.py for slot semantics.

  rows (optional `[B]` int32): the chunk's B rows are rows `rows` of a larger cache (distinct): they read and
  write only those cache rows, the others are untouched (the rollout's observation turn of the callers only).
  """
  token_valid = jnp.asarray(token_valid, bool)
  if cache is None:
    mask = attention_mask_for(token_valid, None, None)
    hidden, _ = _module(config).apply(params, inputs_embeds, positions, mask, method=Qwen25VL.decode)
    return hidden, None
  write_index = jnp.broadcast_to(jnp.asarray(write_index, jnp.int32), token_valid.shape[:1])     # [B]
  rows_valid = cache.valid if rows is None else cache.valid[rows]
  rows_valid = jax.vmap(lambda v, u, o: jax.lax.dynamic_update_slice_in_dim(v, u, o, axis=0))(
      rows_valid, token_valid, write_index)
  new_valid = rows_valid if rows is None else cache.valid.at[rows].set(rows_valid)
  mask = attention_mask_for(token_valid, cache.replace(valid=rows_valid), write_index)
  hidden, (k, v) = _module(config).apply(params, inputs_embeds, positions, mask, (cache.k, cache.v), write_index,
                                         rows, method=Qwen25VL.decode)
  return hidden, KVCache(k=k, v=v, valid=new_valid)


def merge_vision(input_ids_bt, embeds_btd, image_embeds=None, video_embeds=None, *, image_token_id,
                 video_token_id):
  """HF semantics: the k-th image (video) pad token in flattened `[B*T]` order takes row k of the embeddings."""
  b, t, d = embeds_btd.shape
  flat_ids = input_ids_bt.reshape(-1)
  out = embeds_btd.reshape(b * t, d)
  for tok, emb in ((image_token_id, image_embeds), (video_token_id, video_embeds)):
    if emb is None:
      continue
    is_tok = flat_ids == tok
    k = jnp.clip(jnp.cumsum(is_tok) - 1, 0, emb.shape[0] - 1)
    out = jnp.where(is_tok[:, None], emb[k].astype(out.dtype), out)
  return out.reshape(b, t, d)


def merge_row_vision(tokens_embeds_bsd, is_vision_bs, embeds_bnd, valid_bn):
  """Per-row merge: the k-th vision token of row b takes the k-th valid embedding of row b.

  embeds_bnd `[B, N, D]` with validity `valid_bn [B, N]` (padding items interleaved); is_vision_bs `[B, S]`.
  """
  order = jnp.argsort(~valid_bn, axis=1, stable=True)                                 # valid first, in order
  compact = jnp.take_along_axis(embeds_bnd, order[..., None], axis=1)
  k = jnp.clip(jnp.cumsum(is_vision_bs, axis=1) - 1, 0, compact.shape[1] - 1)
  picked = jnp.take_along_axis(compact, k[..., None], axis=1)
  return jnp.where(is_vision_bs[..., None], picked.astype(tokens_embeds_bsd.dtype), tokens_embeds_bsd)


def forward(config: ModelConfig, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
            pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None):
  """HF-style forward: logits `[B, T, V]` (float32). Pure and jittable (positions computed in-graph)."""
  input_ids = jnp.asarray(input_ids, jnp.int32)
  b, t = input_ids.shape
  valid = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
  x = embed_tokens(config, params, input_ids)
  image_embeds = None if pixel_values is None else encode_vision(config, params, pixel_values, image_grid_thw)
  video_embeds = (None if pixel_values_videos is None
                  else encode_vision(config, params, pixel_values_videos, video_grid_thw))
  x = merge_vision(input_ids, x, image_embeds, video_embeds, image_token_id=config.image_token_id,
                   video_token_id=config.video_token_id)
  if image_grid_thw is None and video_grid_thw is None:
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (3, b, t))   # HF: plain arange without grids
  else:
    types = jnp.where(input_ids == config.image_token_id, IMAGE,
                      jnp.where(input_ids == config.video_token_id, VIDEO, 0))
    positions, _ = mrope_positions(config, types, valid, image_grid_thw=image_grid_thw,
                                   video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts)
  hidden, _ = decode(config, params, x, positions, valid)
  return logits(config, params, hidden)


def unstack_layers(config: ModelConfig, params):
  """Scanned-layout params (`decoder/layers`, `visual/blocks` stacked on a leading layer axis) -> the layout of
  `config.replace(scan_layers=False)` (`layers_0`, `layers_1`, ...). The same weights: an unrolled model over the
  result computes what the scanned one computes (up to float summation order)."""
  out = jax.tree.map(lambda x: x, params)             # a new tree of dicts; arrays shared until sliced
  for tower, group, depth in (("decoder", "layers", config.text.num_hidden_layers),
                              ("visual", "blocks", config.vision.depth)):
    node = out["params"][tower]
    if group not in node:
      raise ValueError(f"unstack_layers: params[{tower!r}] has no stacked {group!r} (already unrolled?)")
    stacked = node.pop(group)
    for i in range(depth):
      node[f"{group}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def cpu_setting(config: ModelConfig, params):
  """(config, params) in the layout XLA:CPU runs fastest, the same weights and math: unrolled layers
  (`unstack_layers`: no per-layer copy of the weights out of the stack) and `ModelConfig.cpu_layouts` (the
  decoder's dense layers on flat token rows: no transposing copy per weight gradient; attention dots with batch
  axes leading; a head-major KV cache). The TPU path keeps the scanned, `[B, T, D]` default. Measured in bench/train_step.py and
  bench/rollout.py (docs/BENCHMARKS.md)."""
  return config.replace(scan_layers=False, cpu_layouts=True), unstack_layers(config, params)
