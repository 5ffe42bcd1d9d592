"""The MMRec zoo (LightGCN, FREEDOM, BM3 in JAX): each model learns through
the one loop, the negatives are never train items, FREEDOM's pruned graph
keeps its share of edges, the bench writes its table, and a run cut at a
checkpoint resumes to the same per-epoch rows."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import mesh as mesh_lib
from mmjax.bench import mmrec_zoo as bench
from mmjax.configs.mmrec import get_config
from mmjax.data import mmrec
from mmjax.errors import MmjaxError
from mmjax.eval.feature_graph import Evaluator
from mmjax.models import graph as graph_lib
from mmjax.train import loop, reporting
from mmjax.train.zoo_task import Sampler, ZooTask

from mmrec_fixtures import make_dataset

TIMINGS = ("examples_per_sec", "data_wait_share")
SMALL = ["--set", "lightgcn.train_batch_size=32", "--set", "freedom.train_batch_size=32",
         "--set", "bm3.train_batch_size=32", "--set", "freedom.knn_k=3",
         "--set", "lightgcn.learning_rate=0.01", "--set", "freedom.learning_rate=0.01",
         "--set", "bm3.learning_rate=0.01"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("zoo_toy")
  names = make_dataset(str(root), num_users=30, num_items=60, per_user=10)
  data = mmrec.load(str(root), "toy.inter", names)
  return root, names, data


def args(root, names, workdir, *extra):
  return bench.parser().parse_args(
      ["--data", str(root), "--inter_file", "toy.inter", "--feature_files",
       ",".join(names), "--out", str(workdir / "zoo.json"), "--workdir",
       str(workdir), *SMALL, *extra])


@pytest.mark.parametrize("name", ["lightgcn", "freedom", "bm3"])
def test_each_model_learns_through_the_loop(toy, tmp_path, name):
  root, names, data = toy
  a = args(root, names, tmp_path, "--epochs", "12", "--patience", "0")
  hp = {**bench.PEER_HPARAMS[name], **bench.parse_overrides(a.set, [name])[name]}
  if name == "freedom":
    hp["reg_weight"] = 0.1   # The feature branch trains too.
  model = bench.build_model(name, data, hp)
  evaluator = Evaluator(data, mesh_lib.make_mesh(get_config().mesh))
  task = ZooTask(model, data, evaluator, epochs=12, seed=0, hparams=hp)
  before = task.evaluate(task.initial_state())[0]["recall@20"]
  out = loop.run(task, bench.loop_config(a), str(tmp_path / name), log=lambda *_: None)
  assert out.stats["epochs"] == 12
  rows = reporting.read_metrics(out.metrics_path)
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert out.early_stop.best[0] > before + 0.05, (before, out.early_stop.best)
  valid, test = task.test(out.state)
  assert valid["recall@20"] == pytest.approx(out.early_stop.best[0], abs=1e-6)


def test_negatives_are_never_train_items(toy):
  _, _, data = toy
  train = data.pairs[0]
  s = Sampler.from_pairs(train, data.num_users)
  users = jnp.asarray(np.repeat(np.arange(data.num_users), 50), jnp.int32)
  neg = np.asarray(s.negatives(jax.random.key(0), users))
  seen = {tuple(p) for p in train.tolist()}
  assert not any((int(u), int(i)) in seen for u, i in zip(np.asarray(users), neg))
  assert set(neg.tolist()) <= set(train[:, 1].tolist())
  # Every candidate drawn: the check is not vacuous.
  assert len(set(neg.tolist())) > 20
  hit = np.asarray(s.is_train(jnp.asarray(train[:, 0]), jnp.asarray(train[:, 1])))
  assert hit.all()


def test_freedom_pruning_keeps_its_share_symmetric_and_renormalized(toy):
  _, _, data = toy
  pairs = jnp.asarray(data.pairs[0])
  u_n, i_n = data.num_users, data.num_items
  w = graph_lib.bipartite_edge_weights(pairs, u_n, i_n)
  keep = int(len(pairs) * 0.3)
  e = graph_lib.pruned_user_item_graph(jax.random.key(3), pairs, w, keep, u_n, i_n)
  src, dst, wt = (np.asarray(a) for a in (e.src, e.dst, e.weight))
  assert len(src) == 2 * keep and np.all(np.diff(dst) >= 0)
  a = np.zeros((u_n + i_n,) * 2)
  a[dst, src] = wt
  np.testing.assert_allclose(a, a.T, atol=1e-7)
  deg = (a > 0).sum(1)
  r, c = np.nonzero(a)
  np.testing.assert_allclose(a[r, c], 1 / np.sqrt(deg[r] * deg[c]), rtol=1e-5)


def test_bench_writes_the_table_and_a_cut_run_resumes_exactly(toy, tmp_path):
  root, names, _ = toy
  ref = tmp_path / "ref"
  table = bench.run(args(root, names, ref, "--models", "freedom", "--epochs", "8",
                         "--patience", "0", "--checkpoint_every", "3",
                         "--keep_checkpoints", "5"),
                    log=lambda *_: None)
  on_disk = json.loads((ref / "zoo.json").read_text())
  (row,) = on_disk["rows"]
  for key in ("model", "recall@20", "ndcg@20", "seconds_per_epoch",
              "seconds_per_eval", "best_epoch"):
    assert key in row, key
  assert row["model"] == "freedom" and 1 <= row["best_epoch"] <= 8
  assert 0 < row["recall@20"] <= 1 and row["seconds_per_epoch"] > 0
  assert table["rows"][0]["recall@20"] == row["recall@20"]
  # What a kill after epoch 3's checkpoint leaves, then the same command.
  cut = tmp_path / "cut"
  shutil.copytree(ref, cut)
  for sub in ("checkpoints", "best"):
    for d in os.listdir(cut / "freedom" / sub):
      if d.isdigit() and int(d) > 3:
        shutil.rmtree(cut / "freedom" / sub / d)
  lines = []
  again = bench.run(args(root, names, cut, "--models", "freedom", "--epochs", "8",
                         "--patience", "0", "--checkpoint_every", "3",
                         "--keep_checkpoints", "5"),
                    log=lines.append)
  assert "resumed from checkpoint at epoch 3" in lines
  rows = lambda d: [{k: v for k, v in r.items() if k not in TIMINGS}
                    for r in reporting.read_metrics(str(d / "freedom" / "metrics.jsonl"))]
  assert rows(cut) == rows(ref) and len(rows(ref)) == 8
  assert again["rows"][0]["test"] == table["rows"][0]["test"]
  # Other hyper-parameters refuse the checkpoints.
  with pytest.raises(MmjaxError, match="refusing to resume"):
    bench.run(args(root, names, cut, "--models", "freedom", "--epochs", "8",
                   "--set", "freedom.dropout=0.5"), log=lambda *_: None)


def test_bad_flags_name_the_fix(toy, tmp_path):
  root, names, _ = toy
  with pytest.raises(MmjaxError, match="choose from"):
    bench.run(args(root, names, tmp_path, "--models", "lightgcn,mf"))
  with pytest.raises(MmjaxError, match="has no 'layers'"):
    bench.run(args(root, names, tmp_path, "--set", "bm3.layers=2"))
