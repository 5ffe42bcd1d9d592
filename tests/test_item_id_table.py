"""Post-training transforms of the item-ID table (postprocess/item_id_table.py)."""

import numpy as np
import pytest

from mmjax.postprocess import item_id_table
from mmjax.postprocess.item_id_table import IDENTITY, TableTransform, candidates, kmeans


def _blobs(seed=0, n=300, k=4, dim=8, spread=0.3):
  rng = np.random.default_rng(seed)
  truth = rng.integers(k, size=n)
  centers = rng.normal(size=(k, dim)) * 3
  return centers[truth] + spread * rng.normal(size=(n, dim)), truth


def _same_partition(a, b):
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_separated_clusters_deterministically():
  x, truth = _blobs()
  labels = kmeans(x, 4)
  assert _same_partition(labels, truth)
  assert np.array_equal(labels, kmeans(x, 4))
  assert len(np.unique(kmeans(x, 7))) == 7


def test_kmeans_rejects_impossible_counts():
  x, _ = _blobs(n=5)
  with pytest.raises(ValueError, match="k=6"):
    kmeans(x, 6)


def test_cluster_transform_moves_rows_toward_their_centroids():
  x, truth = _blobs(seed=1, k=3)
  # Scale rows by varying norms: clustering goes by direction, not length.
  x = x * np.random.default_rng(2).uniform(0.5, 2.0, size=(len(x), 1))
  labels = item_id_table.cluster_labels(x, 3)
  t = TableTransform(3, 0.75, 0.25)
  out = t.apply(x, labels)
  np.testing.assert_allclose(out, t.apply(x), rtol=1e-6)
  for k in range(3):
    rows = labels == k
    c = x[rows].mean(0)
    np.testing.assert_allclose(out[rows], 0.75 * c + 0.25 * (x[rows] - c),
                               rtol=1e-5, atol=1e-6)
  # a = b is a plain scale whatever the clusters.
  np.testing.assert_allclose(TableTransform(3, 0.5, 0.5).apply(x),
                             TableTransform.scaled(0.5).apply(x), rtol=1e-5, atol=1e-6)


def test_candidates_put_the_identity_first_and_keep_the_residual_below_the_centroid():
  got = candidates((0.5,), (4,))
  assert got[0] == IDENTITY
  assert [t.label for t in got] == ["1", "0.5", "k4:0.5/0", "k4:1/0", "k4:1/0.5"]
  assert [t.label for t in candidates((), ())] == ["1"]
  for t in got:
    assert TableTransform.from_dict(t.to_dict()) == t


def test_a_zero_scale_adds_no_duplicate_candidates():
  labels = [t.label for t in candidates((0.0, 0.5), (3,))]
  assert labels == ["1", "0", "0.5", "k3:0.5/0", "k3:1/0", "k3:1/0.5"]


def test_a_plain_scale_has_no_separate_residual():
  with pytest.raises(ValueError, match="residual"):
    TableTransform(0, 0.5, 0.25)


def test_describe_names_the_choice():
  report = dict(chosen=TableTransform(5, 0.75, 0.25).to_dict(),
                recall_at_20=dict(valid={"1": 0.25, "0.5": 0.27, "k5:0.75/0.25": 0.3}))
  line = item_id_table.describe(report)
  assert "5 k-means clusters, centroids x0.75, rest x0.25" in line
  assert "1: 0.2500" in line and "k5:0.75/0.25: 0.3000" in line
  report["chosen"] = IDENTITY.to_dict()
  assert "as trained" in item_id_table.describe(report)
