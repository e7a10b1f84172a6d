"""A one-minute smoke run of the model stack on the default tiny config (no data, no download):

random tiny Qwen2.5-VL -> a synthetic text-rich video -> jitted forward -> greedy KV-cache decode of a few tokens
-> save as an HF directory and load it back. Prints what it did and the timings. `python -m videor4_jax.smoke`.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from videor4_jax.processing.image import patch_layout


def main() -> int:
  sys.path.insert(0, os.getcwd())
  import videor4_jax
  from configs import tiny
  from videor4_jax.data.synthetic import SyntheticConfig, generate
  from videor4_jax.model import rope_index, vlm
  from videor4_jax.processing.tokenizer import Tokenizer
  from videor4_jax.convert.resolve import build_model_config

  t0 = time.time()
  c = tiny.get_config()
  tk = Tokenizer.tiny()
  config = build_model_config(c, tk)       # special token ids from the tokenizer (inside the vocabulary)
  params = vlm.init_params(config, jax.random.key(c.seed))
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"tiny model: {n:,} parameters ({time.time() - t0:.1f}s)")

  ex = generate(SyntheticConfig(), seed=0, index=0)
  frames = ex.frames_fhw3
  f, h, w = frames.shape[0], 56, 56
  small = jax.image.resize(jnp.asarray(frames, jnp.float32), (f, h, w, 3), "bilinear")
  v = config.vision
  gt, gh, gw = f // v.temporal_patch_size, h // v.patch_size, w // v.patch_size
  pixels = np.asarray(patch_layout(small / 255.0, patch=v.patch_size, temporal=v.temporal_patch_size,
                                   merge=v.spatial_merge_size), np.float32)
  grid = np.array([[gt, gh, gw]])
  ids = np.array([tk.encode("Read") + [tk.vision_start_id] + [tk.video_pad_id] * (gt * gh * gw // 4)
                  + [tk.vision_end_id] + tk.encode("it.")])
  t0 = time.time()
  logits = jax.jit(lambda p, i, px: videor4_jax.forward(config, p, i, pixel_values_videos=px, video_grid_thw=grid))(
      params, ids, pixels)
  finite = bool(jnp.isfinite(logits).all())
  print(f"forward on a {f}-frame synthetic video ({ids.shape[1]} tokens): logits {logits.shape} "
        f"finite={finite} ({time.time() - t0:.1f}s incl. compile)")

  cache = vlm.init_cache(config, 1, ids.shape[1] + 8)
  pos, counter = rope_index.mrope_positions(config, rope_index.mm_token_types(config, ids), None,
                                            video_grid_thw=grid)
  emb = vlm.merge_vision(jnp.asarray(ids), vlm.embed_tokens(config, params, jnp.asarray(ids)), None,
                         vlm.encode_vision(config, params, pixels, grid), image_token_id=tk.image_pad_id,
                         video_token_id=tk.video_pad_id)
  hid, cache = vlm.decode(config, params, emb, pos, jnp.ones(ids.shape, bool), cache, jnp.zeros((1,), jnp.int32))
  tok, out, write = jnp.argmax(vlm.logits(config, params, hid[:, -1]), -1), [], ids.shape[1]
  for _ in range(8):
    out.append(int(tok[0]))
    hid, cache = vlm.decode(config, params, vlm.embed_tokens(config, params, tok[:, None]),
                            jnp.broadcast_to(counter[None, :, None], (3, 1, 1)), jnp.ones((1, 1), bool), cache,
                            jnp.full((1,), write, jnp.int32))
    tok, counter, write = jnp.argmax(vlm.logits(config, params, hid[:, 0]), -1), counter + 1, write + 1
  print(f"greedy KV-cache decode: {out}")
  with tempfile.TemporaryDirectory() as d:
    videor4_jax.save_pretrained(d, config, params)
    config2, params2 = videor4_jax.from_pretrained(d)
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)))
    print(f"HF-format save + load round trip: identical={same} ({sorted(os.listdir(d))})")
  return 0 if finite and same else 1


if __name__ == "__main__":
  sys.exit(main())
