"""Analytic FLOP / byte counts and the roofline for the AOT fit check (train/aot.py; pure arithmetic).

Conventions (PaLM appendix B): a matmul with N weights costs 2 N flops per token forward, 4 N backward; attention
over a context of C keys costs 4 C H Dh flops per query token and layer forward (QK^T and AV; the full C, as our
masked attention computes it). Model flops of a train step = 3 x forward (+ the frozen reference forward of GRPO);
hardware flops add what rematerialization recomputes. The roofline time of a phase is the largest of
compute / peak, HBM bytes / HBM bandwidth and ICI bytes / ICI bandwidth (perfect overlap: a lower bound on the
step time, so the MFU it gives is an upper bound). cost_analysis() of a scanned graph counts each scan or while
body once, so these analytic counts, not XLA's, feed the roofline. The vision count is the
model's (window blocks attend within a window); our tower computes window attention as a masked [N, N] product
per item, which XLA's hardware count would show as more flops.
"""
from __future__ import annotations

import dataclasses

# Per chip: peak bf16 FLOP/s, HBM bytes/s, HBM bytes, ICI bytes/s (public spec sheets: v5p 459 TFLOP/s,
# 2765 GB/s, 95 GB, 4800 Gbps ICI; v5e 197 TFLOP/s, 819 GB/s, 16 GB, 1600 Gbps; v4 275, 1200, 32 GB, 2400 Gbps;
# v6e 918, 1640, 32 GB, 3584 Gbps).
CHIPS = {"v5p": (459e12, 2.765e12, 95e9, 600e9), "v5e": (197e12, 0.819e12, 16e9, 200e9),
         "v4": (275e12, 1.2e12, 32e9, 300e9), "v6e": (918e12, 1.64e12, 32e9, 448e9)}


@dataclasses.dataclass(frozen=True)
class Dims:
  """Model sizes the counts need. n_text: text-decoder matmul weights incl. the LM head (not the embedding
  table, a gather); n_vis: vision-tower weights; n_all: every parameter."""
  n_text: int
  n_head: int
  n_vis: int
  n_all: int
  layers: int
  q_heads: int
  head_dim: int
  vis_hidden: int
  vis_depth: int
  vis_full_blocks: int
  vis_window_patches: int


def vision_fwd(d: Dims, groups: int, patches_per_group: int) -> float:
  """One item (image or video) of `groups` temporal groups x `patches_per_group` patches through the tower."""
  n = groups * patches_per_group
  attn_full = 4 * groups * patches_per_group ** 2 * d.vis_hidden * d.vis_full_blocks
  attn_win = 4 * n * min(d.vis_window_patches, patches_per_group) * d.vis_hidden * (d.vis_depth - d.vis_full_blocks)
  return 2 * d.n_vis * n + attn_full + attn_win


def text_fwd(d: Dims, tokens: int, context: int, head_tokens: int | None = None) -> float:
  """`tokens` query tokens over `context` keys; the LM head on `head_tokens` of them (default all)."""
  head_tokens = tokens if head_tokens is None else head_tokens
  return (2 * (d.n_text - d.n_head) * tokens + 2 * d.n_head * head_tokens
          + 4 * tokens * context * d.q_heads * d.head_dim * d.layers)


def train_step(d: Dims, *, rows: int, seq: int, vision_items: list[tuple[int, int]], remat: str, ref_forward: bool):
  """Flops of one SFT (ref_forward=False) or GRPO step; vision_items: (groups, patches/group) per row."""
  t_fwd = rows * text_fwd(d, seq, seq)
  v_fwd = rows * sum(vision_fwd(d, g, p) for g, p in vision_items)
  attn = rows * 4 * seq * seq * d.q_heads * d.head_dim * d.layers
  v_attn = v_fwd - rows * sum(2 * d.n_vis * g * p for g, p in vision_items)
  model = 3 * (t_fwd + v_fwd) + (t_fwd + v_fwd if ref_forward else 0)
  # decoder layers and vision blocks are rematerialized: "full" recomputes their forward, "dots" keeps the
  # weight matmuls and recomputes attention (its dots have batch dims)
  recompute = {"full": t_fwd + v_fwd, "dots": attn + v_attn, "none": 0.0}[remat]
  recompute += 2 * d.n_head * rows * seq                             # the chunked log-prob head (jax.checkpoint)
  return dict(model_flops=model, hw_flops=model + recompute)


def roofline(flops_dev, hbm_dev, ici_dev, chip):
  peak, bw, _, ici = CHIPS[chip]
  t = dict(compute_s=flops_dev / peak, hbm_s=hbm_dev / bw, ici_s=ici_dev / ici)
  return max(t.values()), t


def train_bytes(d: Dims, *, n_dev: int, fsdp: int, tensor: int, passes: int, param_bytes: int = 4):
  """Per-device bytes of one train step with FSDP over `fsdp` and Megatron over `tensor`:
  HBM: every weight pass reads the gathered weights of this device's tensor shard; the update reads and writes
  params, grads and two Adam moments (f32) of the local shard. ICI: all-gather of the weights per pass and a
  reduce-scatter of the f32 gradients over the fsdp axis (ring: (f - 1) / f of the shard group's bytes)."""
  local_full = d.n_all * param_bytes / tensor
  hbm = passes * local_full + 7 * 4 * d.n_all / n_dev
  ring = (fsdp - 1) / fsdp
  ici = (passes * local_full + 4 * d.n_all / tensor) * ring
  return hbm, ici


def rollout_phases(d: Dims, *, rows: int, prompt: int, cache: int, steps: int, step_tokens: int, obs_tokens: int,
                   video_items: tuple[int, int], obs_items: tuple[int, int], n_dev: int, batch_shards: int,
                   tensor: int, fsdp: int, kv_bytes_per_slot: int, param_bytes: int = 2):
  """(name, flops, hbm bytes, ici bytes) per device for each phase of the rollout, worst case (every row decodes
  all T tokens of every step and every step returns an observation). Decode reads this device's weights and
  its rows' KV cache once per token (batch split over data x fsdp, weights over fsdp x tensor)."""
  local_rows = rows / batch_shards
  w_local = d.n_all * param_bytes / tensor                       # weights a device reads per pass (gathered)
  gather = d.n_all * param_bytes / tensor * (fsdp - 1) / fsdp
  kv_local = local_rows * cache * kv_bytes_per_slot / tensor
  vis = rows * vision_fwd(d, *video_items) + rows * steps * vision_fwd(d, *obs_items)
  pre = rows * text_fwd(d, prompt, cache, head_tokens=1)
  obs = rows * steps * text_fwd(d, obs_tokens, cache, head_tokens=1)
  dec = rows * steps * step_tokens * text_fwd(d, 1, cache)
  n_tok = steps * step_tokens
  return [("vision", vis / n_dev, w_local, gather * (1 + steps)),
          ("prefill", pre / n_dev, w_local + kv_local, gather),
          ("observation_prefill", obs / n_dev, steps * (w_local + kv_local), steps * gather),
          ("decode", dec / n_dev, n_tok * (w_local + kv_local), n_tok * gather)]


def dims_of(config, params_shapes) -> Dims:
  """Dims of a ModelConfig from its parameter shapes (`jax.eval_shape(vlm.init_params, ...)`: any tree whose
  leaves have `.shape`)."""
  import numpy as np
  p = params_shapes["params"]
  count = lambda t: sum(int(np.prod(x.shape)) for x in _leaves(t))
  n_all, n_vis, n_emb = count(p), count(p["visual"]), count(p["embed"])
  n_head = int(np.prod(p["lm_head"]["kernel"].shape)) if "lm_head" in p else n_emb
  t, v = config.text, config.vision
  return Dims(n_text=n_all - n_vis - n_emb, n_head=n_head, n_vis=n_vis, n_all=n_all, layers=t.num_hidden_layers,
              q_heads=t.num_attention_heads, head_dim=t.head_dim, vis_hidden=v.hidden_size, vis_depth=v.depth,
              vis_full_blocks=len(v.fullatt_block_indexes), vis_window_patches=(v.window_size // v.patch_size) ** 2)


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree
