"""Ranking metrics, top-K masking and paired retrieval recall."""
import math

import numpy as np
import pytest

from mmjax.eval import metrics
from mmjax.eval import retrieval

L2, L3 = math.log2(3.), math.log2(4.)  # Discounts of ranks 2 and 3.


def test_pad_lists():
  got = metrics.pad_lists([[3, 1], [], [4]])
  np.testing.assert_array_equal(got, [[3, 1], [-1, -1], [4, -1]])
  assert got.dtype == np.int32
  assert metrics.pad_lists([[], []]).shape == (2, 0)


def test_ranking_metrics_hand_case():
  # Hits per user: u0 [0 1 0] (|T|=2); u1 [1 1 1] (|T|=4);
  # u2 has no targets (skipped); u3 [0 0 1] (|T|=1).
  topk = np.array([[2, 0, 5], [1, 4, 3], [0, 1, 2], [5, 3, 4]])
  targets = metrics.pad_lists([[0, 3], [1, 3, 4, 5], [], [4]])
  got = metrics.ranking_metrics(topk, targets, ks=(1, 2, 3))
  want = {
      "recall@1": (0 + 1 / 4 + 0) / 3,
      "recall@2": (1 / 2 + 2 / 4 + 0) / 3,
      "recall@3": (1 / 2 + 3 / 4 + 1) / 3,
      "precision@1": (0 + 1 + 0) / 3,
      "precision@2": (1 / 2 + 2 / 2 + 0) / 3,
      "precision@3": (1 / 3 + 3 / 3 + 1 / 3) / 3,
      # IDCG@K uses min(|T|, K) ideal hits: u0 2, u1 K, u3 1.
      "ndcg@1": (0 + 1 + 0) / 3,
      "ndcg@2": ((1 / L2) / (1 + 1 / L2) + 1 + 0) / 3,
      "ndcg@3": ((1 / L2) / (1 + 1 / L2) + 1 + (1 / L3) / 1) / 3,
      # AP@K = sum of precision at hit ranks / min(|T|, K).
      "map@1": (0 + 1 / 1 + 0) / 3,
      "map@2": ((1 / 2) / 2 + (1 + 1) / 2 + 0) / 3,
      "map@3": ((1 / 2) / 2 + (1 + 1 + 1) / 3 + (1 / 3) / 1) / 3,
  }
  assert set(got) == set(want)
  for key, val in want.items():
    assert isinstance(got[key], float)
    assert got[key] == pytest.approx(val, abs=1e-9), key


def test_no_target_users_are_skipped():
  topk = np.array([[2, 0, 5], [1, 4, 3]])
  targets = metrics.pad_lists([[0, 3], []])
  one = metrics.ranking_metrics(topk[:1], targets[:1], ks=(3,))
  both = metrics.ranking_metrics(topk, targets, ks=(3,))
  assert one == both and one["recall@3"] == 0.5
  empty = metrics.ranking_metrics(topk, -np.ones((2, 1), np.int32), ks=(3,))
  assert all(v == 0. for v in empty.values())


def test_topk_from_scores_hand_case():
  scores = np.array([[0.9, 0.1, 0.8, 0.3, 0.5, 0.7],
                     [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], np.float32)
  exclude = metrics.pad_lists([[0], [5, 4]])
  got = metrics.topk_from_scores(scores, exclude, k_max=3)
  np.testing.assert_array_equal(got, [[2, 5, 4], [3, 2, 1]])
  assert got.dtype == np.int32


def _mmrec_reference(scores, train, test, ks):
  """Per-user loops over the MMRec / RecBole formulas (+ their top-k)."""
  sums = {f"{m}@{k}": 0. for m in ("recall", "ndcg", "precision", "map")
          for k in ks}
  users, topk = 0, []
  for u in range(scores.shape[0]):
    if not test[u]:
      continue
    users += 1
    s = scores[u].astype(np.float64).copy()
    s[list(train[u])] = -np.inf
    ranked = np.argsort(-s, kind="stable")
    topk.append(ranked[:max(ks)])
    hits = [int(i in test[u]) for i in ranked[:max(ks)]]
    for k in ks:
      n_hit = sum(hits[:k])
      ideal_n = min(len(test[u]), k)
      dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits[:k]))
      idcg = sum(1 / math.log2(r + 2) for r in range(ideal_n))
      ap = sum(sum(hits[:r + 1]) / (r + 1)
               for r in range(k) if hits[r]) / ideal_n
      sums[f"recall@{k}"] += n_hit / len(test[u])
      sums[f"precision@{k}"] += n_hit / k
      sums[f"ndcg@{k}"] += dcg / idcg
      sums[f"map@{k}"] += ap
  return {key: val / users for key, val in sums.items()}, topk


def test_against_mmrec_reference_random():
  rng = np.random.default_rng(0)
  n_users, n_items, d, ks = 50, 40, 8, (5, 10, 20)
  user_emb = rng.normal(size=(n_users, d)).astype(np.float32)
  item_emb = rng.normal(size=(n_items, d)).astype(np.float32)
  train, test = [], []
  for _ in range(n_users):
    items = rng.permutation(n_items)
    n_train, n_test = rng.integers(0, 6), rng.integers(0, 5)  # 0 targets too.
    train.append(set(items[:n_train].tolist()))
    test.append(set(items[n_train:n_train + n_test].tolist()))
  assert any(not t for t in test)
  exclude = metrics.pad_lists([sorted(t) for t in train])
  targets = metrics.pad_lists([sorted(t) for t in test])
  # batch_size 16 leaves a padded last batch of 2 users.
  topk = metrics.topk_from_embeddings(user_emb, item_emb, exclude, 20,
                                      batch_size=16)
  assert topk.shape == (n_users, 20) and topk.dtype == np.int32
  for u in range(n_users):
    assert not train[u] & set(topk[u].tolist())  # Masking really excludes.
  scores = user_emb @ item_emb.T
  want, want_topk = _mmrec_reference(scores, train, test, ks)
  has = [u for u in range(n_users) if test[u]]
  np.testing.assert_array_equal(topk[has], want_topk)
  got = metrics.ranking_metrics(topk, targets, ks)
  assert set(got) == set(want)
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-9), key
  # The scores path masks identically.
  np.testing.assert_array_equal(
      metrics.topk_from_scores(scores, exclude, 20, batch_size=16), topk)


def test_bad_k_raises():
  with pytest.raises(ValueError):
    metrics.topk_from_scores(np.zeros((2, 3)), np.zeros((2, 0)), 4)
  with pytest.raises(ValueError):
    metrics.ranking_metrics(np.zeros((2, 3), int), np.zeros((2, 1)), (5,))


def test_retrieval_hand_case():
  text = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
  image = np.array([[1, 0], [.5, 1], [2, 0], [3, 3]], np.float32)
  # Ranks count other items scoring >= the match (ties count against it).
  # t2i ranks: [2, 1, 1, 3] (text 3 ties every image at 0).
  # i2t ranks: [1, 1, 1, 3] (image 0 ties texts 0 and 2 at 1).
  got = retrieval.text_image_retrieval(text, image)
  want = {"t2i_r@1": 0., "t2i_r@5": 1., "t2i_r@10": 1.,
          "i2t_r@1": 0., "i2t_r@5": 1., "i2t_r@10": 1.}
  assert got == pytest.approx(want)
  # Padded batches (batch 3 for 4 queries) give the same result.
  r = retrieval.retrieval_recall(text, image, ks=(1, 2, 3), batch_size=3)
  assert r == pytest.approx({"r@1": 0., "r@2": 2 / 4, "r@3": 3 / 4})


def test_retrieval_perfect_and_collapsed():
  eye = np.eye(5, dtype=np.float32)
  assert retrieval.retrieval_recall(eye, eye, ks=(1,))["r@1"] == 1.0
  same = np.ones((5, 3), np.float32)   # Collapsed: every score ties.
  assert retrieval.retrieval_recall(same, same, ks=(1, 5))["r@1"] == 0.0


def test_hit_matrix_few_and_many_target_columns_agree():
  """The per-column comparison (<= 64 target columns) and the key
  membership test (more) give the same hits."""
  rng = np.random.default_rng(1)
  topk = np.stack([rng.permutation(300)[:20] for _ in range(40)])
  lists = [rng.choice(300, rng.integers(0, 8), replace=False) for _ in range(40)]
  narrow = metrics.pad_lists(lists)
  wide = metrics.pad_lists(lists, width=100)
  hits = metrics.hit_matrix(topk, narrow)
  np.testing.assert_array_equal(hits, metrics.hit_matrix(topk, wide))
  want = np.array([[i in set(l) for i in row] for row, l in zip(topk, lists)])
  np.testing.assert_array_equal(hits, want)
