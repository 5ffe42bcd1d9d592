"""data.item_ssl_fraction: item-only rows from every catalog item (cold ones
too) in each train batch, seen by the self-supervised terms only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.config import checks
from mmjax.data import store
from mmjax.data.catalog import TRAIN, VALID
from mmjax.data.features import TextTokenizer, model_images
from mmjax.data.pipeline import ItemFeatures, train_dataset
from mmjax.errors import MmjaxError
from mmjax.models.model import DataShapes, build_model
from mmjax.train import aot
from mmjax.train.step import make_loss_fn
from tiny import tiny_config

REC = ("softmax", "bpr", "bce", "co_item")


def _stream(config, catalog, fraction, *, batch_size=16, seed=0, **kw):
  config.data.item_ssl_fraction = fraction
  return train_dataset(config.data.dir, catalog, config.data, batch_size=batch_size,
                       seed=seed, co_items=True, **kw)


def _tokenizer(config):
  return TextTokenizer(store.tokenizer_path(config.data.dir), config.data.max_text_len)


def test_item_only_rows_are_the_batch_tail_without_a_user(config):
  catalog = store.load_catalog(config.data.dir)
  b = next(iter(_stream(config, catalog, 0.25)))
  assert b["tokens"].shape[0] == 16
  np.testing.assert_array_equal(b["is_interaction"], np.arange(16) < 12)
  items = b["item_id"][12:]
  assert np.all(b["history"][12:] == -1) and np.all(b["co_item_id"][12:] == -1)
  # Their inputs are their own items'.
  feats = ItemFeatures.build(catalog, _tokenizer(config))
  np.testing.assert_array_equal(b["tokens"][12:], feats.tokens[items])
  # The dry run compiles for the same batch.
  spec = aot.batch_shapes(config, aot.data_shapes(config))
  assert set(spec) == set(b) and spec["is_interaction"][0] == (16,)
  # At 0 the batch is today's: no new field.
  assert "is_interaction" not in next(iter(_stream(config, catalog, 0.0)))


def test_items_without_train_interactions_reach_the_item_rows(config):
  catalog = store.load_catalog(config.data.dir)
  n = catalog.num_items
  cold = np.arange(0, n, 5)   # Their train interactions moved out of train.
  split = np.where((catalog.split == TRAIN) & np.isin(catalog.interactions[:, 1], cold),
                   VALID, catalog.split).astype(catalog.split.dtype)
  catalog = dataclasses.replace(catalog, split=split)
  # Two processes of a batch of 16 at 0.25: two item rows each, so one epoch
  # of the item stream (a permutation of the catalog) takes n / 4 batches.
  per_process = []
  for p in range(2):
    it = iter(_stream(config, catalog, 0.25, seed=3, process_index=p, process_count=2))
    rows = []
    for _ in range(n // 4):
      b = next(it)
      assert not np.isin(b["item_id"][b["is_interaction"]], cold).any()
      rows.append(b["item_id"][~b["is_interaction"]])
    per_process.append(np.concatenate(rows))
  a, b = per_process
  assert len(set(a.tolist()) | set(b.tolist())) == n   # Every item, cold ones too.
  assert not set(a.tolist()) & set(b.tolist())          # Sharded, not repeated.


def test_seeded_and_resumable(config):
  catalog = store.load_catalog(config.data.dir)
  it = iter(_stream(config, catalog, 0.25, seed=5))
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  again = iter(_stream(config, catalog, 0.25, seed=5))
  restored = iter(_stream(config, catalog, 0.25, seed=5))
  restored.set_state(state)
  for want, fresh in zip(expected, [next(again) for _ in range(4)][1:]):
    got = next(restored)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
      np.testing.assert_array_equal(fresh[k], want[k])
  other = next(iter(_stream(config, catalog, 0.25, seed=6)))
  assert not np.array_equal(other["item_id"], next(iter(
      _stream(config, catalog, 0.25, seed=5)))["item_id"])


def test_too_small_a_fraction_is_named(config):
  catalog = store.load_catalog(config.data.dir)
  with pytest.raises(MmjaxError, match="item_ssl_fraction=0.01"):
    _stream(config, catalog, 0.01)
  config.data.item_ssl_fraction = 1.0
  with pytest.raises(MmjaxError, match="item_ssl_fraction"):
    checks.validate(config)


@pytest.fixture(scope="module")
def model_and_batch(data_dir):
  cfg = tiny_config()
  cfg.data.dir = data_dir
  cfg.loss.update(infonce=1.0, siglip=0.1, mlm=0.0, softmax=1.0, bpr=0.1, bce=0.1,
                  co_item=0.1)
  catalog = store.load_catalog(data_dir)
  tok = _tokenizer(cfg)
  shapes = DataShapes.of(catalog, tok, cfg.data.max_text_len)
  batch = next(iter(_stream(cfg, catalog, 0.25)))
  graphdef, params, buffers = nnx.split(build_model(cfg.model, shapes, seed=0),
                                        nnx.Param, ...)
  loss_fn = jax.jit(make_loss_fn(graphdef, cfg.loss))
  def terms(b):
    _, (t, _) = loss_fn(params, buffers, {k: jnp.asarray(v) for k, v in b.items()},
                        None, jnp.int32(0))
    return {k: float(v) for k, v in t.items()}
  return terms, dict(batch), ItemFeatures.build(catalog, tok), catalog


def test_recommendation_terms_ignore_item_only_rows(model_and_batch):
  terms, batch, feats, catalog = model_and_batch
  item_rows = ~batch["is_interaction"]
  base = terms(batch)
  assert set(REC) | {"infonce", "siglip"} <= set(base)

  # Other users with real histories on the item-only rows.
  users = dict(batch, user_id=np.where(item_rows, np.int32(7), batch["user_id"]),
               history=np.where(item_rows[:, None], batch["item_id"][0], batch["history"]))
  moved = terms(users)
  for k in base:
    assert moved[k] == pytest.approx(base[k], rel=1e-6, abs=0), k
  # Counted as interactions, the same change would move them.
  counted = terms(dict(users, is_interaction=np.ones_like(item_rows)))
  assert counted["softmax"] != pytest.approx(terms(dict(
      batch, is_interaction=np.ones_like(item_rows)))["softmax"], rel=1e-4)

  # Other items on the item-only rows: the contrastive terms move, the
  # recommendation terms do not (the rows are no negatives either).
  new = np.where(item_rows, (batch["item_id"] + 11) % catalog.num_items,
                 batch["item_id"]).astype(np.int32)
  rows = np.flatnonzero(item_rows)
  items = dict(batch, item_id=new, tokens=batch["tokens"].copy(),
               mask=batch["mask"].copy(), image=batch["image"].copy())
  items["tokens"][rows], items["mask"][rows] = feats.tokens[new[rows]], feats.mask[new[rows]]
  items["image"][rows] = model_images(feats.images[new[rows]], None)
  swapped = terms(items)
  assert swapped["infonce"] != pytest.approx(base["infonce"], rel=1e-4)
  for k in REC:
    assert swapped[k] == pytest.approx(base[k], rel=1e-6, abs=0), k


def test_all_rows_interactions_is_todays_loss(model_and_batch):
  """A field of all True changes nothing: fraction 0's batches (no field)
  give today's numbers."""
  terms, batch, _, _ = model_and_batch
  with_field = terms(dict(batch, is_interaction=np.ones(len(batch["item_id"]), bool)))
  without = terms({k: v for k, v in batch.items() if k != "is_interaction"})
  assert with_field == without
