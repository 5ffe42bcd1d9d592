"""The feature-graph task through the one loop: an interrupted run resumes
exactly (vmapped seeds), early stopping and the best state survive the
resume, a rerun adds no rows, a changed config is refused, SIGTERM saves
and exits 0, `--dry_run` trains nothing, and `mmjax eval` re-evaluates."""

import os
import runpy
import shutil
import signal
import subprocess
import sys

import pytest

from mmjax.errors import MmjaxError
from mmjax.run import train_and_evaluate
from mmjax.train import reporting

from mmrec_fixtures import make_dataset

ROOT = os.path.join(os.path.dirname(__file__), "..")
TIMINGS = ("examples_per_sec", "data_wait_share")


def config(data_dir, names, **train):
  c = runpy.run_path(os.path.join(ROOT, "configs", "mmrec.py"))["get_config"]()
  c.data.dir = str(data_dir)
  c.data.inter_file = "toy.inter"
  c.data.feature_files = ",".join(names)
  c.seeds = (0, 1)
  c.grid.axes = ""   # One program.
  c.model.dim = 8
  c.train.batch_size = 64
  c.train.lr = 0.002   # Slow enough to stop early after several epochs.
  c.train.update(checkpoint_every=3, keep_checkpoints=20, early_stop=dict(patience=6),
                 **train)
  c.feature_graph.update(negatives=8, knn_k=3, epochs=40)
  return c


def rows(workdir):
  return [{k: v for k, v in r.items() if k not in TIMINGS}
          for r in reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run that stops early."""
  root = tmp_path_factory.mktemp("toy")
  names = make_dataset(str(root))
  workdir = str(tmp_path_factory.mktemp("reference"))
  summary = train_and_evaluate(config(root, names), workdir, log=lambda *_: None)
  return root, names, workdir, summary


def test_the_reference_stops_early_and_keeps_each_seeds_best(reference):
  _, _, workdir, s = reference
  assert s["epochs_run"] < 40   # Early stop (patience 6).
  assert len(s["best_epochs"]) == 2 and all(1 <= e <= s["epochs_run"]
                                            for e in s["best_epochs"])
  assert s["served_run"]["run"] in (0, 1)
  assert os.listdir(os.path.join(workdir, "best"))
  r = rows(workdir)
  assert [x["step"] for x in r] == list(range(1, s["epochs_run"] + 1))
  assert all("valid_recall@20" in x for x in r)


def test_a_run_cut_at_a_checkpoint_resumes_exactly(reference, tmp_path):
  """What a SIGKILL after epoch 3's checkpoint leaves (later checkpoints,
  best states and rows gone or past it), then the same command again: the
  same per-epoch rows and the same test metrics."""
  root, names, ref_dir, want = reference
  assert want["epochs_run"] > 4
  cut = str(tmp_path / "cut")
  shutil.copytree(ref_dir, cut)
  for sub in ("checkpoints", "best"):
    for d in os.listdir(os.path.join(cut, sub)):
      if d.isdigit() and int(d) > 3:
        shutil.rmtree(os.path.join(cut, sub, d))
  os.remove(os.path.join(cut, "summary.json"))
  with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
    f.write('{"step": 99, "loss": 1.0')   # A line torn by the kill.
  lines = []
  got = train_and_evaluate(config(root, names), cut, log=lines.append)
  assert "resumed from checkpoint at epoch 3" in lines
  assert got["resumed_from"] == 3
  assert rows(cut) == rows(ref_dir)
  for key in ("test", "valid", "seeds", "best_epochs", "served_run", "epochs_run"):
    assert got[key] == want[key], key


def test_rerun_of_a_finished_run_trains_nothing_and_adds_no_rows(reference, tmp_path):
  root, names, ref_dir, want = reference
  again_dir = str(tmp_path / "again")
  shutil.copytree(ref_dir, again_dir)
  got = train_and_evaluate(config(root, names), again_dir, log=lambda *_: None)
  assert rows(again_dir) == rows(ref_dir)
  assert got["test"] == want["test"] and got["resumed_from"] == want["epochs_run"]


def test_a_changed_config_is_refused(reference, tmp_path):
  root, names, ref_dir, _ = reference
  other = str(tmp_path / "other")
  shutil.copytree(ref_dir, other)
  c = config(root, names)
  c.seeds = (0, 2)
  with pytest.raises(MmjaxError, match="changed since it was trained: seed"):
    train_and_evaluate(c, other, log=lambda *_: None)
  c = config(root, names)
  c.model.dim = 16
  with pytest.raises(MmjaxError, match="incompatible config.*model.dim"):
    train_and_evaluate(c, other, log=lambda *_: None)


def test_a_non_finite_epoch_stops_naming_it(reference, tmp_path):
  root, names, _, _ = reference
  c = config(root, names)
  c.model.rec.temperature = 1e-38   # Logits overflow: the loss is NaN at once.
  with pytest.raises(MmjaxError, match="non-finite loss at epoch 1: stopped; no "
                     "checkpoint was written yet"):
    train_and_evaluate(c, str(tmp_path / "nan"), log=lambda *_: None)


def test_dry_run_compiles_an_epoch_and_trains_nothing(reference, tmp_path):
  root, names, _, _ = reference
  workdir = tmp_path / "dry"
  got = train_and_evaluate(config(root, names), str(workdir), log=lambda *_: None,
                           dry_run=True)
  assert got["flops_per_epoch"] > 0 and got["per_device_bytes"]["total"] > 0
  assert os.listdir(workdir) == ["dry_run.json"]


def _launch(workdir, root, names, *extra):
  return subprocess.Popen(
      [sys.executable, "launch.py", "--config", "configs/mmrec.py",
       f"--workdir={workdir}", f"--config.data.dir={root}",
       "--config.data.inter_file=toy.inter",
       f"--config.data.feature_files={','.join(names)}", "--config.model.dim=8",
       "--config.train.batch_size=64", "--config.feature_graph.negatives=8",
       "--config.feature_graph.knn_k=3", "--config.grid.axes=", "--config.seeds=",
       *extra],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_at_an_epoch_boundary_and_exits_0(reference, tmp_path):
  root, names, _, _ = reference
  workdir = tmp_path / "term"
  proc = _launch(workdir, root, names, "--config.feature_graph.epochs=100000",
                 "--config.train.early_stop.patience=0",
                 "--config.train.checkpoint_every=100000")
  metrics = workdir / "metrics.jsonl"
  import time
  deadline = time.time() + 300
  while time.time() < deadline and not (
      metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "preempted (SIGTERM): saved checkpoint at epoch" in out + err
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert max(saved) >= 3
  logged = [r["step"] for r in reporting.read_metrics(str(metrics))]
  assert logged[-1] == max(saved)


def test_mmjax_eval_prints_the_training_table_again(reference):
  _, _, workdir, want = reference
  out = subprocess.run([sys.executable, "-m", "mmjax", "eval", "--workdir", workdir],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "results (test at the best valid epoch" in out.stdout
  assert f"recall@20: {want['test']['recall@20']:.4f}" in out.stdout
  valid = subprocess.run([sys.executable, "-m", "mmjax", "eval", "--workdir", workdir,
                          "--split", "valid"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
  assert f"recall@20: {want['valid']['recall@20']:.4f}" in valid.stdout
