"""Model configuration for the Qwen2.5-VL architecture, and its mapping to HF `config.json`.

One frozen dataclass per tower plus the top-level `ModelConfig`. Field names follow the HF config so that the
mapping to and from `config.json` is a plain rename table (`to_hf_dict` / `from_hf_dict`); JAX-only settings
(dtypes, layer scanning, remat) live beside them and are never written to `config.json`.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  window_size: int = 112
  out_hidden_size: int = 3584
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2
  rms_norm_eps: float = 1e-6  # HF hard-codes 1e-6 for the vision RMSNorms
  rope_theta: float = 10000.0  # axial 2-D rotary base (HF vision_config.rope_parameters.rope_theta)

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"vision hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
    if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
      raise ValueError(f"fullatt_block_indexes={self.fullatt_block_indexes} must lie in [0, depth={self.depth})")
    object.__setattr__(self, "fullatt_block_indexes", tuple(self.fullatt_block_indexes))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Length of one flattened HF patch: channels x temporal_patch x patch x patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  max_position_embeddings: int = 128000
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)

  def __post_init__(self):
    object.__setattr__(self, "mrope_section", tuple(self.mrope_section))
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_attention_heads={self.num_attention_heads}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} not divisible by "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if 2 * sum(self.mrope_section) != self.head_dim:
      raise ValueError(f"2 * sum(mrope_section={self.mrope_section}) must equal head_dim={self.head_dim}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The whole VLM. Token ids are those of the checkpoint's tokenizer."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  tie_word_embeddings: bool = False
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643
  # JAX-only settings (not part of config.json).
  dtype: str = "float32"         # activation/compute dtype
  param_dtype: str = "float32"   # storage dtype of parameters
  scan_layers: bool = True       # lax.scan over decoder layers and vision blocks (compile time O(1) in depth)
  remat: str = "none"            # "none" | "full" | "dots": rematerialization policy per layer
  initializer_range: float = 0.02  # std of the normal init of every kernel and embedding (HF's value is 0.02)
  attention_q_chunk: int = 0     # > 0: self-attention over whole sequences (vision tower; decoder in training and
                                 # reference forwards) in query chunks of this size (model/layers.masked_attention)
  cpu_layouts: bool = False      # layouts XLA:CPU runs fastest, the same math (float summation order aside): the
                                 # decoder's dense layers on [B*T, D] rows (weight gradients as plain 2-D GEMMs, no
                                 # transposing copy of each activation), attention dots with batch axes leading
                                 # (model/layers.masked_attention) and a head-major KV cache [L, B, Hkv, S, Dh]
                                 # (model/text.cache_slot_axis). vlm.cpu_setting; docs/BENCHMARKS.md. Off for
                                 # TPU, whose sharding rules name the [B, T, D] axes.

  def __post_init__(self):
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f"vision.out_hidden_size={self.vision.out_hidden_size} must equal "
                       f"text.hidden_size={self.text.hidden_size}")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat={self.remat!r}; expected one of 'none', 'full', 'dots'")
    if self.attention_q_chunk < 0:
      raise ValueError(f"attention_q_chunk={self.attention_q_chunk} must be >= 0 (0: no chunking)")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def model_config_from_dict(d, **overrides) -> ModelConfig:
  """Builds a ModelConfig from a (ml_collections or plain) dict with `text` and `vision` sub-dicts."""
  d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
  d.update(overrides)
  unknown = set(d) - {f.name for f in dataclasses.fields(ModelConfig)}
  if unknown:
    raise ValueError(f"model config: unknown fields {sorted(unknown)}")
  text = TextConfig(**dict(d.pop("text", {})))
  vision = VisionConfig(**dict(d.pop("vision", {})))
  return ModelConfig(text=text, vision=vision, **d)
