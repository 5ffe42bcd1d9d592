"""postprocess/user_refit.py: the post-training refit of the user vectors."""

import json

import ml_collections
import numpy as np
import pytest

from mmjax.data.catalog import Catalog
from mmjax.errors import MmjaxError
from mmjax.eval.evaluate import rank
from mmjax.postprocess import choose, user_refit
from mmjax.postprocess.choose import evaluate_user_refits

U, N, D = 40, 60, 6


def _planted(seed=0, per_user=8):
  """Unit item vectors, hidden user preferences, and train histories sampled
  from softmax(3 * p_u . v_i) without replacement."""
  rng = np.random.default_rng(seed)
  items = rng.normal(size=(N, D)).astype(np.float32)
  items /= np.linalg.norm(items, axis=1, keepdims=True)
  prefs = rng.normal(size=(U, D)).astype(np.float32)
  prefs /= np.linalg.norm(prefs, axis=1, keepdims=True)
  logits = 3.0 * prefs @ items.T
  hist = np.stack([rng.choice(N, per_user, replace=False,
                              p=np.exp(l) / np.exp(l).sum()) for l in logits])
  return items, prefs, hist.astype(np.int32)


def _nll(users, items, hist):
  s = users @ items.T
  lse = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)
  ok = hist >= 0
  return float(((lse[:, None] - np.take_along_axis(s, np.maximum(hist, 0), 1)) * ok).sum())


def test_the_refit_is_a_dot_product_over_the_item_vectors_plus_an_offset():
  items, _, hist = _planted()
  tower = np.zeros((U, D), np.float32)
  users2, items2 = user_refit.refit(tower, items, hist, penalty=1.0, steps=30)
  assert users2.shape == (U, D + 1) and items2.shape == (N, D + 1)
  np.testing.assert_array_equal(items2[:, :D], items)
  np.testing.assert_array_equal(users2[:, D], 1.0)
  assert _nll(users2, items2, hist) < _nll(tower, items, hist)


def test_the_refit_recovers_planted_preferences():
  """From a tower that knows nothing (zeros), the refit user vectors point
  toward the users' hidden preferences."""
  items, prefs, hist = _planted()
  users2, _ = user_refit.refit(np.zeros((U, D), np.float32), items, hist,
                               penalty=0.3, steps=200)
  w = users2[:, :D]
  cos = (w * prefs).sum(1) / np.linalg.norm(w, axis=1)
  assert np.median(cos) > 0.6, np.median(cos)


def test_a_large_penalty_keeps_the_tower_and_learns_popularity():
  items, _, hist = _planted()
  rng = np.random.default_rng(1)
  tower = rng.normal(size=(U, D)).astype(np.float32)
  users2, items2 = user_refit.refit(tower, items, hist, penalty=1e7, steps=100)
  np.testing.assert_allclose(users2[:, :D], tower, atol=1e-3)
  counts = np.bincount(hist.ravel(), minlength=N)
  # Items picked more often get larger offsets (rank correlation).
  ranks = lambda x: np.argsort(np.argsort(x))
  assert np.corrcoef(ranks(counts), ranks(items2[:, D]))[0, 1] > 0.5


def test_chunks_of_users_give_the_same_fit():
  items, _, hist = _planted()
  hist[3] = -1                     # A user without train items...
  tower = np.random.default_rng(2).normal(size=(U, D)).astype(np.float32)
  whole = user_refit.refit(tower, items, hist, penalty=1.0, steps=20, chunk=1024)
  chunked = user_refit.refit(tower, items, hist, penalty=1.0, steps=20, chunk=7)
  for a, b in zip(whole, chunked):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(whole[0][3, :D], tower[3])   # ... keeps the tower.


@pytest.mark.parametrize("change,message", [
    (dict(users=np.zeros((U, D + 1))), "must be"),
    (dict(hist=np.zeros((U - 1, 3), np.int32)), "histories for"),
    (dict(hist=np.full((U, 3), N, np.int32)), "history item id"),
    (dict(penalty=0.0), "penalty"),
    (dict(steps=0), "steps"),
])
def test_bad_refit_inputs_name_the_problem(change, message):
  items, _, hist = _planted()
  kw = dict(users=np.zeros((U, D), np.float32), items=items, hist=hist,
            penalty=1.0, steps=5)
  kw.update(change)
  with pytest.raises(ValueError, match=message):
    user_refit.refit(kw["users"], kw["items"], kw["hist"], kw["penalty"], kw["steps"])


def _catalog(seed=0):
  """A catalog whose users each have 8 train, 2 valid and 2 test items drawn
  from the planted preference model."""
  items, prefs, _ = _planted(seed)
  hist = _planted(seed, per_user=12)[2]
  rows, split = [], []
  for u in range(U):
    for j, i in enumerate(hist[u]):
      rows.append((u, i))
      split.append(0 if j < 8 else 1 if j < 10 else 2)
  return items, prefs, Catalog(item_text=["x"] * N, item_images=None,
                               interactions=np.asarray(rows, np.int32),
                               split=np.asarray(split, np.int8), num_users=U,
                               num_items=N)


def test_valid_chooses_between_the_tower_and_the_refits():
  items, prefs, catalog = _catalog()
  tower = np.zeros((U, D), np.float32)   # Scores every item alike.
  penalty, metrics, tried, vectors = evaluate_user_refits(
      (tower, items), catalog, (0.3, 3.0), steps=60)
  assert list(tried["valid"]) == list(tried["test"]) == ["tower", "refit:0.3", "refit:3"]
  assert penalty in (0.3, 3.0)
  assert tried["valid"][user_refit.label(penalty)] == max(tried["valid"].values())
  assert tried["valid"]["tower"] < max(tried["valid"].values())
  assert metrics == rank(*vectors, catalog)
  assert metrics["test"]["recall@20"] == tried["test"][user_refit.label(penalty)]


def test_the_tower_wins_ties(monkeypatch):
  """A refit that scores exactly like the tower is not chosen."""
  items, prefs, catalog = _catalog()
  same = lambda users, items, *_: (np.pad(users, ((0, 0), (0, 1))),
                                   np.pad(items, ((0, 0), (0, 1))))
  monkeypatch.setattr(user_refit, "refit", same)
  penalty, _, tried, vectors = evaluate_user_refits(
      (prefs, items), catalog, (1.0,), steps=5)
  assert penalty is None and vectors[0] is prefs
  assert tried["valid"]["tower"] == tried["valid"]["refit:1"]


def _postprocess(tmp_path, catalog, tower, items, penalties):
  """choose.run with only user refits asked for, from a tower's vectors."""
  cfg = ml_collections.ConfigDict(dict(item_id_scales=(), item_id_clusters=(),
                                       user_refit_penalties=penalties,
                                       user_refit_steps=60))
  evaluated = dict(rank(tower, items, catalog), scoring_vectors=(tower, items),
                   item_vectors={}, retrieval={})
  return choose.run(cfg, str(tmp_path), evaluated, embedder=None, params=None,
                    buffers=None, catalog=catalog, history_len=8, step=7,
                    log=lambda *_: None)


def test_a_run_saves_the_chosen_refit_and_drops_a_stale_one(tmp_path):
  items, _, catalog = _catalog()
  tower = np.zeros((U, D), np.float32)
  result, summary = _postprocess(tmp_path, catalog, tower, items, (0.3,))
  report = json.loads((tmp_path / choose.FILE).read_text())
  assert report["step"] == 7
  assert report["user_refit"]["chosen"] == 0.3
  assert report["user_refit"]["label"] == summary["user_refit"] == "refit:0.3"
  assert report["user_refit"]["file"] == user_refit.FILE
  assert summary["as_trained_recall_at_20"]["valid"] == rank(tower, items, catalog)[
      "valid"]["recall@20"]
  assert set(result) == {"valid", "test", "retrieval"}   # No arrays left.
  refit = choose.user_refit_vectors(str(tmp_path), choose.read(str(tmp_path)), 7)
  users, scored_items = user_refit.apply(refit, items)
  assert rank(users, scored_items, catalog) == {s: result[s] for s in ("valid", "test")}
  assert choose.user_refit_vectors(str(tmp_path), choose.read(str(tmp_path)), 6) is None
  result, summary = _postprocess(tmp_path, catalog, tower, items, ())
  assert summary is None
  assert not (tmp_path / user_refit.FILE).exists()
  assert not (tmp_path / choose.FILE).exists()


def test_a_missing_refit_file_is_an_error_naming_it(tmp_path):
  items, _, catalog = _catalog()
  _postprocess(tmp_path, catalog, np.zeros((U, D), np.float32), items, (0.3,))
  (tmp_path / user_refit.FILE).unlink()
  with pytest.raises(MmjaxError, match=f"refit:0.3.*{user_refit.FILE}"):
    choose.user_refit_vectors(str(tmp_path), choose.read(str(tmp_path)), 7)


def test_describe_names_the_choice():
  report = dict(label="refit:1", recall_at_20=dict(
      valid={"tower": 0.2, "refit:1": 0.25}, test={"tower": 0.21, "refit:1": 0.26}))
  assert user_refit.describe(report) == (
      "user vectors: refit:1 (valid recall@20 0.2500, test 0.2600; tower 0.2000 / 0.2100)")
