"""The dry run compiles from abstract shapes: no data read, no arrays made,
and (with libtpu) for a TPU topology this machine does not have."""

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from mmjax.train import aot
from tiny import shapes_and_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_abstract_batch_is_the_pipelines(config):
  """The shapes the dry run compiles for are those training feeds."""
  shapes, batch = shapes_and_batch(config)
  assert aot.data_shapes(config) == shapes
  spec = aot.batch_shapes(config, shapes)
  assert set(spec) == set(batch)
  for name, (shape, dtype) in spec.items():
    got = batch[name]
    assert jnp.dtype(dtype) == got.dtype, name
    if name == "history":   # Narrower when all histories are short.
      assert got.shape[0] == shape[0] and got.shape[1] <= shape[1]
    else:
      assert got.shape == shape, name


def _dry_run(tmp_path, config, *overrides):
  cache = tmp_path / "cache"
  env = dict(os.environ, MMJAX_CACHE=str(cache))
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--config", config,
       "--dry_run", "--workdir", str(tmp_path / "w"), *overrides],
      capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "w" / "dry_run.json") as f:
    return json.load(f), cache


def test_local_dry_run_reads_no_data(tmp_path):
  r, cache = _dry_run(tmp_path, os.path.join(ROOT, "tests", "tiny_cli_config.py"))
  # The embedded catalog was never generated: its sizes came from the config.
  assert not cache.exists() or not any(cache.iterdir())
  assert r["devices"] == 1 and r["global_batch"] == 16
  assert r["per_device_bytes"]["total"] > r["per_device_bytes"]["arguments"] > 0
  assert r["flops_per_step"] > 0


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (the tpu extra: "
                    "pip install 'mmjax[tpu]') to compile for a TPU topology")
def test_base_compiles_for_v5e_2x2(tmp_path):
  r, _ = _dry_run(tmp_path, os.path.join(ROOT, "configs", "base.py"),
                  "--config.mesh.topology=v5e:2x2")
  assert r["topology"] == "v5e:2x2" and r["devices"] == 4
  assert r["mesh"] == {"data": 4, "model": 1}
  assert r["chip"] == "v5e" and r["fits"] is True
  assert r["hbm_bytes_per_device"] == 16 * 2**30
  assert 0 < r["per_device_bytes"]["total"] < r["hbm_bytes_per_device"]
  assert r["flops_per_step"] > 0 and r["roofline_step_seconds"] > 0


def test_training_refuses_a_topology(config, tmp_path):
  from mmjax.errors import MmjaxError
  from mmjax.run import train_and_evaluate
  config.mesh.topology = "v5e:2x2"
  with pytest.raises(MmjaxError, match="mesh.topology is for --dry_run"):
    train_and_evaluate(config, str(tmp_path / "w"), log=lambda *_: None)
  assert not (tmp_path / "w").exists()
