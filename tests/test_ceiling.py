"""mmjax.bench.ceiling: per-user log-linear fits on given item features."""

import json

import numpy as np

from mmjax.bench import ceiling


def test_fit_recovers_each_users_liked_attribute():
  """Users who pick only items with their liked value: the fit on the true
  one-hots ranks those items first; on shuffled features it cannot."""
  rng = np.random.default_rng(0)
  values = rng.integers(0, 4, 80)
  features = np.eye(4, dtype=np.float32)[values]
  liked = np.arange(20) % 4
  pairs = np.asarray([(u, i) for u in range(20)
                      for i in rng.choice(np.flatnonzero(values == liked[u]), 8, replace=False)])

  def precision_at_10(x):
    scores = ceiling.fit_preferences(x, pairs, 20, penalty=0.1)
    top = np.argsort(-scores, axis=1)[:, :10]
    return np.mean(values[top] == liked[:, None])

  assert precision_at_10(features) == 1.0
  assert precision_at_10(features[rng.permutation(80)]) < 0.6


def test_benchmark_on_a_finished_run(trained_workdir, tmp_path):
  out = tmp_path / "ceiling.json"
  ceiling.main(["--workdir", trained_workdir, "--out", str(out)])
  result = json.loads(out.read_text())
  assert set(result["fits"]) == {"true_attributes", "text_attributes", "image_attributes",
                                 "run_item_vectors"}
  summary = json.load(open(f"{trained_workdir}/summary.json"))
  assert result["run_test"] == summary["test"] and result["oracle"] == summary["oracle"]
  for fit in result["fits"].values():
    assert fit["penalty"] in ceiling.PENALTIES
    assert 0 <= fit["test"]["recall@20"] <= 1 and 0 <= fit["valid"]["recall@20"] <= 1
