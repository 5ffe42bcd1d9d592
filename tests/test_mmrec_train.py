"""The feature-graph trainer: the scan epoch, vmapped seeds and grids, its
evaluator, the launch contract, and a DBbook smoke run."""

import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.errors import MmjaxError
from mmjax.eval import feature_graph as fg_eval
from mmjax.eval import ranking
from mmjax.eval.metrics import pad_lists
from mmjax.run import train_and_evaluate
from mmjax.train import feature_graph_step as fs
from mmjax.train import feature_graph_trainer as ft
from mmjax.train import reporting

from mmrec_fixtures import make_dataset

ROOT = os.path.join(os.path.dirname(__file__), "..")
DBBOOK = os.path.join(ROOT, "..", "shared", "data", "dbbook")


def tiny_config(data_dir, feature_files):
  c = runpy.run_path(os.path.join(ROOT, "configs", "mmrec.py"))["get_config"]()
  c.data.dir = str(data_dir)
  c.data.inter_file = "toy.inter"
  c.data.feature_files = ",".join(feature_files)
  c.model.dim = 8
  c.train.batch_size = 64
  c.train.lr = 0.05
  c.feature_graph.update(negatives=8, knn_k=3, epochs=4)
  c.grid.axes, c.seeds = "", ()   # One program, one run.
  return c


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy_mmrec")
  return root, make_dataset(str(root))


@pytest.fixture(scope="module")
def setup(toy):
  """Data, constants and the compiled programs, shared by the module."""
  cfg = tiny_config(*toy)
  data = ft.load_data(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  consts = ft.build_constants(data, cfg.feature_graph, mesh)
  shape = fs.Shape(num_users=data.num_users, num_items=data.num_items,
                   num_train=len(data.pairs[TRAIN]), batch_size=cfg.train.batch_size,
                   negatives=cfg.feature_graph.negatives,
                   layers=cfg.feature_graph.layers,
                   item_layers=cfg.feature_graph.item_layers)
  programs = fs.Programs(cfg.feature_graph, cfg.model.dim, shape,
                         [f.shape[1] for f in data.features.values()], mesh)
  return cfg, consts, shape, programs


def _train(setup, seeds, lrs, epochs):
  cfg, consts, _, programs = setup
  runs = [dict(fs.hparams(cfg), lr=lr) for lr in lrs for _ in seeds]
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds * len(lrs)))
  states, hps, losses = programs.init(keys), fs.stack_hparams(runs), []
  for _ in range(epochs):
    states, metrics = programs.epoch(consts, states, hps)
    losses.append(np.asarray(metrics["loss"]))
  return states, np.stack(losses)


def test_epoch_order_visits_every_pair_once(setup):
  _, _, shape, _ = setup
  order = np.asarray(fs.epoch_order(jax.random.key(3), shape))
  assert order.shape == (shape.num_batches, shape.batch_size)
  real = np.sort(order[order < shape.num_train])
  np.testing.assert_array_equal(real, np.arange(shape.num_train))


def test_one_batch_epoch_is_the_padded_range():
  shape = fs.Shape(num_users=3, num_items=5, num_train=10, batch_size=16,
                   negatives=2, layers=1, item_layers=0)
  order = np.asarray(fs.epoch_order(jax.random.key(0), shape))
  np.testing.assert_array_equal(order, np.arange(16)[None])


def test_scan_epoch_learns_and_compiles_once(setup):
  _, losses = _train(setup, [0], [0.05], epochs=4)
  assert np.all(np.isfinite(losses))
  assert losses[-1, 0] < losses[0, 0]
  assert setup[3].epoch._cache_size() == 1


def test_vmapped_seeds_match_separate_runs(setup):
  together, _ = _train(setup, [0, 1], [0.05], epochs=2)
  for r, seed in enumerate([0, 1]):
    alone, _ = _train(setup, [seed], [0.05], epochs=2)
    for a, b in zip(jax.tree.leaves(together["params"]), jax.tree.leaves(alone["params"])):
      np.testing.assert_allclose(np.asarray(a)[r], np.asarray(b)[0], atol=2e-5)
  first = jax.tree.leaves(together["params"])[0]
  assert not np.allclose(first[0], first[1])   # The seeds differ.


def test_grid_values_are_per_run_hyper_parameters(setup):
  init = setup[3].init(jax.vmap(jax.random.key)(jnp.asarray([0, 0])))
  trained, _ = _train(setup, [0], [0.0, 0.05], epochs=1)
  for a, b in zip(jax.tree.leaves(init["params"]), jax.tree.leaves(trained["params"])):
    np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])  # lr 0.
  moved = [not np.allclose(np.asarray(a)[1], np.asarray(b)[1])
           for a, b in zip(jax.tree.leaves(init["params"]), jax.tree.leaves(trained["params"]))]
  assert all(moved)


def test_rank_runs_equals_one_top_k_over_all_users(toy, setup):
  """Both rankers, per run, give each target's place in one top_k over the
  masked scores of all evaluated users."""
  cfg, consts, shape, programs = setup
  data = ft.load_data(cfg)
  states, _ = _train(setup, [0, 1], [0.05], epochs=1)
  hps = fs.stack_hparams([fs.hparams(cfg)] * 2)
  users, items = programs.embed(consts, states["params"], hps)
  eval_users = data.eval_users()
  per_split = {s: data.user_items(s) for s in (TRAIN, VALID, TEST)}
  targets = np.concatenate(
      [pad_lists([per_split[s][u] for u in eval_users]) for s in (VALID, TEST)], 1)
  exclude = np.zeros((len(eval_users), data.num_items), bool)
  for row, u in enumerate(eval_users):
    exclude[row, per_split[TRAIN][u]] = True
  mesh = mesh_lib.make_mesh(cfg.mesh)
  host = fg_eval.make_ranker(data, targets, mesh)
  assert isinstance(host, ranking.HostRanker)   # "auto" on CPU.
  assert isinstance(fg_eval.make_ranker(data, targets, mesh, "device"),
                    ranking.DeviceRanker)
  host.block = 7   # Blocks that do not divide the users.
  device = ranking.DeviceRanker(jnp.asarray(exclude), targets, host.k, block=9)
  for ranker in (host, device):
    got = fg_eval.rank_runs(ranker, users, items)
    assert got.shape == (2,) + targets.shape
    for r in range(2):
      scores = jnp.where(exclude, -jnp.inf, users[r] @ items[r].T)
      top = np.asarray(jax.lax.top_k(scores, host.k)[1])
      want = [[list(top[i]).index(t) if t in top[i] else host.k for t in row]
              for i, row in enumerate(targets)]
      np.testing.assert_array_equal(got[r], want)
    assert (got < host.k).any()


def test_bad_grid_and_missing_inter_file_are_user_errors(toy, tmp_path):
  cfg = tiny_config(*toy)
  cfg.grid.axes = "feature_graph.layers=1,x"
  with pytest.raises(MmjaxError, match="feature_graph.layers='x' is not a int"):
    config_lib.validate(cfg)
  cfg = tiny_config(*toy)
  cfg.data.inter_file = ""
  with pytest.raises(MmjaxError, match="config.data.inter_file is required"):
    train_and_evaluate(cfg, str(tmp_path))


def test_launch_writes_the_summary_contract(toy, tmp_path):
  root, names = toy
  workdir = tmp_path / "run"
  cmd = [sys.executable, "launch.py", "--config", "configs/mmrec.py",
         f"--workdir={workdir}", f"--config.data.dir={root}",
         "--config.data.inter_file=toy.inter",
         f"--config.data.feature_files={','.join(names)}",
         "--config.seeds=(0,1)", "--config.model.dim=8",
         "--config.train.batch_size=64", "--config.feature_graph.negatives=8",
         "--config.feature_graph.knn_k=3", "--config.feature_graph.epochs=3"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  s = json.load(open(workdir / "summary.json"))
  for split in ("test", "valid", "test_std"):
    for k in ("recall@20", "ndcg@20", "precision@5", "map@50"):
      assert 0.0 <= s[split][k] <= 1.0
  assert len(s["seeds"]) == 2
  np.testing.assert_allclose(s["test"]["recall@20"],
                             np.mean([m["recall@20"] for m in s["seeds"]]))
  assert 1 <= s["best_epoch"] <= 3
  assert s["seconds_per_epoch"] > 0 and s["seconds_per_eval"] > 0
  rows = reporting.read_metrics(workdir / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert "valid_recall@20" in rows[0] and os.listdir(workdir / "tensorboard")
  assert "results (test at the best valid epoch" in out.stdout
  # configs/mmrec.py's own search ran, and its chosen point is the result.
  assert len(s["grid"]["results"]) == 3 and s["grid"]["programs"] == 1
  assert s["config"]["model"]["rec"]["temperature"] == (
      s["grid"]["best"]["model.rec.temperature"])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DBBOOK), reason="../shared/data/dbbook is absent")
def test_dbbook_smoke(tmp_path):
  """The real split loads as documented and one epoch + evaluation runs."""
  c = runpy.run_path(os.path.join(ROOT, "configs", "dbbook.py"))["get_config"]()
  c.data.dir = DBBOOK
  c.data.feature_files = ""            # IDs only: no encoder run needed.
  c.seeds = ()                         # One run, one epoch: a smoke test.
  c.grid.axes = ""
  c.model.dim = 16
  c.train.batch_size = 32768
  c.feature_graph.update(epochs=1, negatives=64, layers=1)
  s = train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  assert s["data"]["num_users"] == 6179 and s["data"]["num_items"] == 4191
  assert (s["data"]["num_train"], s["data"]["num_valid"], s["data"]["num_test"]) == (
      94963, 9478, 17338)
  assert 0.0 < s["test"]["recall@20"] < 1.0
