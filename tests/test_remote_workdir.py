"""A workdir in an object store (gs:// on a local emulator): checkpoints,
the best checkpoint, metrics, summary and the lock, all through epath/Orbax."""

import json
import os
import socket
import threading
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

import remote_fixtures
from mmjax.config import default_config
from mmjax.errors import MmjaxError
from mmjax.train import paths
from mmjax.train import reporting
from mmjax.train import resume
from mmjax.train import workdir_lock
from mmjax.train.checkpoint import BestCheckpoint, Checkpointer
from mmjax.train.outputs import open_workdir, write_outputs
from mmjax.train.workdir_lock import WorkdirLock

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def remote():
  """A function returning a fresh gs:// workdir."""
  why = remote_fixtures.missing()
  if why:
    pytest.skip(why)
  return remote_fixtures.remote_workdir


def _state(step, dim=4):
  return dict(params=dict(w=jnp.full((dim, 2), float(step))),
              step=jnp.int32(step), skipped=jnp.int32(0))


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _names(url) -> list[str]:
  return sorted(p.name for p in epath.Path(url).iterdir())


def test_paths_keep_urls_and_refuse_schemes_orbax_cannot_write(tmp_path):
  assert paths.resolve("gs://b/run/") == "gs://b/run"
  assert paths.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
  assert paths.resolve(os.path.relpath(tmp_path)) == str(tmp_path)
  with pytest.raises(MmjaxError) as e:
    paths.check_checkpointable("s3://b/run/checkpoints")
  assert str(e.value) == (
      "cannot write checkpoints in s3://b/run/checkpoints: Orbax writes arrays "
      "to local paths and gs:// only; use such a --workdir")


def test_checkpointer_saves_and_restores_state_data_and_loop(remote):
  workdir = remote()
  ckpt = Checkpointer(workdir, every=1, keep=2)
  it = _iterator()
  next(it)
  ckpt.save(1, _state(1), it, loop={"best": 0.5, "bad_epochs": 2})
  ckpt.save(2, _state(2))   # A task without a grain iterator: no "data".
  ckpt.wait()
  ckpt.close()
  assert _names(paths.join(workdir, "checkpoints")) == ["1", "2"]

  again = Checkpointer(workdir, every=1, keep=2)
  assert again.all_steps() == [1, 2]
  it2 = _iterator()
  _equal(again.restore(_state(0), it2, step=1), _state(1))
  assert next(it2) == 1   # The stream goes on where it was saved.
  _equal(again.restore(_state(0)), _state(2))   # The newest.
  assert again.restore_loop(1) == {"best": 0.5, "bad_epochs": 2}
  assert again.restore_loop(2) is None
  assert again.saved_shapes(2)["params/w"] == ((4, 2), "float32")
  again.close()


def test_resume_sets_an_unreadable_checkpoint_aside(remote):
  workdir = remote()
  ckpt = Checkpointer(workdir, every=1, keep=5)
  it = _iterator()
  for step in (1, 2):
    next(it)
    ckpt.save(step, _state(step), it)
  ckpt.wait()
  resume.save_config(workdir, default_config())
  assert resume.load_config(workdir) == json.loads(
      default_config().to_json_best_effort())
  (epath.Path(workdir) / "checkpoints" / "2" / "state" / "_METADATA").unlink()

  lines = []
  fresh = Checkpointer(workdir, every=1, keep=5)
  it2 = _iterator()
  state = resume.restore_newest_good(fresh, _state(0), it2, default_config(),
                                     workdir, lines.append)
  assert int(state["step"]) == 1 and next(it2) == 1
  assert lines[0].startswith("WARNING: checkpoint 2 is unreadable")
  assert lines[-1] == "resumed from checkpoint at step 1"
  assert _names(paths.join(workdir, "corrupt_checkpoints")) == ["2"]
  assert fresh.all_steps() == [1]


def test_steps_below_the_checkpoint_name_the_total_key(remote):
  workdir = remote()
  ckpt = Checkpointer(workdir, every=1, keep=5)
  ckpt.save(4, _state(4))
  ckpt.wait()
  with pytest.raises(MmjaxError) as e:
    resume.restore_newest_good(ckpt, _state(0), None, default_config(), workdir,
                               print, total=3, total_key="train.epochs")
  assert str(e.value) == (
      f"config.train.epochs=3 is below step 4 of the checkpoint in "
      f"{workdir}/checkpoints: set train.epochs >= 4, or use another --workdir")


def test_best_checkpoint_keeps_the_best_score(remote):
  workdir = remote()
  best = BestCheckpoint(workdir)
  for step, score in ((1, 0.1), (2, 0.3), (3, 0.2)):
    best.save(step, _state(step), score)
  best.wait()
  assert best.step() == 2
  best.close()
  again = BestCheckpoint(workdir)
  assert again.step() == 2
  _equal(again.restore(_state(0)), _state(2))
  again.close()


def test_metrics_are_rewritten_truncated_and_read_back(remote, monkeypatch):
  monkeypatch.setattr(reporting, "TB_SYNC_SECONDS", 0.0)   # Copy at each write.
  workdir = remote()
  writer = reporting.MetricsWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 1.0 / step})
  assert reporting.read_metrics(writer.path) == [
      {"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]   # Written, not buffered.
  events = epath.Path(workdir) / "tensorboard"
  assert [p.name.startswith("events.out.tfevents") for p in events.iterdir()] == [True]
  assert b"loss" in next(events.iterdir()).read_bytes()   # Before the close.
  writer.close()

  reporting.truncate_after(writer.path, 2)   # A resume from step 2.
  resumed = reporting.MetricsWriter(workdir)
  resumed.write(3, {"loss": 0.25})
  resumed.close()
  assert reporting.read_metrics(writer.path) == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]


def test_example_ids_are_appended_after_a_truncation(remote):
  workdir = remote()
  batch = {"user_id": np.array([1, 2]), "item_id": np.array([3, 4])}
  log = reporting.ExampleIdLog(workdir, 0)
  for step in (1, 2):
    log.write(step, batch)
  reporting.ExampleIdLog(workdir, 1).write(2, {k: v + 1 for k, v in batch.items()})
  assert reporting.read_metrics(log.path) == [
      {"step": 1, "user_id": [1, 2], "item_id": [3, 4]},
      {"step": 2, "user_id": [2, 3], "item_id": [4, 5]}]


def test_summary_is_written_whole_or_not_at_all(remote):
  workdir = remote()
  writer = reporting.MetricsWriter(workdir)
  writer.write(1, {"loss": 2.0})
  writer.close()
  write_outputs(workdir, {"old": 1}, writer.path, str, lambda *_: None)
  summary = epath.Path(workdir) / "summary.json"
  assert json.loads(summary.read_text()) == {"old": 1}
  assert (epath.Path(workdir) / "curves.png").read_bytes().startswith(b"\x89PNG")
  with pytest.raises(TypeError):   # Not JSON: fails halfway through the dump.
    write_outputs(workdir, {"a": 1, "b": object()}, writer.path, str, print)
  assert json.loads(summary.read_text()) == {"old": 1}
  assert _names(workdir) == ["curves.png", "metrics.jsonl", "summary.json",
                             "tensorboard"]


@pytest.fixture()
def quick_lock(monkeypatch):
  monkeypatch.setattr(workdir_lock, "SETTLE_SECONDS", 0.05)
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.1)


def _heartbeat(workdir) -> float:
  return json.loads((epath.Path(workdir) / ".lock").read_text())["heartbeat"]


def test_a_second_run_is_refused_while_the_first_beats(remote, quick_lock):
  with open_workdir(remote(), log=print) as workdir:
    assert workdir.startswith("gs://")
    with pytest.raises(MmjaxError) as e:
      WorkdirLock(workdir).acquire()
    assert str(e.value) == f"workdir {workdir} is in use by pid {os.getpid()} on {HOST}"
    with pytest.raises(MmjaxError, match="is in use by pid"):
      WorkdirLock(workdir).check_free()
    first = _heartbeat(workdir)
    time.sleep(0.5)
    assert _heartbeat(workdir) > first   # Renewed.
  assert not (epath.Path(workdir) / ".lock").exists()   # Released.
  with WorkdirLock(workdir):   # Free again.
    pass


def _foreign_lock(workdir, age: float) -> None:
  (epath.Path(workdir) / ".lock").write_text(json.dumps(
      {"pid": 4242, "host": "elsewhere", "id": "x", "heartbeat": time.time() - age}))


def test_a_lock_without_heartbeats_expires(remote, quick_lock):
  workdir = remote()
  _foreign_lock(workdir, age=60)
  with pytest.raises(MmjaxError, match="in use by pid 4242 on elsewhere"):
    WorkdirLock(workdir).acquire()
  _foreign_lock(workdir, age=workdir_lock.EXPIRE_SECONDS + 60)
  logged = []
  with WorkdirLock(workdir, log=logged.append):
    owner = json.loads((epath.Path(workdir) / ".lock").read_text())
    assert (owner["pid"], owner["host"]) == (os.getpid(), HOST)
  assert logged == [f"WARNING: taking over the stale lock of workdir {workdir} "
                    "(pid 4242 on elsewhere sent no heartbeat for 360s)"]


def test_of_runs_that_both_saw_no_lock_exactly_one_gets_it(remote, quick_lock,
                                                          monkeypatch):
  """Both check before either writes (an object store has no exclusive
  create): the read-back after the writes settle leaves one owner."""
  workdir = remote()
  both_checked = threading.Barrier(2)
  write = WorkdirLock._write_record

  waited = set()

  def write_after_both_checked(self):
    if id(self) not in waited:   # The first write; not the heartbeats.
      waited.add(id(self))
      both_checked.wait(timeout=30)
    write(self)

  monkeypatch.setattr(WorkdirLock, "_write_record", write_after_both_checked)
  locks = [WorkdirLock(workdir, log=lambda *_: None) for _ in range(2)]
  outcome = {}

  def take(lock):
    try:
      lock.acquire()
      outcome[id(lock)] = "held"
    except MmjaxError as e:
      outcome[id(lock)] = str(e)

  threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  assert sorted(outcome.values())[0] == "held"
  assert sorted(outcome.values())[1].startswith(f"workdir {workdir} is in use by pid")
  for lock in locks:
    lock.release()


@pytest.mark.slow
def test_train_resume_eval_and_load_on_gs(remote, config, tmp_path):
  """The whole run on a gs:// workdir: train with validation and the best
  state, resume to more steps, `mmjax eval`, `mmjax.load` and a query."""
  import subprocess
  import sys

  import mmjax
  from mmjax.run import train_and_evaluate
  url = remote()
  config.train.update(steps=4, checkpoint_every=2, eval_every=2, log_every=1)
  first = train_and_evaluate(config, url, log=lambda *_: None)
  assert first["best"]["step"] in (2, 4)
  config.train.steps = 6
  lines = []
  again = train_and_evaluate(config, url, log=lines.append)
  assert "resumed from checkpoint at step 4" in lines
  assert again["train"]["resumed_from"] == 4
  rows = reporting.read_metrics(f"{url}/metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in rows if "valid_recall@20" in r] == [2, 4, 6]
  assert {"checkpoints", "best", "summary.json", "tensorboard"} <= set(_names(url))
  model = mmjax.load(url)
  assert model.step == again["best"]["step"]
  assert len(model.recommend(user=0, k=3)) == 3
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "mmjax", "eval", "--workdir", url],
                       cwd=root, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "results (test split" in out.stdout
