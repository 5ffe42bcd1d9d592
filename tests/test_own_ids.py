"""Users' own ids end to end: a raw folder of SKUs and user names -> a tiny
run -> export, recommend, similar and all-users top-K by those ids."""

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import mmjax
from mmjax.api import FeatureGraphModel
from mmjax.data import ids, store
from mmjax.errors import MmjaxError
from mmjax.queries import Queries
from mmjax.recommend import write_all_users

from test_export_recommend import _mmjax, _one_error
from test_raw_ingest import data_config

# One worker runs the whole module, so its module fixtures run once.
pytestmark = pytest.mark.xdist_group("test_own_ids")

NUM_ITEMS, NUM_USERS, PER_USER, K = 60, 8, 8, 3   # The metrics rank 50.
SKUS = [f"sku-{(0xea7b6656 + 7919 * i) & 0xffffffff:08x}" for i in range(NUM_ITEMS)]
# "42" reads as an int on a command line: it must find the string id "42".
USERS = [f"user{u}" for u in range(NUM_USERS - 1)] + ["42"]


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
  root = tmp_path_factory.mktemp("own_ids")
  rng = np.random.default_rng(0)
  os.makedirs(root / "images")
  for i in range(NUM_ITEMS):
    Image.new("RGB", (16, 16), tuple(int(v) for v in rng.integers(0, 256, 3))
              ).save(root / "images" / f"{i}.png")
  # Items listed in reverse: dense index order differs from the table's.
  _write_csv(root / "items.csv", ["item_id", "text", "image"],
             [(SKUS[i], f"thing {i % 5} colour {i % 3}", f"{i}.png")
              for i in reversed(range(NUM_ITEMS))])
  _write_csv(root / "interactions.csv", ["user_id", "item_id"],
             [(USERS[u], SKUS[i]) for u in range(NUM_USERS)
              for i in rng.choice(NUM_ITEMS, PER_USER, replace=False)])
  return root


@pytest.fixture(scope="module")
def run(shop, tmp_path_factory):
  """The one tiny run of this module, trained on the raw folder."""
  from mmjax.run import train_and_evaluate
  cfg = data_config(shop, tmp_path_factory.mktemp("cache"))
  cfg.train.update(steps=2, batch_size=8, log_every=1, checkpoint_every=2)
  cfg.loss.update(siglip=0.0, bpr=0.0, bce=0.0, mmd=0.0, coral=0.0)
  cfg.postprocess.update(item_id_scales=(), item_id_clusters=(),
                         user_refit_penalties=())
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(cfg, workdir, log=lambda *_: None)
  return workdir


@pytest.fixture(scope="module")
def model(run):
  return mmjax.load(run)


def test_ingest_keeps_the_tables_ids_in_dense_order(model):
  cat = model.catalog
  assert sorted(cat.item_ids) == sorted(SKUS) and sorted(cat.user_ids) == sorted(USERS)
  # Each dense item still has its own text and each interaction its own pair.
  with open(os.path.join(cat_root(model), "items.csv")) as f:
    text = {r["item_id"]: r["text"] for r in csv.DictReader(f)}
  assert [text[s] for s in cat.item_ids] == cat.item_text
  with open(os.path.join(cat_root(model), "interactions.csv")) as f:
    pairs = {(r["user_id"], r["item_id"]) for r in csv.DictReader(f)}
  assert {(cat.user_ids[u], cat.item_ids[i]) for u, i in cat.interactions} == pairs
  assert os.path.isfile(os.path.join(model.summary["data"]["dir"], "ids.json"))
  again = store.load_catalog(model.summary["data"]["dir"])
  assert again.item_ids == cat.item_ids and again.user_ids == cat.user_ids


def cat_root(model):
  return model.config.data.raw.root


def test_recommend_and_similar_by_own_ids(model):
  recs = model.recommend(user="user3", k=K)
  dense = model.catalog.user_ids.index("user3")
  assert len(recs) == K
  u, v = model.scoring_vectors
  seen = set(model.seen("user3").tolist())
  scores = v @ u[dense]
  expected = [i for i in np.argsort(-scores, kind="stable") if i not in seen][:K]
  assert [r.item for r in recs] == expected
  assert [r.id for r in recs] == [model.catalog.item_ids[i] for i in expected]
  assert model.recommend(user=42, k=K) == model.recommend(user="42", k=K)
  both = model.recommend(users=["user3", "42"], k=K)
  assert both == [recs, model.recommend("42", K)]
  sku = model.catalog.item_ids[5]
  near = model.similar(item=sku, k=K)
  assert sku not in [r.id for r in near] and all(r.id in SKUS for r in near)
  with pytest.raises(MmjaxError, match=r"unknown user 'user99': not one of the 8 "
                     r"user ids of this data \(e.g. '"):
    model.recommend(user="user99")
  with pytest.raises(MmjaxError, match="unknown item 5"):
    model.similar(item=5)   # A dense index is not an id here.


def test_export_writes_the_own_ids(model, run, tmp_path, monkeypatch, capsys):
  code, stdout, _ = _mmjax(monkeypatch, capsys, "export", "--workdir", run,
                           "--out", tmp_path)
  assert code == 0, stdout
  ids = json.load(open(tmp_path / "id_map.json"))
  assert ids["user_id"] == model.catalog.user_ids
  assert ids["item_id"] == model.catalog.item_ids
  items = pq.read_table(tmp_path / "items.parquet")
  users = pq.read_table(tmp_path / "users.parquet")
  assert items.column("item_id").to_pylist() == model.catalog.item_ids
  assert users.column("user_id").to_pylist() == model.catalog.user_ids
  row = model.catalog.item_ids.index(SKUS[0])   # Row r of items.npy is id r.
  np.testing.assert_allclose(np.load(tmp_path / "items.npy")[row],
                             model.item_embeddings["item"][row], atol=1e-6)


def _ranked(out):
  """The "rank  item ID  score S  text" lines of recommend's output."""
  rows = [l.split() for l in out.splitlines()]
  return [r for r in rows if len(r) > 4 and r[0].isdigit() and r[1] == "item"]


def test_cli_recommend_user_and_similar(model, run, monkeypatch, capsys):
  code, out, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", run,
                        "--user", "user3", "--k", K)
  assert code == 0
  rows = _ranked(out)
  recs = model.recommend("user3", K)
  assert [r[2] for r in rows] == [r.id for r in recs]
  assert recs[0].text in out
  sku = model.catalog.item_ids[0]
  code, out, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", run,
                        "--similar", sku, "--k", K)
  assert code == 0 and f"item {sku}: {model.catalog.item_text[0]}" in out
  rows = _ranked(out)
  assert [r[2] for r in rows] == [r.id for r in model.similar(sku, K)]


def test_all_users_to_parquet(model, run, tmp_path, monkeypatch, capsys):
  out = tmp_path / "topk.parquet"
  code, stdout, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", run,
                           "--all-users", "--k", K, "--out", out,
                           "--batch-users", 3)   # Three batches, one short.
  assert code == 0, stdout
  table = pq.read_table(out)
  assert table.column_names == ["user_id", "rank", "item_id", "score"]
  rows = table.to_pylist()
  assert len(rows) == NUM_USERS * K
  by_user = {}
  for r in rows:
    by_user.setdefault(r["user_id"], []).append(r)
  assert sorted(by_user) == sorted(USERS)
  for user, got in by_user.items():
    assert [r["rank"] for r in got] == list(range(1, K + 1))
    want = model.recommend(user, K)
    assert [r["item_id"] for r in got] == [w.id for w in want]
    np.testing.assert_allclose([r["score"] for r in got], [w.score for w in want],
                               rtol=1e-5)


def test_unknown_id_is_one_line_and_exit_2(run, monkeypatch, capsys):
  _one_error(*_mmjax(monkeypatch, capsys, "recommend", "--workdir", run,
                     "--user", "nobody")[::2], "unknown user 'nobody'")
  _one_error(*_mmjax(monkeypatch, capsys, "recommend", "--workdir", run,
                     "--similar", "sku-00000000")[::2], "unknown item 'sku-00000000'")



def test_id_map_lookups_and_errors():
  own = ids.IdMap("item", 3, ["sku-a", "7", "sku-b"])
  assert own.index("7") == own.index(7) == own.index(np.int64(7)) == 1
  assert own.raws([2, 0]) == ["sku-b", "sku-a"] and own.has_raw
  with pytest.raises(MmjaxError, match=r"unknown item 'sku-c': not one of the 3 "
                     r"item ids of this data \(e.g. 'sku-a', '7', 'sku-b'\)"):
    own.index("sku-c")
  with pytest.raises(MmjaxError, match="unknown item True"):
    own.index(True)
  assert own.column([1]) == ["7"] and own.column() == ["sku-a", "7", "sku-b"]
  mixed = ids.IdMap("item", 3, ["sku-a", 7, 8])   # One typed column: strings.
  assert mixed.raws([1]) == [7] and mixed.column([1, 0]) == ["7", "sku-a"]
  assert ids.IdMap("item", 2, [10, 11]).column() == [10, 11]
  # The ints 0..N-1 as ids (an MMRec items table's) are the dense ids.
  assert not ids.IdMap("item", 3, [0, 1, 2]).has_raw
  dense = ids.IdMap("user", 4)
  assert dense.index("3") == dense.index(3) == 3 and dense.to_list() == [0, 1, 2, 3]
  for bad in ("4", -1, "x", 1.0):
    with pytest.raises(MmjaxError, match=f"unknown user {bad!r}: user ids are 0..3"):
      dense.index(bad)


class _Fixed(Queries):
  """Two users, four items, fixed vectors: user 0 has seen three items."""
  num_users, num_items = 2, 4
  item_text = ["w", "x", "y", "z"]
  scoring_vectors = (np.asarray([[1.0, 0.0], [0.0, 1.0]], np.float32),
                     np.asarray([[4, 1], [3, 2], [2, 3], [1, 4]], np.float32))
  _interactions = np.asarray([[0, 0], [0, 3], [0, 1], [0, 0], [1, 2]])
  _id_maps = (ids.IdMap("user", 2, ["ann", "bob"]),
              ids.IdMap("item", 4, ["w1", "x1", "y1", "z1"]))


def test_a_user_with_fewer_unseen_items_than_k_gets_those(tmp_path):
  model = _Fixed()
  assert [r.id for r in model.recommend(users=["ann", "bob"], k=3)[0]] == ["y1"]
  assert [r.id for r in model.recommend("bob", k=3)] == ["z1", "x1", "w1"]
  with pytest.raises(MmjaxError, match=r"k=2 must be in \[1, 1\]"):
    model.recommend("ann", k=2)   # One user alone: k must fit.
  rows = write_all_users(model, 3, str(tmp_path / "t.parquet"), batch_users=1)
  table = pq.read_table(tmp_path / "t.parquet").to_pylist()
  assert rows == 4 and [(r["user_id"], r["rank"], r["item_id"]) for r in table] == [
      ("ann", 1, "y1"), ("bob", 1, "z1"), ("bob", 2, "x1"), ("bob", 3, "w1")]
  assert table[0]["score"] == pytest.approx(2.0)


# -- a feature-graph run: MMRec's user mapping, SKUs and titles from features --

FG_USERS, FG_ITEMS = 24, 60


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory):
  """A toy feature-graph run (no towers: cheap) whose users are named by
  MMRec's u_id_mapping.csv and whose items by the SKU table `mmjax features`
  read: its titles are the item texts."""
  from hf_fixtures import save_tiny_bert
  from mmjax import feature_extraction
  from mmjax.run import train_and_evaluate
  from mmrec_fixtures import make_dataset
  from test_mmrec_train import tiny_config
  root = tmp_path_factory.mktemp("graph")
  make_dataset(str(root), num_users=FG_USERS, num_items=FG_ITEMS)
  (root / "u_id_mapping.csv").write_text("user_id\tuserID\n" + "".join(
      f"A{u:04d}X\t{u}\n" for u in range(FG_USERS)))
  with open(root / "items.tsv", "w") as f:
    f.write("sku\ttitle\n" + "".join(f"sku-{i:04d}\tbook {i} words\n"
                                     for i in range(FG_ITEMS)))
  bert = save_tiny_bert(root / "bert", ["book", "words"] + [str(i) for i in range(10)])
  feats = root / "feats"
  feature_extraction.run(feature_extraction.parser().parse_args([
      "--items", str(root / "items.tsv"), "--id_column", "sku", "--text_column",
      "title", "--text_model", bert, "--max_length", "8", "--out", str(feats)]))
  cfg = tiny_config(root, ["text_feat.npy"])
  cfg.data.feature_dir = str(feats)
  cfg.feature_graph.epochs = 2
  workdir = str(root / "run")
  train_and_evaluate(cfg, workdir, log=lambda *_: None)
  return workdir


def test_a_feature_graph_run_recommends_by_its_own_ids(graph_run, tmp_path,
                                                      monkeypatch, capsys):
  model = mmjax.load(graph_run)
  assert isinstance(model, FeatureGraphModel)
  assert (model.num_users, model.num_items) == (FG_USERS, FG_ITEMS)
  u, v = model.scoring_vectors
  seen = set(model.seen("A0005X").tolist())
  assert seen == {int(i) for s in model.data.pairs.values()
                  for user, i in s if user == 5}
  expected = [i for i in np.argsort(-(v @ u[5]), kind="stable") if i not in seen][:4]
  recs = model.recommend(user="A0005X", k=4)
  assert [r.item for r in recs] == expected
  assert [(r.id, r.text) for r in recs] == [(f"sku-{i:04d}", f"book {i} words")
                                           for i in expected]
  assert model.recommend(users=["A0005X", "A0001X"], k=4) == [
      recs, model.recommend("A0001X", 4)]
  near = model.similar(item="sku-0007", k=3)
  assert "sku-0007" not in [r.id for r in near] and len(near) == 3
  with pytest.raises(MmjaxError, match="feature-graph run: it has no text"):
    model.search("book")
  with pytest.raises(MmjaxError, match="unknown user 5: not one of the 24 user ids"):
    model.recommend(user=5)   # Named by the mapping file, not the .inter int.

  code, out, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", graph_run,
                        "--user", "A0005X", "--k", 4)
  assert code == 0
  assert [r[2] for r in _ranked(out)] == [r.id for r in recs]
  assert all(f"book {i} words" in out for i in expected)
  code, _, _ = _mmjax(monkeypatch, capsys, "export", "--workdir", graph_run,
                      "--out", tmp_path / "export")
  assert code == 0
  items = pq.read_table(tmp_path / "export" / "items.parquet").to_pydict()
  assert items["item_id"] == [f"sku-{i:04d}" for i in range(FG_ITEMS)]
  np.testing.assert_allclose(np.load(tmp_path / "export" / "items.npy"), v, atol=1e-6)
  code, _, _ = _mmjax(monkeypatch, capsys, "recommend", "--workdir", graph_run,
                      "--all-users", "--k", 2, "--out", tmp_path / "top.parquet")
  assert code == 0
  top = pq.read_table(tmp_path / "top.parquet").to_pydict()
  assert top["user_id"][:2] == ["A0000X"] * 2 and len(top["rank"]) == 2 * FG_USERS
  code, out, _ = _mmjax(monkeypatch, capsys, "report", "--workdir", graph_run,
                        "--out", tmp_path / "report.html")
  assert code == 0, out
  page = (tmp_path / "report.html").read_text()
  assert "Training curves" in page and "best epoch" in page and "served" in page
