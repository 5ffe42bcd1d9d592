"""Device mesh and the shardings of batches and parameters."""

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.errors import MmjaxError


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all devices).

  The `model` axis is there for later tensor/FSDP sharding rules; with the
  default model=1 every parameter is replicated and the batch is split on
  `data`.
  """
  devices = list(jax.devices() if devices is None else devices)
  model = mesh_cfg.model
  if model <= 0 or len(devices) % model:
    raise MmjaxError(
        f"config.mesh.model={model} must divide the device count {len(devices)}")
  data = len(devices) // model if mesh_cfg.data == -1 else mesh_cfg.data
  if data * model != len(devices):
    raise MmjaxError(
        f"config.mesh data*model = {data}*{model} != {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """k batches stacked on a leading axis: each sharded on `data`."""
  return NamedSharding(mesh, P(None, "data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rule_shardings(tree, mesh: Mesh, rules):
  """NamedShardings for `tree` from config.mesh.rules: the first (regex, spec)
  whose regex re.search-es a leaf's path ("text/layers/0/.../kernel") gives
  its PartitionSpec. Unmatched leaves, and mesh axes that do not divide their
  dimension (e.g. an odd vocabulary), stay replicated."""
  compiled = [(re.compile(regex), tuple(spec)) for regex, spec in rules]

  def leaf_sharding(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    name = name.removesuffix("/value")   # nnx.Variable's own leaf.
    spec = next((s for r, s in compiled if r.search(name)), ())
    shape = np.shape(leaf)
    if len(spec) > len(shape):
      raise MmjaxError(f"config.mesh.rules: spec {spec} has more dimensions "
                       f"than {name} {shape}")
    spec = [axis if axis is not None and shape[i] % _axes_size(mesh, axis) == 0
            else None for i, axis in enumerate(spec)]
    return NamedSharding(mesh, P(*spec))

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def _axes_size(mesh: Mesh, axis) -> int:
  return int(np.prod([mesh.shape[a] for a in
                      (axis if isinstance(axis, (tuple, list)) else (axis,))]))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape["data"]
  if batch_size % n or batch_size % jax.process_count():
    raise MmjaxError(
        f"config.train.batch_size={batch_size} is not divisible by the "
        f"{n} devices of the mesh's data axis"
        + (f" and {jax.process_count()} processes" if jax.process_count() > 1 else ""))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles each process's slice of the batch into global jax.Arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def global_batches(locals_: list, mesh: Mesh) -> dict:
  """k local batches stacked on a new leading axis, as global jax.Arrays
  (the input of train.step.make_multi_step)."""
  sharding = stacked_batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.stack([np.asarray(b[k]) for b in locals_]))
          for k in locals_[0]}
