"""The prepared accelerator check runs end to end (here on the CPU, tiny)."""

import json

from mmjax.bench import accelerator_check


def test_writes_throughput_demo_and_device(tmp_path):
  out = tmp_path / "check.json"
  accelerator_check.main([
      "--out", str(out), "--throughput-config", "tiny", "--demo-config", "tiny",
      "--demo-steps", "8", "--rounds", "1", "--steps", "1", "--runs", "jax",
      "--workdir", str(tmp_path / "demo")])
  got = json.loads(out.read_text())
  assert got["device"].startswith("cpu: ")
  assert got["throughput"]["dtype"] == "bfloat16"
  assert got["throughput"]["jax"]["examples_per_sec"] > 0
  assert got["demo"]["steps"] == 8 and got["demo"]["examples_per_sec"] > 0
  assert 0.0 <= got["demo"]["data_wait_share"] <= 1.0
  assert (tmp_path / "demo" / "summary.json").exists()
