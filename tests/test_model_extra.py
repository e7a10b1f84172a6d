"""KV-cache decoding, HF round trip, sharding, parameter counts, bf16 and loading errors."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
import videor4_jax
from hf_tiny import greedy_ours, make_tiny_hf_checkpoint, random_patches
from videor4_jax.convert.hf import CheckpointError
from videor4_jax.model import rope_index, vlm
from videor4_jax.model.config import model_config_from_dict
from videor4_jax.parallel.sharding import make_mesh, param_shardings, use_mesh

IMG, VS, VE = 990, 992, 993


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  from transformers import Qwen2_5_VLForConditionalGeneration
  path = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("hf") / "tiny", seed=1)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
  config, params = videor4_jax.from_pretrained(path)
  return path, hf, config, params


def _image_prompt(rng, grid=(1, 4, 6)):
  n = grid[0] * grid[1] * grid[2] // 4
  ids = [5, 6, VS] + [IMG] * n + [VE] + list(rng.integers(3, 900, size=6))
  return np.array([ids]), random_patches(rng, [grid]), np.array([grid])


def test_greedy_generation_with_cache_equals_hf_generate(ckpt):
  _, hf, config, params = ckpt
  ids, pv, grid = _image_prompt(np.random.default_rng(0))
  steps = 32
  hf.model.rope_deltas = None
  hf.generation_config.eos_token_id = None
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
                      mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64)), max_new_tokens=steps,
                      do_sample=False)[0, ids.shape[1]:].numpy()
  assert (config.image_token_id, config.video_token_id) == (IMG, 991)
  out = greedy_ours(config, params, ids, pv, grid, steps)
  np.testing.assert_array_equal(np.array(out), ref)


@pytest.mark.parametrize("setting", ["default", "cpu"])
def test_cached_decode_equals_full_recompute_with_per_row_offsets(ckpt, setting):
  """Rows appended at different slots (as in the rollout) give the same logits as a no-cache forward; also in the
  CPU setting (vlm.cpu_setting: unrolled layers, dense layers on flat token rows), which the rollout benches run."""
  _, _, config, params = ckpt
  if setting == "cpu":
    config, params = vlm.cpu_setting(config, params)
  rng = np.random.default_rng(5)
  lens = [7, 11]
  total = 16
  seqs = [rng.integers(3, 900, size=total) for _ in lens]
  full = []
  for s in seqs:
    x = vlm.embed_tokens(config, params, jnp.asarray(s[None]))
    pos = jnp.broadcast_to(jnp.arange(total), (3, 1, total))
    h, _ = vlm.decode(config, params, x, pos, jnp.ones((1, total), bool))
    full.append(np.asarray(vlm.logits(config, params, h))[0])
  # Prefill row b with its first lens[b] tokens (right-padded), then append the rest in two chunks.
  cache = vlm.init_cache(config, 2, 32)
  prompt = np.zeros((2, max(lens)), np.int64)
  valid = np.zeros((2, max(lens)), bool)
  for b, (s, n) in enumerate(zip(seqs, lens)):
    prompt[b, :n], valid[b, :n] = s[:n], True
  pos = jnp.broadcast_to(jnp.arange(max(lens)), (3, 2, max(lens)))
  _, cache = vlm.decode(config, params, vlm.embed_tokens(config, params, jnp.asarray(prompt)), pos,
                        jnp.asarray(valid), cache, jnp.zeros((2,), jnp.int32))
  write = np.array(lens)
  worst = 0.0
  for chunk in (3, 2):
    ids = np.stack([s[w:w + chunk] for s, w in zip(seqs, write)])
    pos = jnp.asarray(write[None, :, None] + np.arange(chunk)[None, None]).repeat(3, 0)
    h, cache = vlm.decode(config, params, vlm.embed_tokens(config, params, jnp.asarray(ids)), pos,
                          jnp.ones((2, chunk), bool), cache, jnp.asarray(write, jnp.int32))
    got = np.asarray(vlm.logits(config, params, h))
    for b in range(2):
      np.testing.assert_allclose(got[b], full[b][write[b]:write[b] + chunk], atol=2e-5, rtol=0)
      worst = max(worst, np.abs(got[b] - full[b][write[b]:write[b] + chunk]).max())
    write = write + chunk
  print(f"cached decode vs full recompute: max|diff|={worst:.2e}")


def test_save_pretrained_loads_in_hf_with_identical_logits(ckpt, tmp_path):
  from transformers import Qwen2_5_VLForConditionalGeneration
  _, hf, config, params = ckpt
  videor4_jax.save_pretrained(str(tmp_path / "out"), config, params)
  hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"),
                                                           attn_implementation="eager").eval()
  ids, pv, grid = _image_prompt(np.random.default_rng(1))
  kw = dict(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
            mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64)))
  with torch.no_grad():
    hf.model.rope_deltas = hf2.model.rope_deltas = None
    a, b = hf(**kw).logits.numpy(), hf2(**kw).logits.numpy()
  np.testing.assert_array_equal(a, b)
  config2, params2 = videor4_jax.from_pretrained(str(tmp_path / "out"))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_sharded_forward_equals_single_device(ckpt):
  from jax.sharding import NamedSharding, PartitionSpec as P
  _, _, config, params = ckpt
  assert jax.device_count() == 8
  mesh = make_mesh((2, 2, 2))
  sharded = jax.device_put(params, param_shardings(config, mesh))
  # The rules really split weights (fsdp on embed, tensor on heads/mlp/vocab), not a replicated copy on 8 devices.
  leaves = jax.tree.leaves(sharded)
  split = [x for x in leaves if not x.sharding.is_fully_replicated]
  assert len(split) > len(leaves) // 2, f"only {len(split)} of {len(leaves)} parameters are sharded"
  emb = sharded["params"]["embed"]["embedding"]
  assert emb.addressable_shards[0].data.size * 4 == emb.size        # split over fsdp (2) x tensor (2)
  ids, pv, grid = _image_prompt(np.random.default_rng(2))
  ids = np.concatenate([ids, ids[:, ::-1]])   # batch 2 (second row: same length, no image tokens in order)
  ids[1] = np.where(ids[1] == IMG, 7, ids[1])
  ids_sharded = jax.device_put(ids, NamedSharding(mesh, P("data")))
  assert not ids_sharded.sharding.is_fully_replicated
  fwd = jax.jit(lambda p, i, v: videor4_jax.forward(config, p, i, pixel_values=v, image_grid_thw=grid))
  with use_mesh(mesh):
    got = fwd(sharded, ids_sharded, pv)
  ref = fwd(params, ids, pv)
  d = np.abs(np.asarray(got) - np.asarray(ref)).max()
  print(f"sharded (2,2,2) forward vs single device: max|diff|={d:.2e}")
  assert d <= 1e-5


# Published counts: metadata.total_size of the bf16 model.safetensors.index.json of Qwen/Qwen2.5-VL-7B-Instruct
# (16,584,333,312 bytes / 2) and Qwen/Qwen2.5-VL-3B-Instruct (tied head; 7,509,245,952 bytes / 2), i.e. the
# "8.29B" / "3.75B" on the model cards.
@pytest.mark.parametrize("size,published", [("7b", 16_584_333_312 // 2), ("3b", 7_509_245_952 // 2)])
def test_param_count_matches_hf_and_published(size, published):
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  spec = importlib.util.spec_from_file_location("cfg", os.path.join("configs", f"videor4_{size}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = model_config_from_dict(mod.get_config().model)
  shapes = jax.eval_shape(lambda: vlm.init_params(config, jax.random.key(0)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  from videor4_jax.convert.hf import config_to_hf_dict
  with torch.device("meta"):
    hf = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config_to_hf_dict(config)))
  assert ours == sum(p.numel() for p in hf.parameters())
  assert ours == published, (ours, published)


def test_bf16_params_run_close_to_fp32(ckpt):
  path, _, config, params = ckpt
  config16, params16 = videor4_jax.from_pretrained(path, dtype=jnp.bfloat16)
  assert jax.tree.leaves(params16)[0].dtype == jnp.bfloat16
  ids, pv, grid = _image_prompt(np.random.default_rng(3))
  a = np.asarray(videor4_jax.forward(config, params, ids, pixel_values=pv, image_grid_thw=grid))
  b = np.asarray(videor4_jax.forward(config16, params16, ids, pixel_values=pv, image_grid_thw=grid))
  assert np.all(np.isfinite(b))
  rel = np.abs(a - b).max() / np.abs(a).max()
  agree = (a.argmax(-1) == b.argmax(-1)).mean()
  print(f"bf16 vs fp32 logits: max|diff|/max|logit|={rel:.2e}, argmax agreement {agree:.2f}")
  # Measured on this prompt (rng 3): 7.7e-3 relative, argmax agreement 16/16; on prompts rng 3-8: 6.5e-3 to
  # 7.8e-3, agreement 16/16 except rng 5 (15/16, a near tie). Bound: about twice the largest; at most one of 16
  # argmaxes may flip.
  assert rel < 0.016, rel
  assert agree >= 15 / 16, agree


def test_loading_errors_name_the_problem(ckpt, tmp_path):
  path, _, _, _ = ckpt
  with pytest.raises(CheckpointError, match="no config.json"):
    videor4_jax.from_pretrained(str(tmp_path))
  from safetensors.numpy import load_file, save_file
  tensors = load_file(os.path.join(path, "model.safetensors"))
  bad = tmp_path / "bad"
  bad.mkdir()
  with open(os.path.join(path, "config.json")) as f:
    (bad / "config.json").write_text(json.dumps(json.load(f)))
  missing = dict(tensors)
  missing.pop("model.layers.1.mlp.up_proj.weight")
  save_file(missing, str(bad / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
    videor4_jax.from_pretrained(str(bad))
  wrong = dict(tensors)
  wrong["visual.merger.mlp.0.bias"] = np.zeros((7,), np.float32)
  save_file(wrong, str(bad / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"visual\.merger\.mlp\.0\.bias.*\(7,\).*expected \(128,\)"):
    videor4_jax.from_pretrained(str(bad))


def test_tied_head_matches_hf_and_round_trips(tmp_path):
  """The real 3B ties lm_head to the embedding: load, logits and save_pretrained with a tied head."""
  from safetensors.numpy import load_file
  from transformers import Qwen2_5_VLForConditionalGeneration
  path = make_tiny_hf_checkpoint(tmp_path / "tied", seed=2, tie_word_embeddings=True)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
  assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
  assert "lm_head.weight" not in load_file(os.path.join(path, "model.safetensors"))
  config, params = videor4_jax.from_pretrained(path)
  assert config.tie_word_embeddings and "lm_head" not in params["params"]
  ids, pv, grid = _image_prompt(np.random.default_rng(4))
  kw = dict(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
            mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64)))
  with torch.no_grad():
    hf.model.rope_deltas = None
    ref = hf(**kw).logits.numpy()
  ours = np.asarray(videor4_jax.forward(config, params, ids, pixel_values=pv, image_grid_thw=grid))
  d = np.abs(ours - ref).max()
  print(f"parity logits tied head: max|diff|={d:.2e}")
  assert d <= 1e-4
  videor4_jax.save_pretrained(str(tmp_path / "out"), config, params)
  assert "lm_head.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))
  hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"),
                                                           attn_implementation="eager").eval()
  with torch.no_grad():
    hf2.model.rope_deltas = None
    np.testing.assert_array_equal(hf2(**kw).logits.numpy(), ref)


def test_sharded_hf_checkpoint_loads_through_its_index(ckpt, tmp_path):
  """A checkpoint split over several files (`model.safetensors.index.json`, as every real one is) loads."""
  path, hf, config, params = ckpt
  out = tmp_path / "sharded"
  hf.save_pretrained(str(out), max_shard_size="100KB")
  shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
  assert (out / "model.safetensors.index.json").exists() and len(shards) > 2, shards
  with open(out / "model.safetensors.index.json") as f:
    assert sorted(set(json.load(f)["weight_map"].values())) == shards
  config2, params2 = videor4_jax.from_pretrained(str(out))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  # A stale file that the index does not list is not read (the index, not a directory listing, decides).
  from safetensors.numpy import save_file
  save_file({"model.norm.weight": np.zeros((64,), np.float32)}, str(out / "zz-stale.safetensors"))
  _, params3 = videor4_jax.from_pretrained(str(out))
  norm = lambda p: p["params"]["decoder"]["norm"]["scale"]  # noqa: E731
  np.testing.assert_array_equal(norm(params3), norm(params))


def test_initializer_range_sets_every_kernel_and_embedding_std():
  """`initializer_range` (JAX-only; never written to config.json) is the std of every kernel and embedding."""
  import dataclasses
  from videor4_jax.model import vlm
  from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
  from videor4_jax.convert.hf import config_to_hf_dict
  base = ModelConfig(text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3)),
                     vision=VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                         out_hidden_size=64, fullatt_block_indexes=(0,)))
  for std in (0.02, 0.08):
    params = vlm.init_params(dataclasses.replace(base, initializer_range=std), jax.random.key(0))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    weights = [(jax.tree_util.keystr(k), v) for k, v in leaves if str(k[-1].key) in ("kernel", "embedding")]
    assert len(weights) >= 10
    for name, w in weights:
      assert abs(float(np.std(np.asarray(w))) / std - 1) < 0.15, (std, name, float(np.std(np.asarray(w))))
  assert "initializer_range" not in json.dumps(config_to_hf_dict(base))


def test_smoke_run_is_finite_and_round_trips(capsys):
  """`python -m videor4_jax.smoke` (the README's one-minute check) exits 0 only with finite logits and an exact
  HF save/load round trip (it once fed token ids beyond the tiny vocabulary and printed finite=False)."""
  from videor4_jax import smoke
  assert smoke.main() == 0
  assert "finite=True" in capsys.readouterr().out
