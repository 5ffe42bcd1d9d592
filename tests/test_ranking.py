"""Target ranks: the NumPy block ranker (CPU) and the jitted top_k ranker agree
with the position of each target in one `lax.top_k` over all users, ties
included, and the metrics from ranks equal the metrics from the top k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.eval import metrics, ranking

K = 10


def _case(seed=0, users=37, items=60, dim=4, quantize=False,
          masked_targets=True):
  rng = np.random.default_rng(seed)
  u = rng.standard_normal((users, dim)).astype(np.float32)
  v = rng.standard_normal((items, dim)).astype(np.float32)
  if quantize:   # Few distinct values: many exact ties, also at the k-th.
    u, v = np.round(u), np.round(v)
  train = [rng.choice(items, rng.integers(0, 8), replace=False) for _ in range(users)]
  train[0] = np.arange(items - 3)          # Fewer allowed items than K.
  targets = []
  for t in train:
    rest = np.setdiff1d(np.arange(items), t)
    pick = list(rng.choice(rest, min(len(rest), rng.integers(0, 6)), replace=False))
    if masked_targets and len(t) and rng.random() < 0.3:      # A masked target never hits.
      pick.append(t[0])
    targets.append(pick)
  return u, v, train, metrics.pad_lists(targets, width=7)


def _reference(u, v, train, targets):
  exclude = np.zeros((len(u), len(v)), bool)
  for row, t in enumerate(train):
    exclude[row, t] = True
  scores = np.where(exclude, -np.inf, u @ v.T)
  top = np.asarray(jax.lax.top_k(jnp.asarray(scores), K)[1])
  want = np.full(targets.shape, K, np.int32)
  for row, col in zip(*np.nonzero(targets >= 0)):
    t = targets[row, col]
    at = np.nonzero(top[row] == t)[0]
    if len(at) and np.isfinite(scores[row, t]):
      want[row, col] = at[0]
  return exclude, top, want


def _csr(train):
  indptr = np.concatenate([[0], np.cumsum([len(t) for t in train])])
  return indptr, np.concatenate([np.sort(t) for t in train]).astype(np.int64)


@pytest.mark.parametrize("quantize", [False, True])
def test_host_and_device_rankers_equal_one_top_k(quantize):
  u, v, train, targets = _case(quantize=quantize)
  exclude, _, want = _reference(u, v, train, targets)
  assert (want < K).sum() > 10 and (want == K).sum() > 10
  if quantize:   # The case must exercise the exact recount of ties.
    scores = np.where(exclude, -np.inf, u @ v.T)
    kth = np.sort(scores, 1)[:, -K]
    assert any(scores[r, t] == kth[r] for r, t in zip(*np.nonzero(targets >= 0)))
  indptr, items = _csr(train)
  for block, threads in ((1, 1), (5, 2), (16, 3), (100, 2)):
    got = ranking.HostRanker(indptr, items, targets, K, block=block, threads=threads)(u, v)
    np.testing.assert_array_equal(got, want, err_msg=f"block {block}")
  for block in (37, 8, 5):   # One block; blocks that do not divide the users.
    got = ranking.DeviceRanker(jnp.asarray(exclude), targets, K, block=block)(u, v)
    np.testing.assert_array_equal(got, want, err_msg=f"device block {block}")


def test_metrics_from_ranks_equal_metrics_from_top_k():
  u, v, train, targets = _case(seed=3, users=50, items=80, masked_targets=False)
  _, top, ranks = _reference(u, v, train, targets)
  ks = (1, 5, 10)
  want = metrics.ranking_metrics(top, targets, ks)
  got = metrics.metrics_from_ranks(ranks, np.sum(targets >= 0, 1), K, ks)
  assert want["recall@10"] > 0
  assert got == pytest.approx(want, abs=1e-12)


def test_metrics_from_ranks_hand_case():
  # User 0: targets at ranks 0 and 2 (of 2 targets); user 1: one miss; user 2
  # has no target.
  ranks = np.array([[0, 2], [3, 3], [3, 3]])
  got = metrics.metrics_from_ranks(ranks, np.array([2, 1, 0]), 3, ks=(1, 3))
  assert got["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
  assert got["recall@3"] == pytest.approx((1 + 0) / 2)
  ndcg0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
  assert got["ndcg@3"] == pytest.approx(ndcg0 / 2)
  assert got["map@3"] == pytest.approx(((1 + 2 / 3) / 2) / 2)


def test_host_ranker_rejects_bad_shapes():
  with pytest.raises(ValueError, match="exclude_indptr"):
    ranking.HostRanker(np.zeros(3), np.zeros(0), np.zeros((3, 1)), 2)
  r = ranking.HostRanker(np.zeros(3, int), np.zeros(0), np.zeros((2, 1)), 5)
  with pytest.raises(ValueError, match="k=5"):
    r(np.zeros((2, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="3 user vectors"):
    r(np.zeros((3, 2)), np.zeros((9, 2)))
