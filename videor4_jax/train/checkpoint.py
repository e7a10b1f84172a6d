"""Orbax checkpoints: params, optimizer state, step, stage, RNG key and the grain iterator, async, keep-N, atomic.

Orbax writes every step to a temporary directory and renames it when complete, so a step directory that exists
is complete; `restore_latest` still checks each candidate (newest first) and falls back, with a logged message,
when one cannot be read (e.g. files truncated by a crash or a full disk).
"""
from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def save(self, step: int, state, meta: dict, data_iter=None, *, force: bool = False) -> bool:
    """Saves `state` (a pytree of arrays), `meta` (JSON: stage, step in stage, seeds, ...) and the iterator."""
    import grain
    args = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def wait(self):
    self.manager.wait_until_finished()

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state, data_iter=None):
    import grain
    args = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    return out["state"], out["meta"], out.get("data_iter") if data_iter is not None else None

  def restore_data_iter(self, step: int, data_iter):
    """Restores only the grain iterator saved at `step` into `data_iter` (in place)."""
    import grain
    self.manager.restore(step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    return data_iter

  def restore_latest(self, abstract_state, data_iter=None):
    """Newest readable checkpoint: `(step, state, meta, iter)`, or None when there is none."""
    self.manager.reload()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta, it = self.restore(step, abstract_state, data_iter)
        return step, state, meta, it
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: fall back to an older one
        log.warning("checkpoint %s/%d is unreadable (%s: %s); falling back to an older one", self.directory, step,
                    type(e).__name__, str(e).splitlines()[0][:200])
    return None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs of `tree` (optionally with new shardings: restore onto another mesh)."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
