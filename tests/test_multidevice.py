"""Steps on 8 simulated devices equal the steps on 1 device."""

import json
import os
import subprocess
import sys

import pytest
from cpu_collectives import retry_on_rendezvous_abort

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.xdist_group("simulated_devices")
@retry_on_rendezvous_abort
def test_eight_devices_match_one(data_dir):
  proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_check.py"), data_dir],
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(r["terms_names"]) >= {"infonce", "siglip", "mmd", "coral", "mlm",
                                   "softmax", "bpr", "bce"}
  assert r["loss"] <= 1e-5 and r["terms"] <= 1e-5, r
  assert r["grads"] <= 1e-5, r
  assert r["params"] <= 1e-4, r
  # train.steps_per_call: two steps in one call, on 8 devices, are the two
  # single steps on 1 device.
  assert r["multi_step_loss_shape"] == [2], r
  assert r["multi_step_losses"] <= 1e-5 and r["multi_step_params"] <= 1e-4, r
