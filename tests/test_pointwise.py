"""Explicit labels (loss.pointwise): the metrics against plain references,
labelled impressions through the catalog, the store and the stream, the
term wired into the fused step, and labelled runs end to end (clicks on the
synthetic catalog, ratings from a raw folder's label column)."""

import dataclasses
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax import config as config_lib
from mmjax.data import raw, store, store_write, synthetic
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.data.pipeline import train_dataset
from mmjax.data.stream import TrainInteractions
from mmjax.errors import MmjaxError
from mmjax.eval.pointwise import auc, label_metrics, log_loss, rmse
from mmjax.losses.recommendation import pointwise
from mmjax.models.model import build_model
from mmjax.train.step import LABEL_TERMS, SELF_SUPERVISED_TERMS, TERMS
from raw_fixtures import png, write_lines
from tiny import compiled_step, loss_grads, shapes_and_batch, tiny_config

HEAD = ("rec", "pointwise")


def _pairwise_auc(scores, labels):
  """The definition: P(positive outscores negative), ties half."""
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = [1.0 if p > n else 0.5 if p == n else 0.0
          for p, n in itertools.product(pos, neg)]
  return sum(wins) / len(wins)


def test_auc_counts_ties_half_and_matches_the_definition():
  assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert auc([1, 1, 2, 0], [1, 0, 1, 0]) == pytest.approx(0.875)
  assert auc([3, 3, 3, 3], [1, 0, 1, 0]) == pytest.approx(0.5)
  assert np.isnan(auc([0.2, 0.3], [1, 1]))
  rng = np.random.default_rng(0)
  for _ in range(5):
    scores = rng.integers(0, 6, 40).astype(float)   # Many ties.
    labels = rng.random(40) < 0.4
    assert auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))


def test_log_loss_and_rmse_on_known_values():
  assert log_loss([0.0, 0.0], [1, 0]) == pytest.approx(np.log(2))
  p = 1 / (1 + np.exp(-2.0))
  assert log_loss([2.0, -2.0], [1, 1]) == pytest.approx(
      -(np.log(p) + np.log(1 - p)) / 2)
  assert np.isfinite(log_loss([1e4, -1e4], [0, 1]))
  assert rmse([1.0, 2.0, 4.0], [1.0, 4.0, 2.0]) == pytest.approx(np.sqrt(8 / 3))
  assert set(label_metrics([0.0, 1.0], [0, 1], "binary")) == {"auc", "log_loss"}
  assert set(label_metrics([3.0, 4.0], [3, 5], "rating")) == {"rmse"}


def test_the_loss_is_bce_or_squared_error_on_the_valid_rows():
  pred, labels = jnp.array([0.5, -1.0, 2.0]), jnp.array([1.0, 0.0, 1.0])
  valid = jnp.array([True, True, False])
  want = np.mean([np.log1p(np.exp(-0.5)), np.log1p(np.exp(-1.0))])
  assert float(pointwise(pred, labels, "binary", valid)) == pytest.approx(want, rel=1e-5)
  ratings = jnp.array([1.0, 2.0, 5.0])
  assert float(pointwise(pred, ratings, "rating", valid)) == pytest.approx(
      (0.25 + 9.0) / 2, rel=1e-5)


SPEC = synthetic.SyntheticSpec(num_items=96, num_users=48, image_size=16,
                               interactions_per_user=12, impressions=20)


@pytest.fixture(scope="module")
def labelled_dir(cache_root):
  return store_write.ensure_synthetic(SPEC, cache_root)


def test_impressions_are_labelled_rows_but_no_positives(labelled_dir):
  cat = store.load_catalog(labelled_dir)
  plain = synthetic.generate(dataclasses.replace(SPEC, impressions=0))
  assert cat.label_kind == "binary" and plain.label_kind == ""
  assert len(cat.interactions) == len(plain.interactions) + 20 * SPEC.num_users
  for split in (TRAIN, VALID, TEST):
    pairs, labels = cat.labelled_rows(split)
    assert 0 < labels.mean() < 1   # Clicks and impressions without one.
    np.testing.assert_array_equal(cat.split_pairs(split), pairs[labels > 0])
  # The interactions are all clicks: every one of them is still a positive.
  pos = {tuple(p) for s in (TRAIN, VALID, TEST) for p in cat.split_pairs(s)}
  assert {tuple(p) for p in plain.interactions} <= pos
  # Read back from the records alone, the stream's view is the catalog's.
  read, from_cat = (TrainInteractions.read(labelled_dir, True),
                    TrainInteractions.from_catalog(cat, True))
  for a, b in ((read.pairs, from_cat.pairs), (read.labels, from_cat.labels),
               (read.histories, from_cat.histories)):
    np.testing.assert_array_equal(a, b)
  unlabelled = TrainInteractions.read(labelled_dir)
  np.testing.assert_array_equal(unlabelled.pairs, cat.split_pairs(TRAIN))
  assert (from_cat.histories >= 0).sum() == len(cat.split_pairs(TRAIN))


def test_the_stream_masks_unclicked_rows_out_of_the_implicit_terms(labelled_dir):
  cfg = tiny_config()
  cat = store.load_catalog(labelled_dir)
  batch = next(iter(train_dataset(labelled_dir, cat, cfg.data, batch_size=64,
                                  seed=0, labels=True)))
  assert batch["label"].dtype == np.float32 and batch["is_labelled"].all()
  np.testing.assert_array_equal(batch["is_interaction"], batch["label"] > 0)
  assert 0 < batch["label"].mean() < 1


def _shapes_and_batch(cfg):
  """tiny.shapes_and_batch's, the batch from the labelled stream."""
  shapes, _ = shapes_and_batch(cfg)
  cat = store.load_catalog(cfg.data.dir)
  batch = next(iter(train_dataset(cfg.data.dir, cat, cfg.data, seed=0,
                                  batch_size=cfg.train.batch_size, labels=True)))
  return shapes, {k: np.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def setup(labelled_dir):
  cfg = tiny_config()
  cfg.data.dir = labelled_dir
  cfg.loss.pointwise = 1.0
  cfg.loss.co_item = 0.0
  shapes, batch = _shapes_and_batch(cfg)
  assert shapes.label_kind == "binary"
  return cfg, batch, nnx.split(build_model(cfg.model, shapes, seed=0), nnx.Param, ...)


def _loss_cfg(cfg, **weights):
  cfg = cfg.copy_and_resolve_references()
  for term in TERMS + SELF_SUPERVISED_TERMS + LABEL_TERMS:
    cfg.loss[term] = weights.get(term, 0.0)
  return cfg


def test_the_term_alone_decreases(setup):
  cfg, batch, split = setup
  cfg = _loss_cfg(cfg, pointwise=1.0)
  cfg.train.update(steps=40, lr=3e-3, warmup_steps=2)
  _, step, state, data = compiled_step(cfg, split, batch)
  logged = []
  for _ in range(cfg.train.steps):
    state, metrics = step(state, data)
    logged.append(float(metrics["pointwise"]))
  assert not {"softmax", "bpr", "bce"} & set(metrics)   # Only what was asked.
  assert logged[-1] < 0.7 * logged[0], (logged[0], logged[-1])


def _grads(cfg, split, batch, **weights):
  return loss_grads(_loss_cfg(cfg, **weights).loss, split, batch)


def test_only_the_term_reaches_the_head(setup):
  cfg, batch, split = setup
  on = _grads(cfg, split, batch, softmax=1.0, pointwise=1.0)
  off = _grads(cfg, split, batch, softmax=1.0)
  for leaf in ("weight", "bias"):
    assert np.abs(on[HEAD + (leaf,)]).max() > 0
    assert np.abs(off[HEAD + (leaf,)]).max() == 0
  text_tower = ("text", "layers", 0, "intermediate", "dense", "kernel")
  assert np.abs(off[text_tower]).max() > 0   # The objective is alive without it.


def test_pointwise_without_labels_is_one_clear_error(data_dir):
  cfg = tiny_config()
  cfg.data.dir = data_dir
  with pytest.raises(MmjaxError, match="no labels.*data.raw.columns.label") as e:
    _shapes_and_batch(cfg)
  assert "\n" not in str(e.value)


def test_a_click_run_reports_auc_and_log_loss(tmp_path, cache_root):
  from mmjax.run import train_and_evaluate
  cfg = tiny_config()
  cfg.data.cache_dir = cache_root
  cfg.loss.pointwise = 1.0   # Makes the catalog emit impressions.
  cfg.train.update(steps=4, checkpoint_every=4, eval_every=4)
  summary = train_and_evaluate(cfg, str(tmp_path / "w"), log=lambda *_: None)
  p = summary["pointwise"]
  assert p["kind"] == "binary"
  for split in ("valid", "test"):
    assert 0 <= p[split]["auc"] <= 1 and p[split]["log_loss"] > 0
  assert json.loads((tmp_path / "w" / "summary.json").read_text())["pointwise"] == p
  assert "auc" in summary["best"]["valid"]   # Logged at every evaluation too.


def _rated_folder(root, label_values=None):
  """60 items (the metrics rank the top 50), 16 users who rate 12 each (1..5)."""
  rng = np.random.default_rng(0)
  items = ["item_id,text,image"]
  for i in range(60):
    png(str(root / "images" / f"{i}.png"), tuple(int(c) for c in rng.integers(0, 255, 3)))
    items.append(f"i{i},item {i} {'red' if i % 2 else 'blue'},{i}.png")
  rows = ["user_id,item_id,rating"]
  for u in range(16):
    for i in rng.permutation(60)[:12]:
      rows.append(f"u{u},i{i},{1 + (u + i) % 5}")
  if label_values:
    rows[1:1 + len(label_values)] = [
        r.rsplit(",", 1)[0] + "," + v for r, v in zip(rows[1:], label_values)]
  write_lines(root / "items.csv", items)
  write_lines(root / "interactions.csv", rows)
  return root


def _raw_config(root, cache_root):
  cfg = tiny_config()
  cfg.data.name = "raw"
  cfg.data.synthetic.update(config_lib.default_config().data.synthetic)  # Unread.
  cfg.data.cache_dir = cache_root
  cfg.data.raw.update(root=str(root), image_root="images", image_size=16,
                      tokenizer_vocab=200)
  cfg.data.raw.columns.label = "rating"
  return cfg


def test_a_rating_run_reports_rmse(tmp_path, cache_root):
  from mmjax.run import train_and_evaluate
  cfg = _raw_config(_rated_folder(tmp_path / "shop"), cache_root)
  catalog, _ = raw.build_catalog(raw.read_source(cfg.data.raw), cfg.data.raw)
  assert catalog.label_kind == "rating"
  assert len(catalog.split_pairs(TRAIN)) == len(catalog.labelled_rows(TRAIN)[1])
  cfg.loss.pointwise = 1.0
  cfg.train.update(steps=4, checkpoint_every=4, eval_every=4)
  summary = train_and_evaluate(cfg, str(tmp_path / "w"), log=lambda *_: None)
  p = summary["pointwise"]
  assert p["kind"] == "rating" and set(p["test"]) == {"rmse"}
  assert 0 < p["test"]["rmse"] < 4


@pytest.mark.parametrize("bad,match", [
    (["3", "four"], r"interactions.csv:3: label 'four' is not a finite number"),
    (["nan"], r"interactions.csv:2: label 'nan' is not a finite number"),
    ([""], r"interactions.csv:2: column 'rating' is empty")])
def test_a_bad_label_is_one_line_naming_the_row(tmp_path, cache_root, bad, match):
  cfg = _raw_config(_rated_folder(tmp_path / "shop", bad), cache_root)
  with pytest.raises(MmjaxError, match=match) as e:
    raw.read_source(cfg.data.raw)
  assert "\n" not in str(e.value)


def test_a_missing_label_column_is_one_line(tmp_path, cache_root):
  cfg = _raw_config(_rated_folder(tmp_path / "shop"), cache_root)
  cfg.data.raw.columns.label = "stars"
  with pytest.raises(MmjaxError, match=r"no column 'stars' \(config.data.raw."
                     r"columns.label\)") as e:
    raw.read_source(cfg.data.raw)
  assert "\n" not in str(e.value)


def test_the_dry_run_compiles_for_the_labelled_batch(setup):
  """aot's abstract batch and model are the labelled ones training feeds."""
  from mmjax.train import aot
  cfg, batch, _ = setup
  shapes = aot.data_shapes(cfg)
  assert shapes.label_kind == "binary"
  spec = aot.batch_shapes(cfg, shapes)
  assert set(spec) == set(batch)
  for name in ("label", "is_labelled", "is_interaction"):
    shape, dtype = spec[name]
    assert batch[name].shape == shape and batch[name].dtype == jnp.dtype(dtype)
