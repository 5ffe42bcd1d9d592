"""2 processes x 2 CPU devices (gloo) train exactly like 1 process x 4."""

import json
import os
import socket
import subprocess
import sys

import pytest
from cpu_collectives import retry_on_rendezvous_abort

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _result(proc) -> dict:
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
  return json.loads(lines[-1][len("RESULT "):]) if lines else {}


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
@retry_on_rendezvous_abort
def test_two_processes_match_one(data_dir):
  port = str(_free_port())
  # Without the shared compilation cache: a run with it hung in a collective
  # (cause not established); without it the processes compile alike.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  start = lambda *a: subprocess.Popen([sys.executable, WORKER, data_dir, *a],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env)
  workers = [start("2", str(i), port, "2") for i in range(2)]
  try:
    two = [_result(p) for p in workers]
  finally:
    for p in workers:
      if p.poll() is None:
        p.kill()
  one = _result(start("1", "0", port, "4"))
  assert two[0]["processes"] == 2 and two[0]["devices"] == 4
  assert one["processes"] == 1 and one["devices"] == 4
  assert len(one["losses"]) == 3
  for a, b in zip(one["losses"], two[0]["losses"]):
    assert abs(a - b) <= 1e-5, (one, two[0])
  assert abs(one["checksum"] - two[0]["checksum"]) <= 1e-4 * abs(one["checksum"])
