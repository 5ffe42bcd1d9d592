"""Device mesh and the shardings of batches and parameters."""

import re

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.errors import MmjaxError


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all devices).

  Within a slice the devices are laid out by `mesh_utils.create_device_mesh`,
  which follows the physical (ICI) topology of TPUs, so neighbours on an
  axis are neighbours on the torus. With mesh.dcn_data = n > 1 the devices
  form n slices joined by the slower data-center network: each slice gets
  the same (data / n, model) mesh and the slices are stacked on the data
  axis (outermost), so only the gradient all-reduce crosses DCN.
  """
  devices = list(jax.devices() if devices is None else devices)
  model, slices = mesh_cfg.model, mesh_cfg.dcn_data
  if model <= 0 or len(devices) % model:
    raise MmjaxError(
        f"config.mesh.model={model} must divide the device count {len(devices)}")
  data = len(devices) // model if mesh_cfg.data == -1 else mesh_cfg.data
  if data * model != len(devices):
    raise MmjaxError(
        f"config.mesh data*model = {data}*{model} != {len(devices)} devices")
  if data % slices:
    raise MmjaxError(f"config.mesh.dcn_data={slices} must divide the data "
                     f"axis ({data} devices)")
  if slices == 1:
    grid = mesh_utils.create_device_mesh(
        (data, model), devices, allow_split_physical_axes=True)
  else:
    grid = _hybrid_grid((data // slices, model), slices, devices)
  return Mesh(grid, ("data", "model"))


def _hybrid_grid(per_slice, slices: int, devices) -> np.ndarray:
  """The multislice device grid: slices stacked on the data axis. Devices
  that know their slice (TPU) go to `create_hybrid_device_mesh`; others
  (CPU, simulated) are cut into `slices` runs in device order, each laid out
  like one slice."""
  if all(hasattr(d, "slice_index") for d in devices):
    found = len({d.slice_index for d in devices})
    if found != slices:
      raise MmjaxError(f"config.mesh.dcn_data={slices} but the devices form "
                       f"{found} slice(s)")
    return mesh_utils.create_hybrid_device_mesh(
        per_slice, (slices, 1), devices, allow_split_physical_axes=True)
  n = len(devices) // slices
  return np.concatenate([
      mesh_utils.create_device_mesh(per_slice, devices[i * n:(i + 1) * n],
                                    allow_split_physical_axes=True)
      for i in range(slices)], axis=0)


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
