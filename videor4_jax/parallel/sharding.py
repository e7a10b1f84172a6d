"""Mesh and logical-axis sharding rules: one table maps every logical axis name used by the model to mesh axes.

Mesh axes are ("data", "fsdp", "tensor") with Auto axis types (GSPMD propagation; ENV_NOTES pitfall 1).
Parameters are sharded FSDP-style over "fsdp" on their embed axis and Megatron-style over "tensor" on heads / mlp /
vocab; activations are sharded on batch over ("data", "fsdp").
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from videor4_jax.model.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv_heads_act", None),
    ("layers", None),
    ("vis_patch", None),
    ("vis_embed", "fsdp"),
    ("vis_heads", "tensor"),
    ("vis_mlp", "tensor"),
    ("vis_mlp2", None),
)


def make_mesh(shape=(1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """A ("data", "fsdp", "tensor") mesh; `shape` entries may be -1 (fill with the remaining devices)."""
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)}: at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) > len(devices) or int(np.prod(shape)) < 1:
    raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices but {len(devices)} are "
                     f"available; choose a shape whose product divides the device count")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices[:int(np.prod(shape))])


def param_logical_specs(config: ModelConfig):
  """PartitionSpecs of logical axis names for every parameter (nothing materialized)."""
  from videor4_jax.model.vlm import Qwen25VL, init_params  # noqa: F401
  import jax.numpy as jnp
  v = config.vision
  n = 4 * v.spatial_merge_size ** 2
  args = (jnp.zeros((1, 4), jnp.int32), jnp.zeros((3, 1, 4), jnp.int32), jnp.ones((1, 4, 4), bool),
          jnp.zeros((n, v.patch_dim), jnp.float32), jnp.array([[1, 2 * v.spatial_merge_size,
                                                                  2 * v.spatial_merge_size]], jnp.int32))
  boxed = jax.eval_shape(lambda: Qwen25VL(config).init(jax.random.key(0), *args))
  return nn.get_partition_spec(boxed)


def param_shardings(config: ModelConfig, mesh, rules=LOGICAL_RULES):
  """NamedShardings for `{"params": ...}` under `rules`."""
  return nn.logical_to_mesh_sharding(param_logical_specs(config), mesh, rules)


@contextlib.contextmanager
def use_mesh(mesh):
  """`jax.set_mesh(mesh)` with LOGICAL_RULES active, for tracing and running the model's jitted functions.
  Without the rules every activation constraint in the model (model/layers.constrain) is a no-op."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def row_shards(mesh) -> int:
  """How many devices a batch's rows are split over: the mesh's data x fsdp."""
  return int(mesh.shape["data"] * mesh.shape["fsdp"])


def constrain_rows(x, row_axis: int = 0):
  """Inside jit: split array `x` along `row_axis` over the mesh's ("data", "fsdp") axes, when the current mesh has
  them and they divide the rows; otherwise `x` unchanged. Arrays a jitted function creates itself (a rollout's KV
  cache) get no sharding from its arguments, and XLA may keep them whole on every device without it."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names):
    return x
  if x.shape[row_axis] % (mesh.shape["data"] * mesh.shape["fsdp"]):
    return x
  spec = [None] * x.ndim
  spec[row_axis] = ("data", "fsdp")
  return jax.lax.with_sharding_constraint(x, P(*spec))


def batch_sharding(mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_axis] = ("data", "fsdp")
  return NamedSharding(mesh, P(*spec))
