"""HF Qwen2.5-VL checkpoint directory <-> (ModelConfig, params). One mapping table, used in both directions.

Only `config.json` (JSON) and `*.safetensors` (numpy API) are read: loading never executes code and needs no torch.
"""
from __future__ import annotations

import gc
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from videor4_jax.model.config import ModelConfig, TextConfig, VisionConfig
from videor4_jax.model.vlm import init_params

# (flax path under params, HF tensor name, transform, stack). stack: "text" / "vision" per-layer tensors that the
# scanned model holds stacked on a leading layer axis; "{i}" in the HF name is the layer index.
# transforms: "copy"; "linear" (HF [out, in] <-> flax kernel [in, out]); "conv" (Conv3d weight <-> [C*t*p*p, D]).
_TEXT_LAYER = [
    ("input_layernorm/scale", "input_layernorm.weight", "copy"),
    ("post_attention_layernorm/scale", "post_attention_layernorm.weight", "copy"),
    ("q_proj/kernel", "self_attn.q_proj.weight", "linear"), ("q_proj/bias", "self_attn.q_proj.bias", "copy"),
    ("k_proj/kernel", "self_attn.k_proj.weight", "linear"), ("k_proj/bias", "self_attn.k_proj.bias", "copy"),
    ("v_proj/kernel", "self_attn.v_proj.weight", "linear"), ("v_proj/bias", "self_attn.v_proj.bias", "copy"),
    ("o_proj/kernel", "self_attn.o_proj.weight", "linear"),
    ("mlp/gate_proj/kernel", "mlp.gate_proj.weight", "linear"),
    ("mlp/up_proj/kernel", "mlp.up_proj.weight", "linear"),
    ("mlp/down_proj/kernel", "mlp.down_proj.weight", "linear"),
]
_VISION_BLOCK = [
    ("norm1/scale", "norm1.weight", "copy"), ("norm2/scale", "norm2.weight", "copy"),
    ("qkv/kernel", "attn.qkv.weight", "linear"), ("qkv/bias", "attn.qkv.bias", "copy"),
    ("proj/kernel", "attn.proj.weight", "linear"), ("proj/bias", "attn.proj.bias", "copy"),
] + [(f"mlp/{n}/{kind}", f"mlp.{n}.{'weight' if kind == 'kernel' else 'bias'}",
      "linear" if kind == "kernel" else "copy")
     for n in ("gate_proj", "up_proj", "down_proj") for kind in ("kernel", "bias")]


def mapping_table(config: ModelConfig):
  """Rows (flax path tuple, HF name, transform, layer index or None)."""
  rows = [(("embed", "embedding"), "model.embed_tokens.weight", "copy", None),
          (("decoder", "norm", "scale"), "model.norm.weight", "copy", None),
          (("visual", "patch_embed", "kernel"), "visual.patch_embed.proj.weight", "conv", None),
          (("visual", "merger", "ln_q", "scale"), "visual.merger.ln_q.weight", "copy", None),
          (("visual", "merger", "fc1", "kernel"), "visual.merger.mlp.0.weight", "linear", None),
          (("visual", "merger", "fc1", "bias"), "visual.merger.mlp.0.bias", "copy", None),
          (("visual", "merger", "fc2", "kernel"), "visual.merger.mlp.2.weight", "linear", None),
          (("visual", "merger", "fc2", "bias"), "visual.merger.mlp.2.bias", "copy", None)]
  if not config.tie_word_embeddings:
    rows.append((("lm_head", "kernel"), "lm_head.weight", "linear", None))
  for prefix, hf_prefix, table, depth in (("decoder", "model.layers", _TEXT_LAYER, config.text.num_hidden_layers),
                                          ("visual", "visual.blocks", _VISION_BLOCK, config.vision.depth)):
    group = "layers" if prefix == "decoder" else "blocks"
    for i in range(depth):
      for path, hf, kind in table:
        if config.scan_layers:
          rows.append(((prefix, group, *path.split("/")), f"{hf_prefix}.{i}.{hf}", kind, i))
        else:
          rows.append(((prefix, f"{group}_{i}", *path.split("/")), f"{hf_prefix}.{i}.{hf}", kind, None))
  return rows


def _to_flax(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return x.T
  if kind == "conv":
    return x.reshape(x.shape[0], -1).T
  return x


def _to_hf(x: np.ndarray, kind: str, hf_shape=None) -> np.ndarray:
  if kind == "linear":
    return np.ascontiguousarray(x.T)
  if kind == "conv":
    return np.ascontiguousarray(x.T.reshape(hf_shape))
  return np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------------- config.json
def config_from_hf_dict(d: dict, **jax_settings) -> ModelConfig:
  tc = d.get("text_config", d)
  vc = d["vision_config"]
  rope = tc.get("rope_parameters") or tc.get("rope_scaling") or d.get("rope_scaling") or {}
  text = TextConfig(
      vocab_size=tc.get("vocab_size", d.get("vocab_size")), hidden_size=tc["hidden_size"],
      intermediate_size=tc["intermediate_size"], num_hidden_layers=tc["num_hidden_layers"],
      num_attention_heads=tc["num_attention_heads"], num_key_value_heads=tc["num_key_value_heads"],
      max_position_embeddings=tc.get("max_position_embeddings", 128000), rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
      rope_theta=rope.get("rope_theta", tc.get("rope_theta", d.get("rope_theta", 1000000.0))),
      mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))))
  vision = VisionConfig(
      depth=vc["depth"], hidden_size=vc.get("hidden_size", vc.get("embed_dim")),
      intermediate_size=vc["intermediate_size"], num_heads=vc["num_heads"],
      in_channels=vc.get("in_channels", vc.get("in_chans", 3)), patch_size=vc.get("patch_size", 14),
      spatial_merge_size=vc.get("spatial_merge_size", 2), temporal_patch_size=vc.get("temporal_patch_size", 2),
      window_size=vc.get("window_size", 112), out_hidden_size=vc.get("out_hidden_size", tc["hidden_size"]),
      fullatt_block_indexes=tuple(vc.get("fullatt_block_indexes", ())),
      tokens_per_second=vc.get("tokens_per_second", 2),
      rope_theta=(vc.get("rope_parameters") or {}).get("rope_theta", 10000.0))
  ids = {k: d.get(k, tc.get(k)) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                            "vision_end_token_id", "bos_token_id", "eos_token_id", "pad_token_id")}
  ids = {k: v for k, v in ids.items() if v is not None}
  tie = d.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
  return ModelConfig(text=text, vision=vision, tie_word_embeddings=bool(tie), **ids, **jax_settings)


def config_to_hf_dict(config: ModelConfig) -> dict:
  t, v = config.text, config.vision
  text = dict(model_type="qwen2_5_vl_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
              intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
              num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
              max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps, hidden_act="silu",
              rope_parameters=dict(rope_type="default", mrope_section=list(t.mrope_section), rope_theta=t.rope_theta),
              bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
              tie_word_embeddings=config.tie_word_embeddings)
  vision = dict(model_type="qwen2_5_vl_vision", depth=v.depth, hidden_size=v.hidden_size, hidden_act="silu",
                intermediate_size=v.intermediate_size, num_heads=v.num_heads, in_channels=v.in_channels,
                patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
                temporal_patch_size=v.temporal_patch_size, window_size=v.window_size,
                out_hidden_size=v.out_hidden_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
                tokens_per_second=v.tokens_per_second,
                rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta))
  return dict(architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl",
              text_config=text, vision_config=vision, vocab_size=t.vocab_size,
              tie_word_embeddings=config.tie_word_embeddings, image_token_id=config.image_token_id,
              video_token_id=config.video_token_id, vision_start_token_id=config.vision_start_token_id,
              vision_end_token_id=config.vision_end_token_id, bos_token_id=config.bos_token_id,
              eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)


# ---------------------------------------------------------------------------------------------- tensors
class CheckpointError(ValueError):
  pass


def _tensor_files(path: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file that holds it (through the index when there is one)."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      return dict(json.load(f)["weight_map"])
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files (and no model.safetensors.index.json)")
  out = {}
  for name in files:
    with safe_open(os.path.join(path, name), "np") as f:
      out.update({k: name for k in f.keys()})
  return out


def _set(tree: dict, path: tuple, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def checkpoint_dtype(path: str) -> str | None:
  """The dtype config.json says the weights were saved in ("torch_dtype", or "dtype" in transformers 5)."""
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  return d.get("dtype") or d.get("torch_dtype") or (d.get("text_config") or {}).get("dtype")


def read_hf_config(path: str, **jax_settings) -> ModelConfig:
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise CheckpointError(f"{path}: no config.json (expected an HF Qwen2.5-VL checkpoint directory)")
  with open(cfg_file) as f:
    return config_from_hf_dict(json.load(f), **jax_settings)


def from_pretrained(path: str, dtype=jnp.float32, shardings_for=None, **jax_settings):
  """Loads an HF Qwen2.5-VL directory. Returns `(ModelConfig, {"params": ...})` with arrays of `dtype`.

  shardings_for: None (every parameter on the first device) or `config -> shardings` (e.g.
  `lambda c: parallel.sharding.param_shardings(c, mesh)`; `videor4_jax.from_pretrained(..., mesh=...)` passes
  that): each device's shard is then read for it and placed directly (see `load_params`).
  """
  config = read_hf_config(path, param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name, **jax_settings)
  shardings = shardings_for(config) if shardings_for is not None else None
  return config, load_params(path, config, dtype, shardings)


def _flax_shape(hf_shape, kind: str) -> tuple:
  if kind == "linear":
    return tuple(hf_shape[::-1])
  if kind == "conv":
    return (int(np.prod(hf_shape[1:])), hf_shape[0])
  return tuple(hf_shape)


def _host_buffer(shape: tuple, dtype) -> np.ndarray:
  """An uninitialized C-contiguous array whose data is 64-byte aligned: the CPU backend then adopts it as the
  device buffer without a copy (an unaligned one is copied, and the source lingers until the next gc cycle)."""
  dtype = np.dtype(dtype)
  raw = np.empty(int(np.prod(shape)) * dtype.itemsize + 64, np.uint8)
  offset = -raw.ctypes.data % 64
  return raw[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


def _read_region(handle, hf: str, kind: str, index: tuple):
  """The region `index` (a tuple of slices, flax layout) of one tensor in the file's dtype, possibly a transposed
  view. Only that region is read from the file where the layout allows (copy and linear); the conv patch
  embedding (small) is read whole."""
  sl = handle.get_slice(hf)
  if kind == "copy":
    return sl[index] if index else sl[:]
  if kind == "linear":
    return (sl[index[::-1]] if index else sl[:]).T
  return _to_flax(sl[:], kind)[index]


def _check_shapes(path, files, handles, fpath, group, want, stacked) -> None:
  for hf, kind, _ in group:
    if hf not in files:
      raise CheckpointError(f"{path}: missing tensor {hf!r} (for params/{'/'.join(fpath)})")
    hf_shape = tuple(handles[files[hf]].get_slice(hf).get_shape())
    got = _flax_shape(hf_shape, kind)
    if got != (want[1:] if stacked else want):
      raise CheckpointError(f"{path}: tensor {hf!r} has shape {hf_shape} -> {got}, expected "
                            f"{want[1:] if stacked else want} for params/{'/'.join(fpath)}")


def load_params(path: str, config: ModelConfig, dtype=jnp.float32, shardings=None):
  """The weights of an HF directory in the layout of `config`, `{"params": ...}` of `dtype`.

  Every parameter is built by `jax.make_array_from_callback`: each device's shard (given `shardings`, e.g.
  `parallel.sharding.param_shardings(config, mesh)`; else everything on the first device) is read from the
  memory-mapped files for that device alone, cast to `dtype` on the host and transposed in one copy, and stacked
  layers are assembled per shard. No parameter exists whole in the file's dtype, on the host or on a device,
  each process reads only what its devices hold, and the transient host memory is about one shard
  (tests/test_sharded_loading.py measures it). Shapes are checked tensor by tensor before anything is read.
  """
  import contextlib
  from collections import defaultdict
  files = _tensor_files(path)
  expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))["params"]
  rows = defaultdict(list)
  for fpath, hf, kind, layer in mapping_table(config):
    rows[fpath].append((hf, kind, layer))
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  np_dtype = np.dtype(jnp.dtype(dtype))
  params: dict = {}
  with contextlib.ExitStack() as stack:
    handles = {f: stack.enter_context(safe_open(os.path.join(path, f), "np")) for f in sorted(set(files.values()))}
    for fpath, group in rows.items():
      want = tuple(_get(expected, fpath).shape)
      stacked = group[0][2] is not None
      _check_shapes(path, files, handles, fpath, group, want, stacked)

      def region(index, group=group, stacked=stacked, want=want):
        """This device's shard of the parameter in `dtype`: cast and transposed into one aligned buffer, layer
        by layer for stacked parameters."""
        index = tuple(index) or tuple(slice(None) for _ in want)
        read = lambda i, idx: _read_region(handles[files[group[i][0]]], group[i][0], group[i][1], idx)  # noqa: E731
        if not stacked:
          x = read(0, index)
          out = _host_buffer(x.shape, np_dtype)
          out[...] = x
          return out
        layers = range(*index[0].indices(want[0]))
        out = None
        for j, i in enumerate(layers):
          x = read(i, index[1:])
          if out is None:
            out = _host_buffer((len(layers),) + x.shape, np_dtype)
          out[j] = x
        return out

      sharding = _get(shardings["params"], fpath) if shardings is not None else default
      _set(params, fpath, jax.make_array_from_callback(want, sharding, region))
      # Host shards that were copied to their devices (any shard on TPU / GPU; unaligned ones on CPU) are held by
      # a reference cycle inside make_array_from_callback until a gc pass: free them now, one parameter at a time.
      gc.collect(0)
  return {"params": params}


DEFAULT_MAX_SHARD_BYTES = 4 << 30      # hub checkpoints are sharded at a few GB


def _shard_names(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
  groups, cur, cur_bytes = [], [], 0
  for i, n in enumerate(sizes):
    if cur and cur_bytes + n > max_shard_bytes:
      groups.append(cur)
      cur, cur_bytes = [], 0
    cur.append(i)
    cur_bytes += n
  return groups + ([cur] if cur else [])


def _write_weights(path: str, out: dict[str, np.ndarray], max_shard_bytes: int) -> None:
  from videor4_jax.processing.processor import write_json
  names = list(out)
  groups = _shard_names([out[n].nbytes for n in names], max_shard_bytes)
  if len(groups) == 1:
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return
  weight_map = {}
  for k, group in enumerate(groups):
    fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
    save_file({names[i]: out[names[i]] for i in group}, os.path.join(path, fname), metadata={"format": "pt"})
    weight_map.update({names[i]: fname for i in group})
  write_json(os.path.join(path, "model.safetensors.index.json"),
             {"metadata": {"total_size": int(sum(x.nbytes for x in out.values()))}, "weight_map": weight_map})


def generation_config(config: ModelConfig) -> dict:
  """Greedy by default; generation stops at <|im_end|> or <|endoftext|> (Qwen2.5-VL-Instruct's eos list)."""
  eos = [config.eos_token_id] + ([config.pad_token_id] if config.pad_token_id != config.eos_token_id else [])
  return dict(bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=config.pad_token_id,
              do_sample=False)


def save_pretrained(path: str, config: ModelConfig, params, *, processor=None, dtype=None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
  """Writes a complete HF Qwen2.5-VL directory: config.json, generation_config.json, weights in `dtype` (default
  `config.param_dtype`; bf16 for the real configs) sharded with model.safetensors.index.json above
  `max_shard_bytes`, and, given the run's `processor`, its tokenizer, chat template and preprocessor configs.

  Built in `<path>.partial` and swapped in by renames, so `path` is never half written; files are mode 0644.
  """
  import shutil
  from videor4_jax.processing.processor import write_json
  dtype = jnp.dtype(dtype or config.param_dtype)
  p = params["params"] if "params" in params else params
  out = {}
  hf_shapes = {"visual.patch_embed.proj.weight": (config.vision.hidden_size, config.vision.in_channels,
                                                  config.vision.temporal_patch_size, config.vision.patch_size,
                                                  config.vision.patch_size)}
  for fpath, hf, kind, layer in mapping_table(config):
    x = np.asarray(jax.device_get(_get(p, fpath)))
    if layer is not None:
      x = x[layer]
    out[hf] = _to_hf(x, kind, hf_shapes.get(hf)).astype(dtype)
  tmp = path.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  _write_weights(tmp, out, max_shard_bytes)
  d = config_to_hf_dict(config)
  d["dtype"] = d["torch_dtype"] = dtype.name
  write_json(os.path.join(tmp, "config.json"), d)
  write_json(os.path.join(tmp, "generation_config.json"), generation_config(config))
  if processor is not None:
    processor.save(tmp)
  for f in os.listdir(tmp):
    os.chmod(os.path.join(tmp, f), 0o644)
  old = path.rstrip("/") + ".old"
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
