"""SIGTERM: the step finishes, a checkpoint is saved, one clear line, exit 0."""

import os
import signal

import training_runs as runs


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
