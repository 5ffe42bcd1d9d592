"""SIGTERM and Ctrl-C: the step finishes, a checkpoint is saved, one clear
line, exit 0 (SIGTERM) or 130 (Ctrl-C); a second Ctrl-C exits at once."""

import os
import signal
import time

import pytest

import training_runs as runs
from mmjax import cli, run


def test_sigterm_saves_and_exits_zero(tmp_path, data_dir):
  workdir = str(tmp_path)
  # checkpoint_every is never reached: the last save comes from the SIGTERM
  # (orbax always saves the first step).
  proc = runs.launch(workdir, data_dir, "train.steps=1000", "train.log_every=1",
                     "train.checkpoint_every=1000")
  runs.signal_after(proc, workdir, 2, signal.SIGTERM)
  rc, out, err = runs.finish(proc)
  assert rc == 0, err[-3000:]
  saved = runs.checkpoint_steps(workdir)[-1]
  assert saved > 1 and saved == runs.logged_steps(workdir)[-1]
  assert (f"preempted (SIGTERM): saved checkpoint at step {saved} in "
          f"{os.path.join(workdir, 'checkpoints')}; rerun the same command to resume"
          in out.splitlines())
  assert "Traceback" not in err
  assert int(runs.checkpoint_state(workdir, saved)["step"]) == saved
  assert not os.path.exists(os.path.join(workdir, "summary.json"))   # No eval.
  assert not os.path.exists(os.path.join(workdir, ".lock"))   # Released.


def test_ctrl_c_saves_exits_130_and_resumes(tmp_path, data_dir):
  workdir = str(tmp_path)
  common = ("train.steps=1000", "train.log_every=1", "train.checkpoint_every=1000")
  proc = runs.launch(workdir, data_dir, *common)
  runs.signal_after(proc, workdir, 2, signal.SIGINT)
  rc, out, err = runs.finish(proc)
  assert rc == 130, err[-3000:]
  saved = runs.checkpoint_steps(workdir)[-1]
  assert saved > 1 and saved == runs.logged_steps(workdir)[-1]
  assert (f"interrupted (Ctrl-C): saved checkpoint at step {saved} in "
          f"{os.path.join(workdir, 'checkpoints')}; rerun the same command to resume"
          in out.splitlines())
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert not os.path.exists(os.path.join(workdir, ".lock"))   # Released.
  # The rerun continues from the saved step (and ends by SIGTERM: no eval).
  proc = runs.launch(workdir, data_dir, *common)
  runs.signal_after(proc, workdir, saved + 1, signal.SIGTERM)
  rc, out, err = runs.finish(proc)
  assert rc == 0, err[-3000:]
  assert f"resumed from checkpoint at step {saved}" in out
  assert runs.logged_steps(workdir)[:saved + 1] == list(range(1, saved + 2))


def test_second_ctrl_c_exits_at_once_saying_what_is_lost(tmp_path, data_dir):
  workdir = str(tmp_path)
  proc = runs.launch(workdir, data_dir, "train.steps=1000", "train.log_every=1",
                     "train.checkpoint_every=1000")
  runs.signal_after(proc, workdir, 2, signal.SIGINT)
  # Until it is gone: the first signal asks for a save, any later one
  # arrives while the step or the save is under way.
  while proc.poll() is None:
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.02)
  rc, out, err = runs.finish(proc)
  assert rc == 130
  lines = [l for l in err.splitlines() if l.startswith("mmjax:")]
  assert len(lines) == 1 and lines[0].startswith(
      "mmjax: SIGINT again: exiting at once; "), err[-3000:]
  assert "not" in lines[0] and os.path.join(workdir, "checkpoints") in lines[0]
  assert "Traceback" not in err
  assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_ctrl_c_of_a_terminal_with_data_workers(tmp_path, data_dir):
  """A terminal's Ctrl-C reaches the whole process group, the grain workers
  too: they leave it to the trainer, which still saves."""
  workdir = str(tmp_path)
  proc = runs.launch(workdir, data_dir, "train.steps=1000", "train.log_every=1",
                     "train.checkpoint_every=1000", "data.worker_count=1",
                     own_group=True)
  runs.signal_after(proc, workdir, 2, signal.SIGINT, group=True)
  rc, out, err = runs.finish(proc)
  assert rc == 130, err[-3000:]
  saved = runs.checkpoint_steps(workdir)[-1]
  assert f"interrupted (Ctrl-C): saved checkpoint at step {saved} in " in out
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


def test_ctrl_c_outside_the_train_loop_is_one_line(monkeypatch, capsys, data_dir):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(run, "train_and_evaluate", interrupted)
  with pytest.raises(SystemExit) as e:
    cli.train_main(["mmjax train", "--config",
                    os.path.join(runs.HERE, "tiny_cli_config.py"),
                    "--workdir", "unused", f"--config.data.dir={data_dir}"])
  assert e.value.code == 130
  err = capsys.readouterr().err
  assert err.strip().startswith("mmjax: interrupted (Ctrl-C) outside the train loop")
  assert len(err.strip().splitlines()) == 1
