"""The front door: help and version, `config show`, and bad input as one
clear line with a non-zero exit."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def _mmjax(*args):
  return _run("-m", "mmjax", *args)


def _launch(*args):
  return _run("launch.py", "--config", "configs/demo.py", *args)


def _one_error_line(proc, needle):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("mmjax: error:")]
  assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [
    ("-m", "mmjax", "--help"), ("-m", "mmjax", "train", "--help"),
    ("launch.py", "--help"), ("-m", "mmjax", "config", "show", "--help")],
    ids=["mmjax", "train", "launch", "config_show"])
def test_help_lists_the_flags_and_the_config_reference(command):
  proc = _run(*command)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "docs/config.md" in proc.stdout and "--config" in proc.stdout
  if command in (("-m", "mmjax", "train", "--help"), ("launch.py", "--help")):
    for flag in ("--workdir", "--dry_run", "--verbose", "--config.KEY=VALUE"):
      assert flag in proc.stdout


def test_version():
  proc = _mmjax("--version")
  assert proc.returncode == 0
  assert proc.stdout.strip() == f"mmjax {metadata.version('mmjax')}"


def test_no_command_prints_usage():
  proc = _mmjax()
  assert proc.returncode == 2 and "usage: mmjax COMMAND" in proc.stderr


def test_unknown_and_renamed_commands():
  _one_error_line(_mmjax("fly"), "unknown command 'fly'")
  _one_error_line(_mmjax("encode", "--items", "x"), "renamed: use mmjax features")


def test_config_show_prints_the_resolved_config():
  proc = _mmjax("config", "show", "demo:small", "--config.train.lr=0.01")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert "train.steps = 400  # default: 1000" in lines
  assert "train.lr = 0.01  # default: 0.002" in lines
  assert "seed = 0" in lines


def test_config_show_refuses_a_bad_config():
  _one_error_line(_mmjax("config", "show", "demo", "--config.frozen.layers=1"),
                  "config.frozen.layers was renamed config.feature_graph.layers")
  _one_error_line(_mmjax("config", "show", "mmrec", "--config.data.dir=d",
                         "--config.data.inter_file=x", "--config.loss.mmd=1"),
                  "config.loss.mmd=1.0 is not read by data.name='mmrec'")
  _one_error_line(_mmjax("config", "show", "nope"), "shipped configs: base,")


def test_unknown_config_key(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.train.stepz=3")
  _one_error_line(proc, "unknown config key: config.train.stepz (did you mean "
                  "config.train.steps?)")


def test_missing_workdir():
  _one_error_line(_launch(), "--workdir is required")


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


@pytest.mark.parametrize("text, value", [
    ("seed,data", ("seed", "data")), ("train.batch_size", ("train.batch_size",)),
    ("(1, 2)", (1, 2)), ("1,2", (1, 2)), ("text/.*", ("text/.*",)), ("", ())])
def test_tuple_overrides(text, value):
  from mmjax.config import loader
  key = loader.key_of("train.allow_resume_change")
  assert loader.parse_value(key, text) == value
