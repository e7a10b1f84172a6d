"""Preemption: SIGTERM (TPU maintenance, spot preemption) asks the run to save a checkpoint at the next step
boundary and stop, instead of losing everything since the last periodic checkpoint.

The handler only sets a flag. At each step boundary the training loop asks `stop_requested()`, which with several
processes all-gathers "this process got SIGTERM" (a collective every process reaches at the same boundary), so
all hosts agree to stop after the same step and write one complete checkpoint together.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np


class Preempted(Exception):
  """The run saved a checkpoint at `global_step` after a SIGTERM and stopped; the next start resumes there."""

  def __init__(self, global_step: int):
    super().__init__(f"preempted (SIGTERM): checkpoint saved at global step {global_step}; the next start "
                     f"resumes from it")
    self.global_step = global_step


class PreemptionGuard:
  """Context manager: while open, SIGTERM sets a flag instead of terminating the process; the previous handler
  is restored on exit. Outside the main thread (where Python cannot install handlers) it installs nothing: its
  own process then never asks to stop, though `stop_requested` still hears other processes."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous = {}
    self._received = False

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      # None: the previous handler was not installed from Python (e.g. by a C library); the default is the best
      # Python can restore.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()
    return False

  def _handle(self, signum, frame):
    del frame
    self._received = True
    # os.write, not print: a handler may run while the main thread is inside print on the same stream.
    os.write(2, f"received {signal.Signals(signum).name}: saving a checkpoint at the next step boundary, "
                f"then exiting\n".encode())

  def stop_requested(self) -> bool:
    """Whether any process got the signal. With several processes a collective: every process must call it at
    the same step boundary (the training loop does, after every step)."""
    if jax.process_count() == 1:
      return self._received
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([self._received], np.int32), tiled=True)
    return bool(np.any(flags))
