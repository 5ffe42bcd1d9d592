"""One run per workdir (the lock), whole-file writes, and torn metrics lines."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import training_runs as runs
from mmjax.errors import MmjaxError
from mmjax.report import figures
from mmjax.train import reporting
from mmjax.train.atomic import atomic_write
from mmjax.train.outputs import write_outputs
from mmjax.train.workdir_lock import WorkdirLock

HOST = socket.gethostname()
ROWS = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, pid, host=HOST):
  with open(os.path.join(workdir, ".lock"), "w") as f:
    json.dump({"pid": pid, "host": host}, f)


def test_second_lock_is_refused_with_the_owner(tmp_path):
  workdir = str(tmp_path)
  with WorkdirLock(workdir):
    with pytest.raises(MmjaxError) as e:
      WorkdirLock(workdir).acquire()
    assert str(e.value) == f"workdir {workdir} is in use by pid {os.getpid()} on {HOST}"
  assert not os.path.exists(os.path.join(workdir, ".lock"))   # Released.
  with WorkdirLock(workdir):   # Free again.
    pass


_RACE = """
import sys, time
from mmjax.errors import MmjaxError
from mmjax.train.workdir_lock import WorkdirLock
time.sleep(float(sys.argv[2]) - time.time())   # All start together.
try:
  with WorkdirLock(sys.argv[1]):
    time.sleep(3)   # Past the slowest start.
except MmjaxError:
  sys.exit(2)
"""


def test_of_runs_started_together_exactly_one_gets_the_lock(tmp_path):
  start = str(time.time() + 3)
  procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path), start])
           for _ in range(6)]
  assert sorted(p.wait() for p in procs) == [0, 2, 2, 2, 2, 2]


def test_lock_of_another_host_is_refused(tmp_path):
  _write_lock(tmp_path, _dead_pid(), host="elsewhere")
  with pytest.raises(MmjaxError, match="in use by pid .* on elsewhere"):
    WorkdirLock(str(tmp_path)).acquire()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
  pid = _dead_pid()
  _write_lock(tmp_path, pid)
  logged = []
  with WorkdirLock(str(tmp_path), log=logged.append):
    with open(tmp_path / ".lock") as f:
      assert json.load(f) == {"pid": os.getpid(), "host": HOST}
  assert logged == [f"WARNING: taking over the stale lock of workdir {tmp_path} "
                    f"(pid {pid} on {HOST} is gone)"]


def test_taking_over_never_deletes_a_fresh_lock(tmp_path, monkeypatch):
  """Two runs see the same stale lock; the first replaces it with its own
  before the second moves it aside: the second must put it back."""
  _write_lock(tmp_path, os.getppid())   # The first run's, alive.
  seen = iter([{"pid": _dead_pid(), "host": HOST}])   # The second's old read.
  real = WorkdirLock._read_owner
  monkeypatch.setattr(WorkdirLock, "_read_owner",
                      lambda self: next(seen, None) or real(self))
  with pytest.raises(MmjaxError, match=f"in use by pid {os.getppid()} "):
    WorkdirLock(str(tmp_path)).acquire()
  with open(tmp_path / ".lock") as f:
    assert json.load(f) == {"pid": os.getppid(), "host": HOST}
  assert os.listdir(tmp_path) == [".lock"]


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  lock.acquire()
  _write_lock(tmp_path, 1)   # Someone removed it and took it meanwhile.
  lock.release()
  assert os.path.exists(tmp_path / ".lock")


def test_cli_refuses_a_workdir_in_use_in_one_line(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with WorkdirLock(workdir):
    rc, out, err = runs.finish(runs.launch(workdir, data_dir))
  assert rc == 2
  assert err.splitlines() == [
      f"mmjax: error: workdir {workdir} is in use by pid {os.getpid()} on {HOST}"]
  assert os.listdir(workdir) == []   # Nothing written, nothing trained.


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with atomic_write(str(path)) as f:
      f.write("half of the new")
      raise RuntimeError("disk full")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["summary.json"]   # No temp file left.
  with atomic_write(str(path)) as f:
    f.write("new")
  assert path.read_text() == "new"


def test_summary_survives_a_failed_rewrite(tmp_path):
  (tmp_path / "summary.json").write_text('{"old": 1}')
  with pytest.raises(TypeError):   # Not JSON: fails halfway through the dump.
    write_outputs(str(tmp_path), {"a": 1, "b": object()}, "", str, print)
  assert json.loads((tmp_path / "summary.json").read_text()) == {"old": 1}


def _torn(tmp_path) -> str:
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in ROWS)
    f.write('{"step": 3, "lo')   # Killed mid-line.
  return path


def test_readers_skip_a_torn_last_line(tmp_path):
  path = _torn(tmp_path)
  logged = []
  assert reporting.read_metrics(path, logged.append) == ROWS
  assert logged == [f"WARNING: dropped the torn last line 3 of {path} (its "
                    "writer stopped mid-line)"]
  assert figures.curves_png(path).startswith(b"\x89PNG")   # The report's curves.


def test_resume_drops_a_torn_last_line(tmp_path):
  path = _torn(tmp_path)
  logged = []
  reporting.truncate_after(path, 2, logged.append)
  assert len(logged) == 1 and "torn last line 3" in logged[0]
  with open(path) as f:
    assert [json.loads(line) for line in f] == ROWS
  writer = reporting.MetricsWriter(str(tmp_path))
  writer.write(3, {"loss": 1.0})   # Appends after the last whole line.
  writer.close()
  assert reporting.read_metrics(path) == ROWS + [{"step": 3, "loss": 1.0}]


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"st\n{"step": 2}\n')
  with pytest.raises(MmjaxError, match="line 2 is not JSON"):
    reporting.read_metrics(str(path))


def test_dry_run_takes_no_lock(config, tmp_path):
  from mmjax.run import train_and_evaluate
  workdir = str(tmp_path)
  with WorkdirLock(workdir):   # In use by a run: a dry run still goes ahead.
    got = train_and_evaluate(config, workdir, log=lambda *_: None, dry_run=True)
  assert got["dry_run"]


def test_curves_join_the_steps_that_log_each_quantity():
  """Evaluations log every few steps: their panel is one line through those
  steps, not points isolated by the rows in between."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from mmjax.train.reporting import curves_figure
  rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 7)]
  rows[2]["valid_recall@20"], rows[5]["valid_recall@20"] = 0.1, 0.2
  fig = curves_figure(rows)
  loss, valid = (ax.lines[0] for ax in fig.axes[:2])
  assert list(loss.get_xdata()) == [1, 2, 3, 4, 5, 6]
  assert list(valid.get_xdata()) == [3, 6] and list(valid.get_ydata()) == [0.1, 0.2]
  plt.close(fig)
