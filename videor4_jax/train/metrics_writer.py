"""Metrics to stdout (one compact line), JSONL and TensorBoard event files (tensorboardX), flushed every write."""
from __future__ import annotations

import json
import math
import os
import time


class MetricsWriter:
  def __init__(self, workdir: str, *, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    self._t0 = time.time()

  def write(self, step: int, metrics: dict, *, prefix: str = "") -> None:
    clean = {}
    for k, v in metrics.items():
      try:
        clean[k] = float(v)
      except (TypeError, ValueError):
        clean[k] = v
    rec = {"step": int(step), "time": round(time.time() - self._t0, 2), **{prefix + k: v for k, v in clean.items()}}
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(prefix + k, v, step)
      self._tb.flush()
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in clean.items())
    print(f"[{prefix.rstrip('/') or 'train'} {step}] {shown}", flush=True)

  def close(self):
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
