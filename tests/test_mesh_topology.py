"""The topology-aware mesh on 8 simulated CPU devices: shape and order."""

import importlib.util
import json
import subprocess
import sys

import pytest

CHECK = r"""
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from ml_collections import ConfigDict
from mmjax import mesh as mesh_lib
from mmjax.errors import MmjaxError

def ids(cfg):
  m = mesh_lib.make_mesh(ConfigDict(cfg))
  return dict(m.shape), [[d.id for d in row] for row in m.devices]

out = {}
out["ici"] = ids(dict(data=-1, model=2, dcn_data=1))
out["dcn"] = ids(dict(data=-1, model=2, dcn_data=2))
try:
  mesh_lib.make_mesh(ConfigDict(dict(data=-1, model=2, dcn_data=3)))
except MmjaxError as e:
  out["bad"] = str(e)
print(json.dumps(out))
"""


@pytest.mark.xdist_group("simulated_devices")
def test_ici_and_hybrid_mesh_shape_and_order():
  proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  shape, grid = r["ici"]
  assert shape == {"data": 4, "model": 2}
  assert sorted(sum(grid, [])) == list(range(8))
  # Two slices of four devices: the data axis is outermost across slices,
  # so its first half is slice 0 (devices 0-3) and its second half slice 1.
  shape, grid = r["dcn"]
  assert shape == {"data": 4, "model": 2}
  assert sorted(sum(grid[:2], [])) == [0, 1, 2, 3]
  assert sorted(sum(grid[2:], [])) == [4, 5, 6, 7]
  assert "dcn_data=3" in r["bad"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu (the tpu extra) for a TPU topology")
def test_model_axis_follows_the_tpu_torus():
  """On a v5e 4x4 slice each row of the (4, 4) mesh is one physical line of
  chips (a plain reshape of the device list gives 2x2 squares)."""
  from ml_collections import ConfigDict
  from mmjax import mesh as mesh_lib
  from mmjax.train.aot import topology_devices
  devices = topology_devices("v5e:4x4")
  mesh = mesh_lib.make_mesh(ConfigDict(dict(data=-1, model=4, dcn_data=1)), devices)
  for row in mesh.devices:
    coords = [tuple(d.coords) for d in row]
    assert len({c[1] for c in coords}) == 1, coords
    assert sorted(c[0] for c in coords) == [0, 1, 2, 3], coords


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu (the tpu extra) for a TPU topology")
def test_two_tpu_slices_split_the_data_axis_outermost():
  from ml_collections import ConfigDict
  from mmjax import mesh as mesh_lib
  from mmjax.train.aot import topology_devices
  devices = topology_devices("v5e:2x2", slices=2)
  mesh = mesh_lib.make_mesh(ConfigDict(dict(data=-1, model=2, dcn_data=2)), devices)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert [[d.slice_index for d in row] for row in mesh.devices] == [
      [0, 0], [0, 0], [1, 1], [1, 1]]
