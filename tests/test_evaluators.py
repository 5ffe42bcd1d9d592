"""The ranking engine both tasks share (`recommendation.Ranking` through
`evaluators.RecommendationEvaluator`) gives the metrics of the top-k path it
replaced, with either ranker; `from_config` picks the evaluators that apply
to the data; each evaluator's pairs fold back into summary.json's shape."""

import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.data.catalog import TEST, TRAIN, VALID, Catalog
from mmjax.data.mmrec import MMRecData
from mmjax.errors import MmjaxError
from mmjax.eval import evaluate, evaluators, feature_graph, ranking
from mmjax.eval.metrics import (pad_lists, ranking_metrics, topk_from_embeddings,
                                topk_from_scores)
from mmjax.eval.retrieval import text_image_retrieval

KEYS = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (10, 20, 50)}


def _interactions(rng, num_users, num_items):
  """(user, item, split) rows, each item at most once per user; user 1 has
  no held-out item, user 2 valid only, user 3 test only, user 4 so many
  train items that fewer than the top 50 are left to rank."""
  rows = []
  for u in range(num_users):
    n_train = 35 if u == 4 else int(rng.integers(1, 10))
    n_valid = 0 if u in (1, 3) else int(rng.integers(1, 4))
    n_test = 0 if u in (1, 2) else int(rng.integers(1, 4))
    items = rng.permutation(num_items)[:n_train + n_valid + n_test]
    splits = [TRAIN] * n_train + [VALID] * n_valid + [TEST] * n_test
    rows += [(u, i, s) for i, s in zip(items, splits)]
  rows = np.asarray(rows, np.int32)
  return rows[rng.permutation(len(rows))]   # Not grouped by user.


def _catalog(seed=0, num_users=40, num_items=70, oracle=True):
  rng = np.random.default_rng(seed)
  rows = _interactions(rng, num_users, num_items)
  return Catalog(
      item_text=[f"item {i}" for i in range(num_items)],
      item_images=np.zeros((num_items, 2, 2, 3), np.uint8),
      interactions=rows[:, :2].copy(), split=rows[:, 2].astype(np.int8),
      num_users=num_users, num_items=num_items,
      oracle_scores=(rng.standard_normal((num_users, num_items)).astype(np.float32)
                     if oracle else None))


def _vectors(seed, num_users, num_items, dim=8):
  # Random floats: no two scores tie, so the rankers' order is the only one.
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((num_users, dim)).astype(np.float32),
          rng.standard_normal((num_items, dim)).astype(np.float32))


def _topk_path(users, items, catalog):
  """The top-k path `evaluate.rank` took before the shared engine."""
  exclude = pad_lists(catalog.user_histories(TRAIN))
  top = np.asarray(topk_from_embeddings(users, items, exclude, 50))
  return {name: ranking_metrics(top, pad_lists(catalog.user_histories(split)))
          for name, split in (("valid", VALID), ("test", TEST))}


@pytest.mark.parametrize("how,kind", [("host", ranking.HostRanker),
                                      ("device", ranking.DeviceRanker)])
def test_engine_metrics_equal_the_top_k_path(how, kind):
  catalog = _catalog()
  users, items = _vectors(1, catalog.num_users, catalog.num_items)
  ev = evaluators.RecommendationEvaluator(catalog, how=how)
  assert isinstance(ev.engine.ranker, kind)
  np.testing.assert_array_equal(ev.users, [u for u in range(40) if u != 1])
  got = ev.metrics(users[ev.users], items, ("valid", "test"))
  want = _topk_path(users, items, catalog)
  for split in ("valid", "test"):
    assert set(got[split]) == KEYS
    assert 0 < want[split]["recall@20"] < 1 and 0 < want[split]["map@10"] < 1
    assert got[split] == pytest.approx(want[split], abs=1e-12), split


def test_rank_keeps_its_dict_and_builds_the_engine_once():
  catalog = _catalog(seed=2)
  users, items = _vectors(3, catalog.num_users, catalog.num_items)
  got = evaluate.rank(users, items, catalog)
  assert set(got) == {"valid", "test"}
  want = _topk_path(users, items, catalog)
  for split in ("valid", "test"):
    assert got[split] == pytest.approx(want[split], abs=1e-12), split
  first = evaluate.recommendation_evaluator(catalog)
  assert evaluate.rank(users, items, catalog) == got
  assert evaluate.recommendation_evaluator(catalog) is first
  other = _catalog(seed=2)   # Same content, another catalog: a new engine.
  assert evaluate.recommendation_evaluator(other) is not first


def test_run_yields_the_splits_asked_and_folds_into_the_summary_shape():
  catalog = _catalog(seed=4)
  users, items = _vectors(5, catalog.num_users, catalog.num_items)
  ev = evaluators.RecommendationEvaluator(catalog, how="host")
  valid = list(ev.run(users[ev.users], items))
  assert {name for name, _ in valid} == {f"valid/{k}" for k in KEYS}
  both = evaluators.nested(ev.run(users[ev.users], items, splits=("valid", "test")))
  assert both == evaluate.rank(users, items, catalog)
  with pytest.raises(MmjaxError, match="split 'train'"):
    list(ev.run(users[ev.users], items, splits=("train",)))
  with pytest.raises(ValueError, match="no group"):
    evaluators.nested([("recall@20", 0.1)])


def test_feature_graph_evaluator_equals_the_top_k_path_per_run():
  rng = np.random.default_rng(6)
  num_users, num_items = 30, 60
  rows = _interactions(rng, num_users, num_items)
  data = MMRecData(pairs={s: rows[rows[:, 2] == s, :2] for s in (TRAIN, VALID, TEST)},
                   features={}, num_users=num_users, num_items=num_items,
                   dropped_cold={})
  mesh = mesh_lib.make_mesh(config_lib.default_config().mesh)
  eval_users = data.eval_users()
  stacked = [_vectors(7 + r, num_users, num_items) for r in range(2)]
  users = np.stack([u[eval_users] for u, _ in stacked])
  items = np.stack([v for _, v in stacked])
  per_user = {s: data.user_items(s) for s in (TRAIN, VALID, TEST)}
  exclude = pad_lists([per_user[TRAIN][u] for u in eval_users])
  ks = feature_graph.KS
  for how in ("host", "device"):
    valid, test = feature_graph.Evaluator(data, mesh, how)(users, items)
    for r in range(2):
      top = topk_from_embeddings(users[r], items[r], exclude, max(ks))
      for split, got in ((VALID, valid[r]), (TEST, test[r])):
        want = ranking_metrics(top, pad_lists([per_user[split][u] for u in eval_users]), ks)
        assert want["recall@5"] > 0
        assert got == pytest.approx(want, abs=1e-12), (how, r, split)


def test_from_config_picks_the_evaluators_of_the_data():
  config = config_lib.default_config()
  catalog = _catalog(seed=8)
  evs = evaluators.from_config(config, catalog)
  assert set(evs) == {"recommendation", "retrieval", "reference"}
  assert isinstance(evs["recommendation"].engine.ranker, ranking.HostRanker)  # auto, CPU.
  config.train.eval_ranking = "device"
  evs = evaluators.from_config(config, catalog)
  assert isinstance(evs["recommendation"].engine.ranker, ranking.DeviceRanker)
  assert {n.split("/")[0] for n, _ in evs["reference"].run()} == {"popularity", "oracle"}
  no_oracle = evaluators.from_config(config, _catalog(seed=8, oracle=False))
  assert {n.split("/")[0] for n, _ in no_oracle["reference"].run()} == {"popularity"}
  rows = catalog.interactions
  data = MMRecData(pairs={s: rows[catalog.split == s] for s in (TRAIN, VALID, TEST)},
                   features={}, num_users=catalog.num_users,
                   num_items=catalog.num_items, dropped_cold={})
  config.train.eval_ranking = "device"
  evs = evaluators.from_config(config, data)
  assert set(evs) == {"recommendation"}
  assert isinstance(evs["recommendation"].engine.ranker, ranking.DeviceRanker)
  assert evs["recommendation"].engine.ks == (5, 10, 20, 50)


def test_reference_metrics_equal_the_old_baselines():
  catalog = _catalog(seed=9)
  got = evaluate.baselines(catalog)
  exclude = pad_lists(catalog.user_histories(TRAIN))
  test = pad_lists(catalog.user_histories(TEST))
  pop = np.broadcast_to(catalog.item_popularity().astype(np.float32),
                        (catalog.num_users, catalog.num_items))
  for name, scores in (("popularity", pop), ("oracle", catalog.oracle_scores)):
    want = ranking_metrics(topk_from_scores(scores, exclude, 50), test)
    assert want["recall@50"] > 0
    assert got[name] == pytest.approx(want, abs=1e-12), name


def test_retrieval_evaluator_yields_prefixed_recalls():
  z_text, z_image = _vectors(10, 50, 50)
  got = evaluators.nested(evaluators.RetrievalEvaluator().run(z_text, z_image + z_text))
  assert got == {"retrieval": text_image_retrieval(z_text, z_image + z_text)}
  assert got["retrieval"]["t2i_r@10"] > 0.2   # The images carry their texts.


def test_bad_ranking_choice_and_too_few_items_are_user_errors():
  with pytest.raises(MmjaxError, match="how='gpu'"):
    evaluators.RecommendationEvaluator(_catalog(), how="gpu")
  with pytest.raises(MmjaxError, match="the data has 30 items"):
    evaluators.RecommendationEvaluator(_catalog(num_items=30, oracle=False))
