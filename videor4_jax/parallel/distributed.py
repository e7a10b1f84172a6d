"""Multi-process (multi-host) runs: opt-in `jax.distributed` set-up and the host <-> global-array glue.

One JAX process per host; every process runs the same program on the global mesh (multi-controller SPMD). What
each process does differently, and why:

  * data: process p reads only the rows of every global batch that its devices hold (`process_rows`), so the
    global batch, and with it every metric, is the same whatever the number of processes (the pipeline's global
    order does not depend on the process count, see `pipeline.make_dataset(rows=...)`);
  * global arrays are assembled from those rows with `jax.make_array_from_process_local_data`; values every
    process needs on the host (rollout tokens for the text rewards, params for the HF export) are all-gathered;
  * files that are not checkpoints (metrics, report, HF export) are written by process 0 only (`is_primary`);
    Orbax checkpoints are collective: every process calls save/restore and writes its own shards.

CPU runs (tests, two local processes) need a CPU collectives backend: gloo, selected before initialization.
"""
from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> None:
  """`jax.distributed.initialize` with CPU collectives enabled; call before any other JAX call.

  With no arguments JAX detects the cluster (TPU pods, SLURM, ...); for local runs give all three:
  `initialize("localhost:12355", 2, i)` in process i.
  """
  if (coordinator_address is None) != (num_processes is None) or (num_processes is None) != (process_id is None):
    raise ValueError(f"distributed: give coordinator_address, num_processes and process_id together (got "
                     f"{coordinator_address!r}, {num_processes!r}, {process_id!r}), or none of them to let JAX "
                     "detect the cluster")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"distributed: process_id={process_id} outside [0, num_processes={num_processes})")
  # Without it, cross-process collectives on CPU fail at the first all-reduce (jax 0.10.2 default: none).
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_primary() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def process_rows(sharding, global_shape: tuple[int, ...], axis: int = 0) -> tuple[int, int]:
  """[lo, hi): the rows of `axis` that this process's devices hold under `sharding`.

  They must be one contiguous block (true for `make_mesh` meshes, which order devices process by process), because
  the pipeline hands each process one block of every global batch.
  """
  idx = sharding.addressable_devices_indices_map(tuple(global_shape)).values()
  rows = sorted({(s[axis].start or 0, global_shape[axis] if s[axis].stop is None else s[axis].stop) for s in idx})
  lo, hi = rows[0][0], max(r[1] for r in rows)
  covered = sum(b - a for a, b in rows)
  if covered != hi - lo or any(b[0] != a[1] for a, b in zip(rows, rows[1:])):
    raise ValueError(f"process {jax.process_index()} holds rows {rows} of axis {axis} (not one contiguous block) "
                     f"under {sharding}; order the mesh devices process by process")
  return lo, hi


def to_global(sharding, local: np.ndarray, global_rows: int, axis: int = 0) -> jax.Array:
  """The global array (`global_rows` along `axis`) whose rows [lo, hi) (this process's block, `process_rows`)
  are `local`."""
  local = np.asarray(local)
  shape = list(local.shape)
  shape[axis] = global_rows
  lo, hi = process_rows(sharding, tuple(shape), axis)
  if hi - lo != local.shape[axis]:
    raise ValueError(f"to_global: this process holds rows [{lo}, {hi}) of axis {axis} but was given "
                     f"{local.shape[axis]} rows (local shape {local.shape}); every process must give its block")
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def to_host(tree):
  """The whole value of every (global) array in `tree`, as numpy, on every process. A collective when there are
  several processes: every process must call it at the same point."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
