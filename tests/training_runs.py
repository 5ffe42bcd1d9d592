"""Helpers for tests that run `launch.py` on the tiny config in a subprocess."""

import os
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import xla_env

from mmjax.train import reporting

HERE = os.path.dirname(os.path.abspath(__file__))
# Logged fields that time the run: they differ between identical runs.
TIMINGS = ("examples_per_sec", "data_wait_share")
ROOT = os.path.dirname(HERE)


def launch(workdir, data_dir, *overrides, devices: int = 1,
           own_group: bool = False) -> subprocess.Popen:
  """Starts `launch.py` with tests/tiny_cli_config.py; stdout/stderr piped.
  `own_group`: in a process group of its own, as a terminal runs a command
  (its Ctrl-C goes to the whole group: `os.killpg`)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = xla_env.with_devices(devices)
  cmd = [sys.executable, "launch.py", "--config", os.path.join(HERE, "tiny_cli_config.py"),
         f"--workdir={workdir}", f"--config.data.dir={data_dir}",
         *[f"--config.{o}" for o in overrides]]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=own_group)


def logged_steps(workdir) -> list[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  try:
    return [r["step"] for r in reporting.read_metrics(path)]
  except (OSError, ValueError):   # Not there yet, or a row half written.
    return []


def signal_after(proc, workdir, step: int, sig, timeout: float = 600,
                 group: bool = False) -> int:
  """Sends `sig` once metrics.jsonl logs a step >= `step`; returns that step.
  `group`: to the process's whole group (see `launch`).

  Fails if the run ends first (the test would then prove nothing).
  """
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = logged_steps(workdir)
    if steps and steps[-1] >= step:
      assert proc.poll() is None, "run ended before it could be interrupted"
      (os.killpg if group else os.kill)(proc.pid, sig)
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f"run exited early:\n{proc.communicate()[1][-3000:]}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"no step {step} within {timeout}s")


def finish(proc, timeout: float = 600) -> tuple[int, str, str]:
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def kill_after(proc, workdir, step: int) -> int:
  logged = signal_after(proc, workdir, step, signal.SIGKILL)
  proc.communicate(timeout=60)
  return logged


def checkpoint_steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def checkpoint_state(workdir, step: int):
  """The saved train state as a pytree of host arrays (no model needed)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)
