"""Per-batch feature transforms: BERT masking, augmentation, history sampling."""

import numpy as np

from mmjax.data import store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import TextTokenizer, augment_images, mask_tokens


def test_mask_tokens(data_dir):
  tok = TextTokenizer(store.tokenizer_path(data_dir), 16)
  ids, attn = tok.encode_all(["a red cotton shirt for every day"] * 64)
  rng = np.random.default_rng(0)
  out, pos, labels = mask_tokens(ids, attn, tok, 0.3, 4, rng)
  assert pos.shape == labels.shape == (64, 4)
  used = labels >= 0
  assert used.any() and (~used).any()
  rows = np.nonzero(used)[0]
  # Labels are the original tokens at real, non-special positions.
  np.testing.assert_array_equal(labels[used], ids[rows, pos[used]])
  assert not np.isin(labels[used], tok.special_ids).any()
  assert np.all(attn[rows, pos[used]] == 1)
  # Most chosen positions became [MASK]; unchosen positions are untouched.
  changed = out != ids
  assert (out[rows, pos[used]] == tok.mask_id).mean() > 0.6
  chosen = np.zeros_like(changed)
  chosen[rows, pos[used]] = True
  assert not (changed & ~chosen).any()
  # Same rng seed -> same masks.
  again = mask_tokens(ids, attn, tok, 0.3, 4, np.random.default_rng(0))
  np.testing.assert_array_equal(again[0], out)


def test_augment_images_shifts_within_bounds():
  rng = np.random.default_rng(0)
  imgs = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
  out = augment_images(imgs, rng)
  assert out.shape == imgs.shape and out.dtype == np.float32
  assert out.min() >= -1 and out.max() <= 1
  assert not np.allclose(out, imgs)


def test_history_never_contains_the_target(config, data_dir):
  from mmjax.data.pipeline import train_dataset
  catalog = store.load_catalog(data_dir)
  train = catalog.user_histories(TRAIN)
  b = next(iter(train_dataset(data_dir, catalog, config.data, batch_size=16, seed=0)))
  for u, i, h in zip(b["user_id"], b["item_id"], b["history"]):
    real = h[h >= 0]
    assert i not in real
    assert set(real) <= set(train[u])
    assert len(real) == min(config.data.history_len, len(set(train[u]) - {i}))
    assert np.all(h[len(real):] == -1)   # Padding only at the end.
