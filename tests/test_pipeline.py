"""The grain pipeline over the TFDS ArrayRecord catalog."""

import numpy as np

from mmjax.data import store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import TextTokenizer
from mmjax.data.pipeline import ItemFeatures, train_dataset


def _dataset(data_dir, cfg, **kw):
  catalog = store.load_catalog(data_dir)
  return catalog, train_dataset(data_dir, catalog, cfg.data, batch_size=8,
                                seed=cfg.seed, **kw)


def test_batches_have_the_model_inputs(config, data_dir):
  catalog, ds = _dataset(data_dir, config)
  b = next(iter(ds))
  L, H, S = config.data.max_text_len, config.data.history_len, 16
  assert b["tokens"].shape == (8, L) and b["tokens"].dtype == np.int32
  assert b["mask"].shape == (8, L) and b["mlm_tokens"].shape == (8, L)
  assert b["image"].shape == (8, S, S, 3) and b["image"].dtype == np.float32
  assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  assert b["history"].shape == (8, H)
  P = config.data.mlm_max_predictions
  assert b["mlm_positions"].shape == b["mlm_labels"].shape == (8, P)
  assert b["log_q"].shape == (8,) and np.all(b["log_q"] < 0)
  # The joined text is the item's own description.
  tok = b["tokens"][0][b["mask"][0] == 1]
  assert len(tok) >= 3 and tok[0] != tok[1]


def test_co_items_are_other_train_items_of_the_same_user(config, data_dir):
  catalog, ds = _dataset(data_dir, config, co_items=True)
  train = catalog.user_histories(TRAIN)
  items = ItemFeatures.build(catalog, TextTokenizer(store.tokenizer_path(data_dir),
                                                    config.data.max_text_len))
  it, seen = iter(ds), set()
  for _ in range(20):
    b = next(it)
    for row, (u, i, co) in enumerate(zip(b["user_id"], b["item_id"], b["co_item_id"])):
      others = set(train[u]) - {i}
      if not others:
        assert co == -1
        continue
      assert co in others
      seen.add((int(u), int(co)))
      np.testing.assert_array_equal(b["co_tokens"][row], items.tokens[co])
      np.testing.assert_array_equal(b["co_mask"][row], items.mask[co])
    assert b["co_image"].shape == b["image"].shape
  assert len(seen) > 100     # Drawn at random, not always the same item.
  # Without the option the batch has no co-item inputs.
  assert "co_item_id" not in next(iter(_dataset(data_dir, config)[1]))


def test_stream_is_seeded_and_resumable(config, data_dir):
  _, ds = _dataset(data_dir, config)
  it = iter(ds)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(_dataset(data_dir, config)[1])
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_process_shards_cover_each_train_interaction_once_per_epoch(config, data_dir):
  catalog = store.load_catalog(data_dir)
  train = {tuple(p) for p in catalog.interactions[catalog.split == 0]}
  per_process = len(train) // 2 // 8   # Full batches in one epoch, per process.
  seen = []
  for p in range(2):
    it = iter(train_dataset(data_dir, catalog, config.data, batch_size=16,
                            seed=3, process_index=p, process_count=2))
    for _ in range(per_process):
      b = next(it)
      seen += list(zip(b["user_id"].tolist(), b["item_id"].tolist()))
  assert len(seen) == len(set(seen))   # No repeats within the epoch.
  assert set(seen) <= train
  assert len(seen) >= len(train) - 2 * 8
