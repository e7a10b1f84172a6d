"""What a run reads: the processor (tokenizer, chat template, vision settings) and the model config.

With a checkpoint directory (eval.py `--checkpoint`, train.py `config.init_from`, or `config.tokenizer` naming a
directory) both come from the directory; otherwise from the run config. Config values that differ from the
directory's are logged and the directory's are used, except values set explicitly on the command line
(`explicit`: the `--config.a.b=...` keys): an explicit architecture or token-id value that differs from the
checkpoint is an error naming both, and explicit `processor.*` values override the directory's preprocessor
settings (logged). Everything is checked here, before any data is built or anything is compiled.
"""
from __future__ import annotations

import dataclasses

from videor4_jax.convert.hf import read_hf_config
from videor4_jax.model.config import ModelConfig, model_config_from_dict
from videor4_jax.processing import chat
from videor4_jax.processing.processor import Processor

JAX_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat", "initializer_range", "attention_q_chunk",
              "cpu_layouts")


class ConfigMismatch(ValueError):
  pass


def _log(msg: str) -> None:
  print(f"[config] {msg}", flush=True)


def system_prompt(cfg) -> str:
  """`config.system_prompt`: "tiny" (the built-in task's short prompt), "default" (chat.SYSTEM_PROMPT) or text."""
  s = cfg.get("system_prompt", "default")
  return {"tiny": chat.TINY_SYSTEM_PROMPT, "default": chat.SYSTEM_PROMPT}.get(s, s)


def processor_dir(cfg, checkpoint: str | None = None) -> str | None:
  """The directory the processor comes from: eval's checkpoint, else config.tokenizer, else config.init_from."""
  tok = cfg.get("tokenizer", "tiny") or "tiny"
  return checkpoint or (tok if tok != "tiny" else None) or (cfg.get("init_from") or None)


def make_processor(cfg, checkpoint: str | None = None, explicit=()) -> Processor:
  """The run's processor. `config.processor` describes the built-in processor (no directory); with a directory
  its preprocessor configs win, except `config.processor_overrides` (a recipe's settings, e.g.
  configs/videor4_7b.py) and explicit `--config.processor.*` flags, which are applied over them (logged)."""
  directory = processor_dir(cfg, checkpoint)
  if directory is None and cfg.get("init_required", False):
    raise ConfigMismatch("this config trains a pretrained checkpoint: set --config.init_from=/path/to/the/HF/"
                         "directory (config.json, tokenizer, preprocessor configs, safetensors)")
  if directory is not None and "tokenizer" in explicit and cfg.get("tokenizer") == "tiny":
    raise ConfigMismatch(f"--config.tokenizer='tiny' but the checkpoint {directory} brings its own tokenizer; "
                         "drop the flag (the tiny tokenizer's ids do not fit a real checkpoint)")
  run_vision = dict(cfg.get("processor", None) or {})
  if directory is None:
    return Processor.from_config(run_vision, system_prompt=system_prompt(cfg))
  recipe = dict(cfg.get("processor_overrides", None) or {})
  overrides = {**recipe, **{k: run_vision[k] for k in run_vision if f"processor.{k}" in explicit}}
  proc = Processor.from_dir(directory, system_prompt=system_prompt(cfg), vision_overrides=overrides)
  for k, v in recipe.items():
    if f"processor.{k}" not in explicit:
      _log(f"config.processor_overrides.{k}={v} overrides {directory}'s preprocessor config")
  for k, v in run_vision.items():
    dir_value = getattr(proc.vision, k)
    if k in overrides:
      _log(f"processor.{k}={overrides[k]} set on the command line overrides {directory}'s preprocessor config")
    elif v != dir_value:
      _log(f"config.processor.{k}={v} not used: {directory} gives {dir_value}")
  return proc


def build_model_config(cfg, tok) -> ModelConfig:
  """A model from the run config alone (random init): special-token ids from the tokenizer."""
  m = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  m["text"] = dict(m["text"], vocab_size=max(m["text"]["vocab_size"], tok.vocab_size))
  return model_config_from_dict(m, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
                                vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id,
                                bos_token_id=tok.pad_id, eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def make_model_config(cfg, processor: Processor, checkpoint: str | None = None, explicit=()) -> ModelConfig:
  """The checkpoint's config.json (plus the run's JAX settings), else the run config's `model` block."""
  run = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  if checkpoint is None:
    return build_model_config(cfg, processor.tokenizer)
  ckpt = read_hf_config(checkpoint, **{k: run[k] for k in JAX_FIELDS if k in run})
  have = _flat(dataclasses.asdict(ckpt))
  errors = []
  for key, value in _flat(run).items():
    if key in JAX_FIELDS or key not in have or value == have[key]:
      continue
    if f"model.{key}" in explicit:
      errors.append(f"--config.model.{key}={value!r} but {checkpoint}/config.json has {have[key]!r}")
    else:
      _log(f"config.model.{key}={value!r} not used: {checkpoint}/config.json has {have[key]!r}")
  if errors:
    raise ConfigMismatch("the run's model settings disagree with the checkpoint (drop the flags, or use a "
                         "checkpoint of that architecture):\n  " + "\n  ".join(errors))
  return ckpt


def check_compatible(config: ModelConfig, processor: Processor, rollout_cfg=None) -> None:
  """Model, tokenizer, processor and rollout agree; raises ConfigMismatch listing every disagreement."""
  tok, v, errors = processor.tokenizer, processor.vision, []
  src = processor.source
  if tok.vocab_size > config.text.vocab_size:
    errors.append(f"the tokenizer ({src}) has {tok.vocab_size} tokens but the model's vocab_size is "
                  f"{config.text.vocab_size}")
  for field, tok_id, name in (("image_token_id", tok.image_pad_id, "<|image_pad|>"),
                              ("video_token_id", tok.video_pad_id, "<|video_pad|>"),
                              ("vision_start_token_id", tok.vision_start_id, "<|vision_start|>"),
                              ("vision_end_token_id", tok.vision_end_id, "<|vision_end|>")):
    if getattr(config, field) != tok_id:
      errors.append(f"model {field}={getattr(config, field)} but the tokenizer ({src}) has {name}={tok_id}")
  for field, model_field in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                             ("temporal_patch_size", "temporal_patch_size")):
    if getattr(v, field) != getattr(config.vision, model_field):
      errors.append(f"processor {field}={getattr(v, field)} ({src}) but the model's vision "
                    f"{model_field}={getattr(config.vision, model_field)}")
  if rollout_cfg is not None:
    obs = tuple(rollout_cfg.obs_hw)
    for kind, rule, lo, hi in (("image", v.image_hw, v.image_min_pixels, v.image_max_pixels),
                               ("video", v.video_frame_hw, v.video_min_pixels, v.video_max_pixels)):
      if rule(*obs) != obs:
        errors.append(f"rollout.obs_hw={obs}: the processor's {kind} rule (min_pixels={lo}, max_pixels={hi}, "
                      f"{src}) resizes such an observation to {rule(*obs)}, so HF inference would feed the model "
                      f"other pixels than the rollout; choose obs_hw with h*w in [{lo}, {hi}] or set "
                      f"--config.processor.{kind}_min_pixels / _max_pixels")
  if errors:
    raise ConfigMismatch("incompatible checkpoint / tokenizer / config:\n  " + "\n  ".join(errors))
