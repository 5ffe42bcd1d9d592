"""Our full-ranking metrics against an independent NumPy transcription of
MMRec's (enoche/MMRec utils/metrics.py and topk_evaluator.py)."""

import numpy as np

from mmjax.eval.metrics import pad_lists, ranking_metrics, topk_from_scores

KS = (5, 10, 20, 50)


def mmrec_reference(scores, train, test, ks):
  """MMRec: mask train items, top-max(K), pos_index/pos_len, per-K means."""
  scores = scores.astype(np.float64).copy()
  users = [u for u in range(len(test)) if len(test[u])]
  for u, items in enumerate(train):
    scores[u, items] = -1e10
  k_max = max(ks)
  top = np.argsort(-scores, axis=1)[:, :k_max][users]
  pos_index = np.array([[i in set(test[u]) for i in row] for u, row in zip(users, top)])
  pos_len = np.array([len(test[u]) for u in users])
  ranks = np.arange(1, k_max + 1)
  out = {}
  recall = (np.cumsum(pos_index, 1) / pos_len[:, None]).mean(0)
  precision = (np.cumsum(pos_index, 1) / ranks).mean(0)
  idcg_len = np.minimum(pos_len, k_max)
  idcg = np.tile(np.cumsum(1 / np.log2(ranks + 1)), (len(users), 1))
  for row, n in enumerate(idcg_len):
    idcg[row, n:] = idcg[row, n - 1]
  dcg = np.cumsum(np.where(pos_index, 1 / np.log2(ranks + 1), 0), 1)
  ndcg = (dcg / idcg).mean(0)
  pre = np.cumsum(pos_index, 1) / ranks
  sum_pre = np.cumsum(pre * pos_index, 1)
  ap = np.zeros(pos_index.shape)
  for row, n in enumerate(idcg_len):
    r = ranks.copy()
    r[n:] = r[n - 1]
    ap[row] = sum_pre[row] / r
  mean_ap = ap.mean(0)
  for k in ks:
    out.update({f"recall@{k}": recall[k - 1], f"precision@{k}": precision[k - 1],
                f"ndcg@{k}": ndcg[k - 1], f"map@{k}": mean_ap[k - 1]})
  return out


def test_metrics_match_mmrec_formulas_on_one_score_matrix():
  rng = np.random.default_rng(0)
  num_users, num_items = 40, 120
  scores = rng.normal(size=(num_users, num_items)).astype(np.float32)
  train, test = [], []
  for u in range(num_users):
    items = rng.permutation(num_items)
    # Test sizes from 0 (user not evaluated) to 70 (> K_max, capped IDCG/MAP).
    n_test = [0, 1, 3, 12, 70][u % 5]
    train.append(items[:10])
    # Some test items scored high, so every metric is away from 0.
    test.append(items[10:10 + n_test])
    scores[u, test[-1][: n_test // 2]] += 2.0
  topk = topk_from_scores(scores, pad_lists(train), max(KS))
  ours = ranking_metrics(topk, pad_lists(test), KS)
  ref = mmrec_reference(scores, train, test, KS)
  assert set(ours) == set(ref) and len(ours) == 16
  for k in ref:
    assert 0.0 < ref[k] < 1.0, k
    np.testing.assert_allclose(ours[k], ref[k], rtol=1e-9, err_msg=k)
