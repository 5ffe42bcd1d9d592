"""The step on 8 simulated devices equals the step on 1 device."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.xdist_group("simulated_devices")
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
