"""config.mesh.rules: regex -> PartitionSpec for parameters and optimizer state."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from mmjax.config import default_config, validate
from mmjax.errors import MmjaxError
from mmjax import mesh as mesh_lib
from cpu_collectives import retry_on_rendezvous_abort

HERE = os.path.dirname(os.path.abspath(__file__))


class _Tiny(nnx.Module):
  def __init__(self):
    self.proj = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    self.embed = nnx.Embed(5, 4, rngs=nnx.Rngs(0))


def _specs(rules):
  mesh = mesh_lib.make_mesh(default_config().mesh, jax.devices()[:1])
  params = nnx.split(_Tiny(), nnx.Param)[1]
  sh = mesh_lib.rule_shardings(params, mesh, rules)
  return {"/".join(map(str, k)): v.value.spec for k, v in nnx.to_flat_state(sh)}


def test_first_matching_rule_wins_and_rest_is_replicated():
  specs = _specs(((r"proj/kernel$", ("model", None)), (r"kernel$", (None, "data")),
                  (r"embedding$", ("data", None))))
  assert specs["proj/kernel"] == jax.sharding.PartitionSpec("model", None)
  assert specs["embed/embedding"] == jax.sharding.PartitionSpec("data", None)
  assert specs["proj/bias"] == jax.sharding.PartitionSpec()


def test_spec_longer_than_the_array_names_the_parameter():
  with pytest.raises(MmjaxError, match="proj/bias"):
    _specs(((r"bias$", ("data", None)),))


@pytest.mark.parametrize("rules,match", [
    (((r"kernel", ("batch", None)),), "axes must be"),
    (((r"(", ("data",)),), "bad regex"),
    ((("kernel",),), "expected"),
])
def test_bad_rules_are_config_errors(rules, match):
  cfg = default_config()
  cfg.mesh.rules = rules
  with pytest.raises(MmjaxError, match=r"config\.mesh\.rules\[0\].*" + match):
    validate(cfg)


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
@retry_on_rendezvous_abort
def test_fsdp_on_eight_devices_equals_replicated(data_dir):
  proc = subprocess.run([sys.executable, os.path.join(HERE, "scale_check.py"), "fsdp",
                         data_dir], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  # Sharded over data, and Adam's moments follow their parameter.
  assert r["kernel_spec"] == r["mu_spec"] == "P('data', None)", r
  assert r["kernel_shards"] == 2, r   # 16 rows over 8 devices.
  # Metrics are compared relative to their size (at least 1): the gradient norm is large.
  assert r["loss"] <= 1e-5 and r["metrics"] <= 1e-5, r
  assert r["opt_state"] <= 1e-5, r
  # Adam divides by sqrt(v): for a gradient near eps, float-reduction noise in it moves the
  # update by a fraction of lr, so the parameters get a bound relative to lr (2 steps).
  assert r["params"] <= 2 * 1e-2 * r["lr"], r
