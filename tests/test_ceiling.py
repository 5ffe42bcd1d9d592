"""mmjax.bench.ceiling: per-user log-linear fits on given item features."""

import json

import numpy as np
import pytest

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


def test_bag_of_words_marks_the_tokens_that_tell_texts_apart():
  tokens = np.array([[2, 7, 9, 3, 0], [2, 9, 3, 0, 0], [2, 8, 8, 3, 0]])
  mask = (tokens > 0).astype(np.int32)
  # Columns: the tokens 7, 8, 9 (2 and 3 are in every text, 0 is padding).
  np.testing.assert_array_equal(ceiling.bag_of_words(tokens, mask),
                                [[1, 0, 1], [0, 0, 1], [0, 1, 0]])


def test_attribute_variance_splits_the_variance_by_attribute():
  rng = np.random.default_rng(0)
  n = 600
  attrs = {a: rng.integers(0, len(v), n) for a, v in ceiling.VOCAB.items()}
  colour_only = ceiling.one_hot(attrs, ["colour"]) @ rng.normal(size=(8, 16))
  v = ceiling.attribute_variance(colour_only, attrs)
  assert np.isclose(v["r2"], 1.0) and np.isclose(v["share"]["colour"], 1.0)
  assert max(s for a, s in v["share"].items() if a != "colour") < 0.05
  # Half the variance attribute-driven, half item-specific noise.
  signal = ceiling.one_hot(attrs, ["pattern", "style"]) @ rng.normal(size=(10, 32))
  noise = rng.normal(size=(n, 32))
  noisy = signal / np.sqrt(signal.var(0).sum()) + noise / np.sqrt(noise.var(0).sum())
  v = ceiling.attribute_variance(noisy, attrs)
  assert 0.4 < v["r2"] < 0.6
  assert 0.15 < v["share"]["pattern"] < 0.4 and 0.15 < v["share"]["style"] < 0.4
  assert v["share"]["colour"] < 0.05


def test_benchmark_on_a_finished_run(trained_workdir, tmp_path):
  out = tmp_path / "ceiling.json"
  ceiling.main(["--workdir", trained_workdir, "--out", str(out)])
  result = json.loads(out.read_text())
  assert set(result["fits"]) == {"true_attributes", "text_attributes", "image_attributes",
                                 "text_bag_of_words", "run_item_vectors", "run_content",
                                 "run_z_text", "run_z_image"}
  summary = json.load(open(f"{trained_workdir}/summary.json"))
  assert result["run_test"] == summary["test"] and result["oracle"] == summary["oracle"]
  from mmjax import api
  has_ids = api.load(trained_workdir).item_id_table is not None
  assert set(result["variance"]) == {"z_text", "z_image", "item"} | (
      {"item_content_only", "item_id_table"} if has_ids else set())
  for v in result["variance"].values():
    assert 0 <= v["r2"] <= 1 + 1e-9 and set(v["share"]) == set(ceiling.VOCAB)
  if has_ids:
    # Scale 1 is the run's item-ID table as loaded, scored by the user tower; scale 0 is its
    # content alone. Where the run chose a user refit, its summary scores with the refit.
    scales = {row["scale"]: row for row in result["id_scale"]}
    assert sorted(scales) == sorted(ceiling.ID_SCALES)
    refit = summary.get("postprocess", {}).get("user_refit", "tower") != "tower"
    if refit:
      tower = json.load(open(f"{trained_workdir}/postprocess.json"))["user_refit"]
      for split in ("valid", "test"):
        assert scales[1.0][split]["recall@20"] == pytest.approx(
            tower["recall_at_20"][split]["tower"], abs=1e-6)
    else:
      for k in ("recall@20", "ndcg@20"):
        assert scales[1.0]["test"][k] == pytest.approx(summary["test"][k], abs=1e-6)
        assert scales[1.0]["valid"][k] == pytest.approx(summary["valid"][k], abs=1e-6)
  else:
    assert result["id_scale"] == []
  for fit in result["fits"].values():
    assert fit["penalty"] in ceiling.PENALTIES
    assert 0 <= fit["test"]["recall@20"] <= 1 and 0 <= fit["valid"]["recall@20"] <= 1
