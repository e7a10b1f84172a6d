"""JAX's persistent compilation cache, on by default for train.py, so that a restarted run does not compile its
train steps and rollout again (tens of seconds on CPU; bench/compile_cache.py measures a cold and a warm start).

Entries are keyed by the program, the compile options and the backend, so a stale entry is never used for a
changed program. Every executable that took at least `min_compile_s` to compile is kept, whatever its size (the
CPU train step is a few MB).
"""
from __future__ import annotations

import os

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "videor4_jax", "jax_compilation_cache")


def enable(path: str | None = DEFAULT_DIR, *, min_compile_s: float = 0.5) -> str | None:
  """Turns the persistent cache on at `path` (created if absent); a falsy path leaves it off. Returns the path.

  Call before the first compilation of the process.
  """
  if not path:
    return None
  import jax
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
