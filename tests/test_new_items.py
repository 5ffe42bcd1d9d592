"""add_items: unseen items scored from their text and image alone."""

import types

import numpy as np
import pytest

import mmjax
from mmjax.api import FeatureGraphModel
from mmjax.errors import MmjaxError

COPIED = (3, 17, 40)   # Catalog items whose text and image the new ones copy.
NEW = ["new-a", "new-b", "new-c"]


@pytest.fixture(scope="module")
def model(trained_workdir):
  return mmjax.load(trained_workdir)


@pytest.fixture(scope="module")
def grown(model):
  cat = model.catalog
  return model.add_items(texts=[cat.item_text[i] for i in COPIED],
                         images=cat.item_images[list(COPIED)], ids=NEW)


def test_a_copied_item_gets_the_catalog_items_content(model, grown):
  n = model.num_items
  assert grown.num_items == n + 3 and model.num_items == n   # The base stays.
  new, old = grown.item_embeddings, model.item_embeddings
  for k in ("z_text", "z_image", "content"):
    np.testing.assert_allclose(new[k][n:], old[k][list(COPIED)], atol=1e-5)
    np.testing.assert_array_equal(new[k][:n], old[k])
  # No ID contribution: the catalog item's vector with its ID row zeroed.
  alone = model.without_item_ids().item_embeddings["item"]
  np.testing.assert_allclose(new["item"][n:], alone[list(COPIED)], atol=1e-5)
  assert not np.allclose(new["item"][n:], old["item"][list(COPIED)], atol=1e-3)
  table = grown.item_id_table
  assert table.shape == (n + 3, 16) and not table[n:].any()


def test_new_rows_score_with_the_catalog_mean_offsets(model, grown):
  n = model.num_items
  (u, v), (u0, v0) = grown.scoring_vectors, model.scoring_vectors
  np.testing.assert_array_equal(u, u0)
  np.testing.assert_array_equal(v[:n], v0)
  dim = grown.item_embeddings["item"].shape[1]
  assert v.shape[1] > dim   # The tiny model has an item bias.
  np.testing.assert_allclose(v[n:, :dim], grown.item_embeddings["item"][n:], atol=1e-6)
  np.testing.assert_allclose(v[n:, dim:], np.broadcast_to(v0[:, dim:].mean(0),
                                                          (3, v.shape[1] - dim)), atol=1e-6)


def test_offset_quantile_places_the_new_offsets_among_the_catalogs(model, grown):
  n, dim = model.num_items, grown.item_embeddings["item"].shape[1]
  v0 = model.scoring_vectors[1]
  low = model.add_items(texts=grown.item_text[n:], images=grown.catalog.item_images[n:],
                        ids=NEW, offset_quantile=0.0)
  v = low.scoring_vectors[1]
  np.testing.assert_allclose(v[n:, dim:], np.broadcast_to(v0[:, dim:].min(0), (3, v.shape[1] - dim)))
  np.testing.assert_array_equal(v[n:, :dim], grown.scoring_vectors[1][n:, :dim])
  more = low.add_items(texts=["a hat"], images=grown.catalog.item_images[:1], ids="d")
  np.testing.assert_allclose(more.scoring_vectors[1][-1, dim:], v0[:, dim:].min(0))
  for bad in (1.5, -0.1, "median", True):
    with pytest.raises(MmjaxError, match=f"offset_quantile={bad!r} must be a number in"):
      model.add_items(texts=["a"], images=grown.catalog.item_images[:1], ids="x",
                      offset_quantile=bad)


def test_recommend_similar_and_search_return_the_new_ids(model, grown):
  user = grown.user_map.raw(0)
  unseen = grown.num_items - len(np.unique(grown.seen(user)))
  ranked = grown.recommend(user=user, k=unseen)   # Every unseen item.
  assert set(NEW) <= {r.id for r in ranked}
  u, v = grown.scoring_vectors
  scores = [r.score for r in ranked]
  assert scores == sorted(scores, reverse=True)
  for r in ranked:
    assert r.score == pytest.approx(float(v[r.item] @ u[0]), abs=1e-5)
    assert r.text == grown.item_text[r.item]
  assert grown.item_map.index("new-b") == model.num_items + 1
  assert grown.recommend(users=[user], k=5) == [grown.recommend(user=user, k=5)]
  # On a model scoring content alone a copy is its original's twin.
  twin = model.without_item_ids().add_items(
      texts=[model.item_text[17]], images=model.catalog.item_images[17:18], ids="copy")
  assert twin.similar("copy", k=1)[0].item == 17
  assert twin.similar(17, k=1)[0].id == "copy"
  found = {r.id: r.score for r in grown.search(model.item_text[40], k=grown.num_items)}
  assert found["new-c"] == pytest.approx(found[40], abs=1e-5)


def test_added_again_and_derived_snapshots_keep_the_new_items(model, grown):
  more = grown.add_items(texts=["a plain hat"], images=model.catalog.item_images[:1],
                         ids=["new-d"])
  assert more.new_item_ids == NEW + ["new-d"] and more.num_items == model.num_items + 4
  np.testing.assert_allclose(more.item_embeddings["content"][:-1],
                             grown.item_embeddings["content"], atol=1e-6)
  half = grown.with_item_id_scale(0.5)
  assert half.new_item_ids == NEW
  np.testing.assert_allclose(half.item_embeddings["item"][-3:],
                             grown.item_embeddings["item"][-3:], atol=1e-6)
  assert grown.at_init().step == 0 and grown.at_init().num_items == grown.num_items


def test_bad_inputs_are_one_line_errors(model, grown):
  img = model.catalog.item_images[:2]
  cases = [
      (dict(texts=["a", "b"], images=img, ids=[5, "x"]), r"item id 5 is already in the catalog \(index 5\)"),
      (dict(texts=["a", "b"], images=img, ids=["x", "5"]), r"item id '5' is already in the catalog"),
      (dict(texts=["a", "b"], images=img, ids=["x", "x"]), "item id 'x' is given twice"),
      (dict(texts=["a"], images=img, ids=["x", "y"]), "got 1 texts, 2 images and 2 ids"),
      (dict(texts=["a", "b"], images=None, ids=["x", "y"]), "add_items needs images="),
      (dict(texts=[], images=img[:0], ids=[]), "at least one item"),
      (dict(texts=["a", 3], images=img, ids=["x", "y"]), "texts must be str, got 3"),
  ]
  for kwargs, message in cases:
    with pytest.raises(MmjaxError, match=message):
      model.add_items(**kwargs)
  with pytest.raises(MmjaxError, match="item id 'new-a' is given twice"):
    grown.add_items(texts=["a"], images=img[:1], ids=["new-a"])
  with pytest.raises(MmjaxError, match="item id 0 is already"):
    grown.add_items(texts=["a"], images=img[:1], ids=[0])


def test_a_feature_graph_model_refuses_with_the_reason():
  serving = types.SimpleNamespace(
      data=types.SimpleNamespace(user_ids=None, item_ids=None), config=None,
      step=1, run=0, seed=0, users=np.zeros((3, 4)), items=np.zeros((5, 4)))
  graph = FeatureGraphModel(workdir="runs/graph", summary={}, serving=serving)
  with pytest.raises(MmjaxError, match="runs/graph is a feature-graph run: its item "
                     "vectors come from the interaction graph"):
    graph.add_items(texts=["a"], images=np.zeros((1, 16, 16, 3), np.uint8), ids=["x"])


def test_the_cold_item_benchmark_takes_the_items_out_of_the_catalog(data_dir):
  """bench.cold_items.hold_out: the held-out items leave the catalog (the
  rest keep their ids) and every interaction with them becomes a target."""
  from mmjax.bench.cold_items import hold_out
  from mmjax.data import store
  catalog = store.load_catalog(data_dir)
  cold = np.arange(0, catalog.num_items, 5)
  warm, targets = hold_out(catalog, cold)
  assert warm.num_items == catalog.num_items - len(cold)
  assert not set(warm.item_map.to_list()) & set(cold.tolist())
  kept = warm.item_map.indices([3, 4, 6])
  assert [warm.item_text[i] for i in kept] == [catalog.item_text[i] for i in (3, 4, 6)]
  np.testing.assert_array_equal(warm.oracle_scores[:, kept], catalog.oracle_scores[:, [3, 4, 6]])
  assert len(warm.interactions) + sum(map(len, targets)) <= len(catalog.interactions)
  for u in (0, 7):
    items = catalog.interactions[catalog.interactions[:, 0] == u, 1]
    assert targets[u] == sorted(set(items[np.isin(items, cold)].tolist()))
    mine = warm.interactions[warm.interactions[:, 0] == u, 1]
    assert warm.item_map.raws(mine) == [int(i) for i in items if i % 5]
    assert np.array_equal(warm.split[warm.interactions[:, 0] == u],
                          catalog.split[catalog.interactions[:, 0] == u][items % 5 != 0])
