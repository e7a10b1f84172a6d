"""The processor: one object holding the tokenizer, the chat template and the vision preprocessing settings.

Every consumer (SFT and RL featurizers, the rollout's observation templates and grammar, eval, the HF export)
takes this one object, so they cannot disagree. It comes from a Hugging Face checkpoint directory
(`Processor.from_dir`: tokenizer.json, the chat template, preprocessor_config.json and, when present,
video_preprocessor_config.json, read the way transformers reads them) or, without a directory, from the run
config (`Processor.from_config`: the built-in tiny tokenizer and the config's `processor` block).

Frame sampling: the pipeline samples a fixed count F (`pipeline.num_frames`) uniformly in time, which is what
HF's video processor does when called with `num_frames=F`; a directory's fps / min_frames / max_frames settings
are therefore not used, and `VisionSettings` does not hold them.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from videor4_jax.processing import chat
from videor4_jax.processing.image import (IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, MEAN, STD, VIDEO_MAX_PIXELS,
                                          VIDEO_MIN_PIXELS, smart_resize)
from videor4_jax.processing.tokenizer import Tokenizer

# HF class defaults (transformers Qwen2VLImageProcessor / Qwen2VLVideoProcessor), used where a directory's
# preprocessor config leaves a field out, as transformers does.
HF_IMAGE_MIN_PIXELS, HF_IMAGE_MAX_PIXELS = IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS
HF_VIDEO_MIN_PIXELS, HF_VIDEO_MAX_PIXELS = VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS


class ProcessorError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class VisionSettings:
  """How images and video frames become patches (HF preprocessor-config semantics).

  Frames and images are resized to `smart_resize(h, w, factor=patch*merge, min_pixels, max_pixels)`.
  """
  image_min_pixels: int = HF_IMAGE_MIN_PIXELS
  image_max_pixels: int = HF_IMAGE_MAX_PIXELS
  video_min_pixels: int = HF_VIDEO_MIN_PIXELS
  video_max_pixels: int = HF_VIDEO_MAX_PIXELS
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2

  def __post_init__(self):
    for kind in ("image", "video"):
      lo, hi = getattr(self, f"{kind}_min_pixels"), getattr(self, f"{kind}_max_pixels")
      if not 0 < lo <= hi:
        raise ProcessorError(f"{kind}_min_pixels={lo} and {kind}_max_pixels={hi}: need 0 < min <= max")

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  def video_frame_hw(self, height: int, width: int) -> tuple[int, int]:
    return smart_resize(height, width, factor=self.factor, min_pixels=self.video_min_pixels,
                        max_pixels=self.video_max_pixels)

  def image_hw(self, height: int, width: int) -> tuple[int, int]:
    return smart_resize(height, width, factor=self.factor, min_pixels=self.image_min_pixels,
                        max_pixels=self.image_max_pixels)

  def max_video_patches(self, num_frames: int) -> int:
    """Static bound on a video's patch rows: every frame size `video_frame_hw` can return holds at most
    max(max_pixels, the smallest factor-multiple area >= min_pixels) pixels."""
    per_frame = max(self.video_max_pixels, -(-self.video_min_pixels // self.factor ** 2) * self.factor ** 2)
    groups = -(-num_frames // self.temporal_patch_size)
    return groups * per_frame // self.patch_size ** 2

  def to_hf(self, kind: str) -> dict:
    lo, hi = getattr(self, f"{kind}_min_pixels"), getattr(self, f"{kind}_max_pixels")
    d = dict(min_pixels=lo, max_pixels=hi, size={"shortest_edge": lo, "longest_edge": hi},
             patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size, merge_size=self.merge_size,
             image_mean=[float(x) for x in MEAN], image_std=[float(x) for x in STD],
             do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
             processor_class="Qwen2_5_VLProcessor")
    if kind == "image":
      d["image_processor_type"] = "Qwen2VLImageProcessor"
    else:
      d["video_processor_type"] = "Qwen2VLVideoProcessor"
    return d


def _pixels_from_hf(d: dict, kind: str, where: str) -> tuple[int, int]:
  """min/max pixels as transformers reads them: `size` first, then the legacy min_pixels/max_pixels keys win."""
  lo, hi = (HF_IMAGE_MIN_PIXELS, HF_IMAGE_MAX_PIXELS) if kind == "image" else (HF_VIDEO_MIN_PIXELS,
                                                                               HF_VIDEO_MAX_PIXELS)
  size = d.get("size") or {}
  if size and not {"shortest_edge", "longest_edge"} <= set(size):
    raise ProcessorError(f"{where}: 'size'={size} needs 'shortest_edge' and 'longest_edge' (pixel counts)")
  lo, hi = size.get("shortest_edge", lo), size.get("longest_edge", hi)
  lo, hi = d.get("min_pixels", lo), d.get("max_pixels", hi)
  return int(lo), int(hi)


def _check_normalization(d: dict, where: str):
  for key, ref in (("image_mean", MEAN), ("image_std", STD)):
    if key in d and not np.allclose(np.asarray(d[key], np.float32), ref, atol=1e-6):
      raise ProcessorError(f"{where}: {key}={d[key]} differs from the CLIP values {ref.tolist()} that the "
                           "rollout's pixel ops use (rumination/pixel_ops.py); other values are not supported")


def vision_settings_from_dir(path: str) -> VisionSettings:
  image_file = os.path.join(path, "preprocessor_config.json")
  if not os.path.isfile(image_file):
    raise ProcessorError(f"{path}: no preprocessor_config.json (the image processor settings of the checkpoint)")
  with open(image_file) as f:
    image = json.load(f)
  video_file = os.path.join(path, "video_preprocessor_config.json")
  video, video_where = image, image_file      # transformers' video processor falls back to preprocessor_config
  if os.path.isfile(video_file):
    with open(video_file) as f:
      video, video_where = json.load(f), video_file
  _check_normalization(image, image_file)
  _check_normalization(video, video_where)
  for key in ("patch_size", "temporal_patch_size", "merge_size"):
    if key in video and key in image and video[key] != image[key]:
      raise ProcessorError(f"{path}: {key} is {image[key]} for images but {video[key]} for videos")
  i_lo, i_hi = _pixels_from_hf(image, "image", image_file)
  v_lo, v_hi = _pixels_from_hf(video, "video", video_where)
  return VisionSettings(image_min_pixels=i_lo, image_max_pixels=i_hi, video_min_pixels=v_lo, video_max_pixels=v_hi,
                        patch_size=int(image.get("patch_size", 14)),
                        temporal_patch_size=int(image.get("temporal_patch_size", 2)),
                        merge_size=int(image.get("merge_size", 2)))


def _read_chat_template(path: str) -> str | None:
  """The directory's chat template, where transformers looks for it (newest convention first)."""
  jinja = os.path.join(path, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      return f.read()
  for name in ("chat_template.json", "tokenizer_config.json"):
    p = os.path.join(path, name)
    if os.path.isfile(p):
      with open(p, encoding="utf-8") as f:
        t = json.load(f).get("chat_template")
      if isinstance(t, str):
        return t
  return None


@dataclasses.dataclass(frozen=True)
class Processor:
  """tokenizer + chat template + vision settings + the system prompt of every conversation."""
  tokenizer: Tokenizer
  vision: VisionSettings
  system_prompt: str
  chat_template: str = chat.QWEN25_VL_CHAT_TEMPLATE
  source: str = "config"      # the directory it came from, or "config"

  @classmethod
  def from_dir(cls, path: str, *, system_prompt: str = chat.SYSTEM_PROMPT,
               vision_overrides: dict | None = None) -> "Processor":
    missing = [f for f in ("tokenizer.json", "preprocessor_config.json") if not os.path.isfile(os.path.join(path, f))]
    if missing:
      raise ProcessorError(f"{path}: missing {', '.join(missing)} (an HF Qwen2.5-VL checkpoint directory has "
                           "tokenizer.json, tokenizer_config.json, preprocessor_config.json and a chat template)")
    vision = vision_settings_from_dir(path)
    if vision_overrides:
      vision = dataclasses.replace(vision, **vision_overrides)
    template = _read_chat_template(path)
    if template is None:
      raise ProcessorError(f"{path}: no chat template (chat_template.jinja, chat_template.json or "
                           "tokenizer_config.json 'chat_template')")
    return cls(Tokenizer.from_dir(path), vision, system_prompt, template, source=path)

  @classmethod
  def from_config(cls, processor_cfg: dict, *, system_prompt: str) -> "Processor":
    """The built-in tiny tokenizer and the config's vision settings (no checkpoint directory)."""
    return cls(Tokenizer.tiny(), VisionSettings(**dict(processor_cfg)), system_prompt)

  def save(self, directory: str) -> None:
    """Tokenizer, chat template and preprocessor configs in the files transformers reads (mode 0644)."""
    os.makedirs(directory, exist_ok=True)
    self.tokenizer.save(directory)
    tok_cfg = dict(tokenizer_class="PreTrainedTokenizerFast" if self.source == "config" else "Qwen2Tokenizer",
                   chat_template=self.chat_template, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                   bos_token=None, model_max_length=131072, clean_up_tokenization_spaces=False,
                   split_special_tokens=False, processor_class="Qwen2_5_VLProcessor")
    files = {"tokenizer_config.json": tok_cfg, "chat_template.json": {"chat_template": self.chat_template},
             "preprocessor_config.json": self.vision.to_hf("image"),
             "video_preprocessor_config.json": self.vision.to_hf("video")}
    for name, content in files.items():
      write_json(os.path.join(directory, name), content)
    os.chmod(os.path.join(directory, "tokenizer.json"), 0o644)


def write_json(path: str, content: dict) -> None:
  """Written to a temp name then renamed (never half written), mode 0644."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(content, f, indent=2, ensure_ascii=False)
  os.chmod(path + ".tmp", 0o644)
  os.replace(path + ".tmp", path)
