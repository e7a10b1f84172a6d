"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping, optional gradient accumulation."""
from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 1e-6
  warmup_steps: int = 0
  total_steps: int = 1000
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  clip_norm: float = 1.0
  grad_accum: int = 1
  freeze_vision: bool = False     # the vision tower (params["params"]["visual"]) gets no updates; its gradient is
                                  # not computed at all when the TrainState lists it as frozen (train/steps.py)

  def __post_init__(self):
    if self.lr <= 0 or self.total_steps < 1 or self.grad_accum < 1 or self.warmup_steps < 0:
      raise ValueError(f"optimizer: need lr > 0, total_steps >= 1, grad_accum >= 1, warmup >= 0 (got {self})")
    if self.warmup_steps > self.total_steps:
      raise ValueError(f"optimizer: warmup_steps={self.warmup_steps} > total_steps={self.total_steps}")


def schedule(cfg: OptimConfig):
  return optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps else cfg.lr, cfg.lr, cfg.warmup_steps,
                                            max(cfg.total_steps, cfg.warmup_steps + 1), cfg.lr * cfg.end_lr_ratio)


def _decay_mask(params):
  """No weight decay on norm scales and biases (1-D parameters, or 2-D stacks of them under scanned layers)."""
  def keep(path, x):
    name = str(path[-1])
    return not ("scale" in name or "bias" in name)
  return jax.tree_util.tree_map_with_path(keep, params)


def _vision_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: any(getattr(k, "key", None) == "visual" for k in path),
                                          params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                   optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                               mask=_decay_mask))
  if cfg.freeze_vision:
    tx = optax.chain(tx, optax.masked(optax.set_to_zero(), _vision_mask))
  return optax.MultiSteps(tx, cfg.grad_accum) if cfg.grad_accum > 1 else tx
