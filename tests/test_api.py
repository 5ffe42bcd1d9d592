"""mmjax.load: a finished run back as an object that recommends and encodes."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import mmjax
from mmjax import api
from mmjax.data.catalog import TEST, TRAIN
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import pad_lists, ranking_metrics, topk_from_embeddings
from mmjax.postprocess import choose, user_refit
from mmjax.postprocess.item_id_table import TableTransform


@pytest.fixture(scope="module")
def model(trained_workdir):
  return mmjax.load(trained_workdir)


def test_loaded_model_reproduces_the_runs_test_metrics(model, trained_workdir):
  """Restored params + the same encoders give the numbers the trainer logged."""
  summary = json.load(open(os.path.join(trained_workdir, "summary.json")))
  assert model.step == summary["config"]["train"]["steps"] == 4
  u, v = model.scoring_vectors
  topk = topk_from_embeddings(u, v, pad_lists(model.catalog.user_histories(TRAIN)), 50)
  got = ranking_metrics(topk, pad_lists(model.catalog.user_histories(TEST)))
  for k in ("recall@20", "ndcg@20", "recall@50"):
    assert got[k] == pytest.approx(summary["test"][k], abs=1e-6)


def test_users_pool_their_last_eval_history_len_train_items(model):
  """The tiny config trains on 4-item histories and evaluates on the last 8."""
  assert (model.config.data.history_len, model.config.data.eval_history_len) == (4, 8)
  pooled = {n: model._embedder.users(
      model._params, model._buffers, model.catalog.user_histories(TRAIN, max_len=n),
      model.item_embeddings["item"]) for n in (4, 8)}
  np.testing.assert_allclose(model.user_embeddings, pooled[8], atol=1e-6)
  assert not np.allclose(model.user_embeddings, pooled[4], atol=1e-3)


def test_initial_model_is_rebuilt_and_differs(model):
  init = model.at_init()
  assert init.step == 0
  trained, start = model.item_embeddings, init.item_embeddings
  assert trained["item"].shape == start["item"].shape == (model.num_items, 16)
  assert not np.allclose(trained["z_text"], start["z_text"], atol=1e-4)


def test_without_item_ids_scores_the_content_alone(model):
  """Zeroing the ID table leaves the aligned vectors and the original model
  as they were; the item vectors become normalize(item - ID) directions."""
  table = model.item_id_table
  assert table is not None and table.shape == (model.num_items, 16)
  content = model.without_item_ids()
  full, alone = model.item_embeddings, content.item_embeddings
  np.testing.assert_allclose(alone["z_text"], full["z_text"], atol=1e-6)
  assert content.item_id_table is not None and not content.item_id_table.any()
  assert np.array_equal(model.item_id_table, table)
  # item = normalize(fused + id), alone = normalize(fused): the residual
  # item - id is parallel to alone.
  for i in range(5):
    scale = np.linalg.lstsq(np.stack([full["item"][i], -alone["item"][i]], 1),
                            table[i], rcond=None)[0]
    np.testing.assert_allclose(scale[0] * full["item"][i] - table[i],
                               scale[1] * alone["item"][i], atol=1e-5)
  assert not np.allclose(alone["item"], full["item"], atol=1e-3)


def test_item_id_scale_interpolates_between_content_and_the_trained_items(model):
  """with_item_id_scale(s): item = normalize(content + s * ID); s = 1 is the
  trained model, and the ID table itself is left as it was."""
  table, content = model.item_id_table, model.item_embeddings["content"]
  same = model.with_item_id_scale(1.0)
  np.testing.assert_allclose(same.item_embeddings["item"], model.item_embeddings["item"],
                             atol=1e-6)
  half = model.with_item_id_scale(0.5).item_embeddings["item"]
  expected = content + 0.5 * table
  np.testing.assert_allclose(
      half, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
  assert not np.allclose(half, model.item_embeddings["item"], atol=1e-3)
  assert np.array_equal(model.item_id_table, table)


def _postprocess_json(workdir) -> dict:
  return json.loads(open(os.path.join(workdir, choose.FILE)).read())


def test_the_run_reports_the_item_id_table_valid_chose(trained_workdir):
  """postprocess.json: every candidate of the tiny config was tried; the
  chosen one has the best valid recall@20 (the table as trained wins ties)."""
  post = _postprocess_json(trained_workdir)
  assert post["step"] == 4
  report = post["item_id_table"]
  valid, test = report["recall_at_20"]["valid"], report["recall_at_20"]["test"]
  assert list(valid) == list(test) == [
      "1", "0.5", "k3:0.5/0", "k3:1/0", "k3:1/0.5"]
  chosen = TableTransform.from_dict(report["chosen"])
  assert chosen.label == report["label"]
  assert valid[chosen.label] == max(valid.values())
  assert chosen.label == "1" or valid[chosen.label] > valid["1"]
  # The user refit (below) starts from the chosen table's tower.
  refit = post["user_refit"]["recall_at_20"]
  assert refit["valid"]["tower"] == valid[chosen.label]
  assert refit["test"]["tower"] == test[chosen.label]


def test_the_run_reports_the_user_refit_valid_chose(model, trained_workdir):
  """The tower and each refit penalty of the tiny config were tried; the
  chosen one has the best valid recall@20 (the tower wins ties), its metrics
  are the run's valid and test figures, and its vectors are in the workdir
  exactly when a refit was chosen."""
  post = _postprocess_json(trained_workdir)
  report = post["user_refit"]
  valid, test = report["recall_at_20"]["valid"], report["recall_at_20"]["test"]
  assert list(valid) == list(test) == ["tower", "refit:0.3", "refit:3"]
  assert report["label"] == user_refit.label(report["chosen"])
  assert valid[report["label"]] == max(valid.values())
  assert report["chosen"] is None or valid[report["label"]] > valid["tower"]
  assert model.summary["valid"]["recall@20"] == valid[report["label"]]
  assert model.summary["test"]["recall@20"] == test[report["label"]]
  saved = os.path.exists(os.path.join(trained_workdir, user_refit.FILE))
  assert saved == (report["chosen"] is not None) == ("file" in report)
  # summary.json names what its figures are of; the choice itself is only here.
  assert model.summary["postprocess"]["user_refit"] == report["label"]
  assert model.summary["postprocess"]["item_id_table"] == post["item_id_table"]["label"]
  assert set(model.summary["postprocess"]) == {
      "file", "as_trained_recall_at_20", "item_id_table", "user_refit"}


def _rewrite_postprocess(workdir, **changes):
  post = _postprocess_json(workdir)
  for key, value in changes.items():
    if isinstance(value, dict):
      post[key].update(value)
    else:
      post[key] = value
  (workdir / choose.FILE).write_text(json.dumps(post))
  return post


def test_load_applies_the_user_refit_to_its_step_only(trained_workdir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained_workdir, copy)
  # The tower's vectors at the post-processed step (its item-ID table choice applied).
  _rewrite_postprocess(copy, user_refit=dict(chosen=None, label="tower"))
  tower_u, tower_v = mmjax.load(copy).scoring_vectors
  histories = pad_lists(mmjax.load(copy).catalog.user_histories(TRAIN))
  users, items = user_refit.refit(tower_u, tower_v, histories, 1.0, steps=10)
  user_refit.save(str(copy), users, items, 1.0)
  post = _rewrite_postprocess(copy, user_refit=dict(chosen=1.0, label="refit:1"),
                              step=5)   # The checkpoint is not the step it names.
  assert mmjax.load(copy).scoring_vectors[0].shape == tower_u.shape   # No refit there.
  _rewrite_postprocess(copy, step=4)
  got_u, got_v = mmjax.load(copy).scoring_vectors
  np.testing.assert_array_equal(got_u, users)
  np.testing.assert_allclose(got_v, items, atol=1e-6)
  assert got_u.shape[1] == tower_u.shape[1] + 1
  (copy / user_refit.FILE).unlink()
  with pytest.raises(MmjaxError, match=f"refit:1.*{user_refit.FILE}"):
    mmjax.load(copy)
  assert post["user_refit"]["label"] == "refit:1"


@pytest.mark.parametrize("chosen", [TableTransform.scaled(0.5),
                                    TableTransform(3, 1.0, 0.5)])
def test_load_applies_the_chosen_item_id_table_to_its_step_only(
    trained_workdir, tmp_path, chosen):
  """A run whose postprocess.json chose a transform loads with it applied to
  its ID table at the step it names; any other checkpoint loads as trained."""
  copy = tmp_path / "run"
  shutil.copytree(trained_workdir, copy)
  _rewrite_postprocess(copy, item_id_table=dict(chosen=chosen.to_dict()), step=5)
  trained_table = mmjax.load(copy).item_id_table
  _rewrite_postprocess(copy, step=4)
  np.testing.assert_allclose(mmjax.load(copy).item_id_table,
                             chosen.apply(trained_table), rtol=1e-6, atol=1e-7)
  assert not np.allclose(chosen.apply(trained_table), trained_table, atol=1e-4)


def test_an_unreadable_postprocess_json_is_an_error(trained_workdir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained_workdir, copy)
  (copy / choose.FILE).write_text("{")
  with pytest.raises(MmjaxError, match=f"cannot read .*{choose.FILE}"):
    mmjax.load(copy)


def test_recommend_ranks_unseen_items_by_score(model):
  user, k = 5, 7
  seen = set(model.seen(user).tolist())
  assert seen and seen == set(model.catalog.interactions[
      model.catalog.interactions[:, 0] == user, 1].tolist())
  recs = model.recommend(user, k)
  u, v = model.scoring_vectors
  scores = v @ u[user]
  expected = [i for i in np.argsort(-scores, kind="stable") if i not in seen][:k]
  assert [r.item for r in recs] == expected
  np.testing.assert_allclose([r.score for r in recs], scores[expected], rtol=1e-5)
  assert recs[0].text == model.catalog.item_text[expected[0]]


def test_ids_in_text_form_and_batched_users_rank_as_one_user_does(model):
  """Without own ids the dense ints are the ids: "5" finds user 5, and a
  result's id is its item index. Users ranked together (in batches of 3)
  get what each gets alone."""
  alone = model.recommend(5, 6)
  assert model.recommend("5", 6) == alone
  assert [r.id for r in alone] == [r.item for r in alone]
  users = [5, 0, "7", 47]
  together = model.recommend(users=users, k=6)
  assert together == [model.recommend(u, 6) for u in users]
  batches = list(model.recommend_batches(6, batch_users=3))
  assert [b[0] for b in batches] == list(range(model.num_users))
  np.testing.assert_array_equal(batches[5][1], [r.item for r in alone])
  np.testing.assert_allclose(batches[5][2], [r.score for r in alone], rtol=1e-6)
  assert model.similar("11", 3) == model.similar(11, 3)


def test_similar_is_nearest_by_cosine_without_the_item(model):
  item, k = 11, 5
  v = model.item_embeddings["item"]
  cos = v @ v[item]
  expected = [i for i in np.argsort(-cos, kind="stable") if i != item][:k]
  got = model.similar(item, k)
  assert [r.item for r in got] == expected
  np.testing.assert_allclose([r.score for r in got], cos[expected], rtol=1e-5)


def test_encoders_match_the_catalog_embeddings(model, tmp_path):
  # One query at a time, as `search` encodes: one compile per tower.
  z = model.item_embeddings
  np.testing.assert_allclose(model.encode_text(model.catalog.item_text[4]),
                             z["z_text"][4:5], atol=1e-5)
  image = model.catalog.item_images[2]
  np.testing.assert_allclose(model.encode_images(image[None]), z["z_image"][2:3],
                             atol=1e-5)
  path = tmp_path / "item2.png"
  Image.fromarray(image).save(path)
  np.testing.assert_allclose(model.encode_images([str(path)]), z["z_image"][2:3],
                             atol=1e-5)
  big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)   # Resized back down.
  assert model.encode_images([big]).shape == (1, 16)
  # Fitted as the catalog's images are: a wide image is padded, not stretched.
  wide = api._image_batch([np.full((8, 16, 3), 200, np.uint8)], 16)[0]
  assert (wide[:4] == 128).all() and (wide[4:12] == 200).all()
  assert (wide[12:] == 128).all()


def test_search_ranks_items_by_image_similarity_to_the_query(model):
  text = model.catalog.item_text[3]
  q = model.encode_text([text])[0]
  scores = model.item_embeddings["z_image"] @ q
  got = model.search(text, 4)
  assert [r.item for r in got] == list(np.argsort(-scores, kind="stable")[:4])


@pytest.mark.parametrize("call, message", [
    (lambda m: m.recommend(10**6), "unknown user 1000000"),
    (lambda m: m.recommend(-1), "unknown user -1"),
    (lambda m: m.recommend("x3"), "unknown user 'x3': user ids are 0..47"),
    (lambda m: m.recommend(True), "unknown user True"),
    (lambda m: m.recommend(users=[1, 48]), "unknown user 48"),
    (lambda m: m.recommend(), "one of user= or users="),
    (lambda m: m.similar(96), "unknown item 96: item ids are 0..95"),
    (lambda m: m.recommend(0, k=0), "k=0"),
    (lambda m: m.similar(0, k=96), "k=96"),
    (lambda m: m.encode_text([]), "at least one text"),
    (lambda m: m.encode_images(["/nonexistent.png"]), "cannot read image"),
])
def test_bad_queries_raise_mmjax_errors(model, call, message):
  with pytest.raises(MmjaxError, match=message.replace("(", r"\(")):
    call(model)


def test_load_errors_name_the_problem(tmp_path, trained_workdir):
  with pytest.raises(MmjaxError, match="workdir not found"):
    mmjax.load(tmp_path / "nope")
  with pytest.raises(MmjaxError, match="no checkpoint in"):
    mmjax.load(tmp_path)
  no_summary = tmp_path / "copy"
  shutil.copytree(os.path.join(trained_workdir, "checkpoints"), no_summary / "checkpoints")
  with pytest.raises(MmjaxError, match="summary.json not found"):
    mmjax.load(no_summary)
  summary = json.load(open(os.path.join(trained_workdir, "summary.json")))
  summary["config"]["loss"]["retired_term"] = 0.5   # Training-only: dropped.
  (no_summary / "summary.json").write_text(json.dumps(summary))
  assert mmjax.load(no_summary).step == 4
  summary["config"]["model"]["colour"] = 1          # Shapes the model: an error.
  (no_summary / "summary.json").write_text(json.dumps(summary))
  with pytest.raises(MmjaxError, match="unknown to this mmjax version: config.model.colour"):
    mmjax.load(no_summary)
  summary["config"]["data"]["name"] = "mmrec"   # A feature-graph run's summary.
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  with pytest.raises(MmjaxError, match="config.json not found: not a training workdir"):
    mmjax.load(tmp_path)   # Loaded as one: restore_serving reads config.json.
