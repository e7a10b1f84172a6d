"""The rollout split into row groups that run side by side, one per device, with no communication between them.

On a CPU, XLA runs one program's ops one after another, each on the intra-op thread pool; a decode token's ops are
small (a 16-row product, an attention over a few hundred slots) and a second thread speeds them up little: the
quick rollout of bench/rollout.py takes 0.73 s on one thread and 0.63-0.66 s on two (docs/BENCHMARKS.md). Split
into two groups of rows, each group its own copy of the compiled rollout on its own CPU device, the two copies run
at once, one per core: 0.42-0.45 s. Each group is a whole rollout of its rows (its own decode loops, stopping when
its own rows are done, its own row compaction), so nothing crosses between devices but the work counts at the
end. Tokens, log-probs and actions are those of the ungrouped rollout: rows sample by their index in the whole
batch (`rollout.rollout_body`'s `row_offset`).

A CPU gets N devices from `XLA_FLAGS=--xla_force_host_platform_device_count=N`, set before JAX starts; N = the
cores the run may use is the fast setting (more groups than cores measured slower). On accelerators, shard the
rows of `make_rollout_fn` over the mesh instead (train.py): a device there runs its own program anyway.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from videor4_jax.rumination import env as env_lib
from videor4_jax.rumination.rollout import rollout_body
from videor4_jax.rumination.trajectory import Trajectory

GROUPS = "row_groups"


def make_row_group_rollout_fn(env: env_lib.RuminationEnv, devices=None, *, num_generations: int = 1,
                              greedy: bool = False, temperature: float | None = None, top_p: float | None = None):
  """Returns `jit(fn)(params, prompts, key) -> Trajectory`, as `make_rollout_fn`, with the B prompts split into
  len(devices) groups of consecutive prompts (default devices: every local device), group i on device i. B must
  be a multiple of the group count. The trajectory's rows are in the ungrouped order, split over the devices;
  `work` is the sum over groups (`decode_iterations_r`: the most any group ran)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_row_group_rollout_fn: no devices")
  mesh = Mesh(np.array(devices), (GROUPS,))
  body = rollout_body(env, num_generations=num_generations, greedy=greedy, temperature=temperature, top_p=top_p)

  def one_group(params, prompts, key):
    rows = prompts["input_ids"].shape[0] * num_generations
    traj = body(params, prompts, key, row_offset=jax.lax.axis_index(GROUPS) * rows)
    work = jax.tree.map(lambda x: jax.lax.psum(x, GROUPS), traj.work)
    return traj.replace(work=work.replace(decode_iterations_r=jax.lax.pmax(traj.work.decode_iterations_r, GROUPS)))

  specs = {f.name: P(GROUPS) for f in dataclasses.fields(Trajectory)}
  specs.update(positions=P(None, GROUPS), work=P())            # positions are [3, B, S]; work is batch totals
  grouped = jax.shard_map(one_group, mesh=mesh, in_specs=(P(), P(GROUPS), P()), out_specs=Trajectory(**specs),
                          check_vma=False)

  def row_group_rollout_fn(params, prompts, key):
    num_prompts = prompts["input_ids"].shape[0]
    if num_prompts % len(devices):
      raise ValueError(f"make_row_group_rollout_fn: {num_prompts} prompts do not split into {len(devices)} equal "
                       f"row groups (one per device); pass a multiple of {len(devices)} prompts or fewer devices")
    return grouped(params, prompts, key)

  return jax.jit(row_group_rollout_fn)
