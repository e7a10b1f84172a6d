"""Orbax checkpoints: params, optimizer state, step, stage, RNG key and the grain iterator, async, keep-N, atomic.

Orbax writes every step to a temporary directory and renames it when complete, so a step directory that exists
is complete; `restore_latest` still checks each candidate (newest first) and falls back, with a logged message,
when one cannot be read (e.g. files truncated by a crash or a full disk). A checkpoint that reads fine but whose
tree does not match the target (another model or optimizer config) is not a reason to fall back: silently
resuming from an older step, or from scratch, would hide the config change, so it raises `CheckpointMismatch`.
"""
from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose arrays (paths or shapes) differ from the state the config builds."""


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

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, abstract_state, data_iter=None):
    """Newest readable checkpoint: `(step, state, meta, iter)`, or None when there is none.

    abstract_state: the target tree, or a function `meta -> tree` (the state depends on the saved stage, e.g.
    its optimizer). Unreadable steps are skipped with a warning; a tree mismatch raises `CheckpointMismatch`.
    """
    self.manager.reload()
    self._warn_unfinalized()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.read_meta(step)
        saved = self._saved_arrays(step)
        if not saved:
          raise ValueError("no array metadata")
      except Exception as e:  # noqa: BLE001 - an unreadable checkpoint means: fall back to an older one
        self._warn_unreadable(step, e)
        continue
      target = abstract_state(meta) if callable(abstract_state) else abstract_state
      _check_same_arrays(saved, target, f"{self.directory}/{step} (meta {meta})")
      try:
        state, meta, it = self.restore(step, target, data_iter)
        return step, state, meta, it
      except Exception as e:  # noqa: BLE001 - metadata fine but array data unreadable: fall back
        self._warn_unreadable(step, e)
    return None

  def _saved_arrays(self, step: int) -> dict:
    """{path tuple: ArrayMetadata} of the saved state, read from Orbax's metadata (no array data)."""
    with ocp.StandardCheckpointer() as reader:
      md = reader.metadata(os.path.join(self.directory, str(step), "state"))
    return ocp.tree.to_flat_dict(md.item_metadata.tree)

  def _warn_unfinalized(self):
    """Orbax writes step N to `N.orbax-checkpoint-tmp-<time>` and renames it when complete; such a directory left
    over is a save that was interrupted (killed, out of disk). Orbax ignores it silently; we say so."""
    newest = max(self.manager.all_steps(), default=-1)
    for name in sorted(os.listdir(self.directory)):
      head, sep, _ = name.partition(ocp.utils.TMP_DIR_SUFFIX)
      if sep and head.isdigit() and int(head) > newest:     # older leftovers were superseded by a later save
        log.warning("checkpoint %s/%s was never finalized (an interrupted save left %s/%s); ignoring it, the "
                    "newest finalized step is %s", self.directory, head, self.directory, name,
                    newest if newest >= 0 else "none (starting over)")

  def _warn_unreadable(self, step, e):
    log.warning("checkpoint %s/%d is unreadable (%s: %s); falling back to an older one", self.directory, step,
                type(e).__name__, (str(e).splitlines() or [""])[0][:200])

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs of `tree` (optionally with new shardings: restore onto another mesh)."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _check_same_arrays(saved_flat: dict, target, where: str):
  """Raises CheckpointMismatch naming the array paths that are missing, extra or of another shape."""
  have = {k: tuple(getattr(v, "shape", ())) for k, v in saved_flat.items()}
  want = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(target).items() if hasattr(v, "shape")}
  name = lambda k: ".".join(map(str, k))
  only_saved = sorted(name(k) for k in have.keys() - want.keys())
  only_target = sorted(name(k) for k in want.keys() - have.keys())
  shapes = sorted(f"{name(k)}: saved {have[k]} vs {want[k]}" for k in have.keys() & want.keys() if have[k] != want[k])
  if only_saved or only_target or shapes:
    raise CheckpointMismatch(
        f"checkpoint {where} does not match the state this config builds: {len(only_saved)} saved arrays the "
        f"config lacks {only_saved[:4]}, {len(only_target)} config arrays not in the checkpoint {only_target[:4]}, "
        f"{len(shapes)} shape differences {shapes[:4]}. The run was saved with another model or optimizer config "
        f"(e.g. a stage's freeze_vision or grad_accum, or the model sizes): resume with the config it was started "
        f"with, or start a new workdir.")


def save_tree(path: str, tree) -> None:
  """Writes one pytree of arrays to `path` (synchronously, replacing an older one); Orbax renames a complete
  temporary directory into place, so `path` exists only when complete."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), tree, force=True)
  ckptr.wait_until_finished()
  ckptr.close()


def restore_tree(path: str, abstract_tree):
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} does not exist")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_tree)
