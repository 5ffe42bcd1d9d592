"""launch.py turns bad input into one clear line and a non-zero exit."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args):
  return subprocess.run([sys.executable, "launch.py", "--config", "configs/demo.py", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_error_line(proc, needle):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("mmjax: error:")]
  assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_unknown_config_key(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.train.stepz=3")
  _one_error_line(proc, "unknown config key: config.train.stepz")


def test_missing_data_dir(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", f"--config.data.dir={tmp_path}/nope")
  _one_error_line(proc, "data dir not found")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")   # A path under a file can't be created, even as root.
  proc = _launch(f"--workdir={blocker}/run")
  _one_error_line(proc, "workdir is not writable")


def test_bad_config_value(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.model.fusion.kind=gated")
  _one_error_line(proc, "config.model.fusion.kind")
