"""Tests of the synthetic catalog: generator, images, texts, tokenizer."""

import re

import numpy as np
import pytest

from mmjax.data import catalog as catalog_lib
from mmjax.data import render
from mmjax.data import synthetic
from mmjax.data import text
from mmjax.errors import MmjaxError

SMALL = synthetic.SyntheticSpec(num_items=120, num_users=60, seed=3)
PATTERN_WORDS = ("solid", "stripe", "striped", "stripes", "dot", "dots",
                 "dotted", "polka", "check", "checked", "checkered", "plaid",
                 "gradient", "ombre", "pattern", "patterned", "print")


@pytest.fixture(scope="module")
def small():
  return synthetic.generate(SMALL)


def _assert_same(a, b):
  assert a.item_text == b.item_text
  for field in ("item_images", "interactions", "split", "oracle_scores"):
    assert np.array_equal(getattr(a, field), getattr(b, field)), field
  assert a.item_attrs.keys() == b.item_attrs.keys()
  for k in a.item_attrs:
    assert np.array_equal(a.item_attrs[k], b.item_attrs[k]), k


def test_deterministic(small):
  _assert_same(small, synthetic.generate(SMALL))
  other = synthetic.generate(synthetic.SyntheticSpec(
      num_items=120, num_users=60, seed=4))
  assert other.item_text != small.item_text
  assert not np.array_equal(other.item_images, small.item_images)
  assert not np.array_equal(other.interactions, small.interactions)


def test_shapes_dtypes_ranges(small):
  small.validate()
  n, u, s = SMALL.num_items, SMALL.num_users, SMALL.image_size
  assert small.item_images.shape == (n, s, s, 3)
  assert small.item_images.dtype == np.uint8
  assert small.interactions.dtype == np.int32
  assert small.split.dtype == np.int8
  assert small.oracle_scores.shape == (u, n)
  assert small.oracle_scores.dtype == np.float32
  assert list(small.item_attrs) == list(synthetic.VOCAB)
  for name, values in small.item_attrs.items():
    assert values.dtype == np.int32
    assert 0 <= values.min() and values.max() < len(synthetic.VOCAB[name])
  # No user interacts with the same item twice.
  assert len(np.unique(small.interactions, axis=0)) == len(small.interactions)


def test_every_user_has_every_split_in_order(small):
  users = small.interactions[:, 0]
  for split in range(3):
    assert set(users[small.split == split]) == set(range(SMALL.num_users))
  for u in range(SMALL.num_users):
    s = small.split[users == u]
    k, held = len(s), max(1, len(s) // 10)
    assert k >= 10
    # Rows run train, valid, test; the last 10% is test, the 10% before valid.
    assert np.all(np.diff(s) >= 0)
    assert (s == catalog_lib.TEST).sum() == held
    assert (s == catalog_lib.VALID).sum() == held


def test_vocabularies_agree():
  assert tuple(text.SYNONYMS["category"]) == synthetic.VOCAB["category"]
  assert tuple(text.SYNONYMS["colour"]) == synthetic.VOCAB["colour"]
  assert set(synthetic.IMAGE_ATTRS) | set(synthetic.TEXT_ATTRS) == set(
      synthetic.VOCAB)
  assert "pattern" not in synthetic.TEXT_ATTRS


@pytest.mark.parametrize("size", [16, 64])
def test_render_other_sizes(size):
  imgs = render.render_items([0, 5], [1, 2], [0, 1], size,
                             np.random.default_rng(0))
  assert imgs.shape == (2, size, size, 3) and imgs.dtype == np.uint8


def _rendered(n=480):
  rng = np.random.default_rng(0)
  attrs = [rng.integers(0, k, n) for k in (6, 8, 5)]
  imgs, masks = render.render_items(*attrs, 32, np.random.default_rng(1),
                                    return_masks=True)
  return attrs, imgs, masks


def test_images_show_colour():
  (_, colour, pattern), imgs, masks = _rendered()
  mean = np.stack([im[m].mean(0) / 255 for im, m in zip(imgs, masks)])
  palette = np.array(list(render.PALETTE.values()))
  nearest = np.argmin(((mean[:, None] - palette[None]) ** 2).sum(-1), 1)
  solid = pattern == 0
  assert (nearest == colour)[solid].mean() > 0.95
  # With patterns, a nearest-centroid classifier still recovers the colour.
  half = len(colour) // 2
  centroids = np.stack(
      [mean[:half][colour[:half] == c].mean(0) for c in range(len(palette))])
  pred = np.argmin(((mean[half:, None] - centroids[None]) ** 2).sum(-1), 1)
  assert (pred == colour[half:]).mean() > 0.9


def test_images_show_category():
  (category, _, _), _, masks = _rendered()
  flat = masks.reshape(len(masks), -1).astype(np.float32)
  half = len(category) // 2
  centroids = np.stack(
      [flat[:half][category[:half] == c].mean(0) for c in range(6)])
  pred = np.argmin(((flat[half:, None] - centroids[None]) ** 2).sum(-1), 1)
  assert (pred == category[half:]).mean() > 0.5  # chance: 1/6
  # Items fill a fair part of the image but not all of it.
  assert 0.08 < masks.mean() < 0.4


def _mentions(desc, phrases):
  return any(re.search(rf"\b{re.escape(p)}\b", desc) for p in phrases)


def test_text_names_text_attrs_but_not_pattern(small):
  for i, desc in enumerate(small.item_text):
    assert desc.isascii() and desc == desc.lower()
    for a in synthetic.TEXT_ATTRS:
      own = synthetic.VOCAB[a][small.item_attrs[a][i]]
      assert _mentions(desc, text.SYNONYMS[a][own]), (a, desc)
      others = [s for v, syns in text.SYNONYMS[a].items() if v != own
                for s in syns]
      assert not _mentions(desc, others), (a, desc)
    assert not _mentions(desc, PATTERN_WORDS + synthetic.VOCAB["pattern"])
  assert len(set(small.item_text)) > 0.9 * len(small.item_text)


def _recall_at(cat, scores, k=20):
  """Mean over users of |top-k & test| / |test|, train items masked."""
  scores = np.array(np.broadcast_to(scores, cat.oracle_scores.shape),
                    np.float64)
  train, test = cat.split_pairs(catalog_lib.TRAIN), cat.split_pairs(
      catalog_lib.TEST)
  scores[train[:, 0], train[:, 1]] = -np.inf
  is_test = np.zeros(scores.shape, bool)
  is_test[test[:, 0], test[:, 1]] = True
  top = np.argpartition(-scores, k, axis=1)[:, :k]
  hits = np.take_along_axis(is_test, top, axis=1).sum(1)
  return float((hits / is_test.sum(1)).mean())


def test_oracle_beats_popularity():
  cat = synthetic.generate(synthetic.SyntheticSpec())
  jitter = np.random.default_rng(0).random(cat.num_items) * 1e-3  # Ties.
  oracle = _recall_at(cat, cat.oracle_scores)
  popularity = _recall_at(cat, cat.item_popularity() + jitter)
  rand = _recall_at(cat, jitter)
  print(f"recall@20 oracle {oracle:.4f} popularity {popularity:.4f} "
        f"random {rand:.4f}")
  assert oracle >= 4 * popularity
  assert popularity >= 2 * rand


@pytest.mark.parametrize("field,value", [
    ("num_items", 10), ("num_users", 0), ("image_size", 4),
    ("interactions_per_user", 2), ("seed", 1.5)])
def test_bad_spec(field, value):
  spec = synthetic.SyntheticSpec(num_items=120, num_users=60)
  with pytest.raises(MmjaxError, match=field):
    synthetic.generate(synthetic.dataclasses.replace(spec, **{field: value}))


def test_catalog_helpers(small):
  pop = small.item_popularity()
  assert pop.shape == (SMALL.num_items,) and pop.dtype == np.int64
  assert pop.sum() == (small.split == catalog_lib.TRAIN).sum()
  hist = small.user_histories(catalog_lib.TRAIN)
  assert len(hist) == SMALL.num_users
  assert sum(len(h) for h in hist) == pop.sum()
  u0 = small.interactions[(small.interactions[:, 0] == 0)
                          & (small.split == catalog_lib.TRAIN), 1]
  assert np.array_equal(hist[0], u0)
  padded = small.user_histories(catalog_lib.TRAIN, max_len=5)
  assert padded.shape == (SMALL.num_users, 5)
  assert np.array_equal(padded[0], u0[-5:])  # Most recent 5.
  num_test = len(small.user_histories(catalog_lib.TEST)[0])
  long = small.user_histories(catalog_lib.TEST, max_len=50)
  assert (long[0] == -1).sum() == 50 - num_test


@pytest.mark.parametrize("field,mutate", [
    ("item_text", lambda c: c.item_text.pop()),
    ("item_images", lambda c: setattr(c, "item_images",
                                      c.item_images.astype(np.float32))),
    ("interactions", lambda c: c.interactions.__setitem__((0, 1), 10_000)),
    ("split", lambda c: c.split.__setitem__(0, 7)),
    ("item_attrs", lambda c: c.item_attrs.__setitem__(
        "colour", c.item_attrs["colour"][:3])),
    ("oracle_scores", lambda c: setattr(c, "oracle_scores",
                                        c.oracle_scores[:, :5])),
])
def test_validate_names_field(field, mutate):
  cat = synthetic.generate(SMALL)
  mutate(cat)
  with pytest.raises(MmjaxError, match=field):
    cat.validate()


def test_the_same_texts_train_the_same_tokenizer():
  # Many tied merge counts: the library's trainer alone gives a new vocabulary nearly every time.
  rng = np.random.default_rng(0)
  words = ("shirt red blue cotton dress linen wool jacket soft warm summer winter light dark "
           "green striped casual formal").split()
  texts = [" ".join(rng.choice(words, 8)) for _ in range(500)]
  assert len({text.train_wordpiece(texts, 96).to_str() for _ in range(4)}) == 1


def test_tokenizer(small, tmp_path):
  tok = text.train_wordpiece(small.item_text, vocab_size=1024)
  assert tok.token_to_id("[PAD]") == 0
  unk = tok.token_to_id("[UNK]")
  enc = tok.encode(small.item_text[0])
  assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
  assert unk not in enc.ids
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  loaded = text.load_tokenizer(path)
  for desc in small.item_text[:10]:
    assert loaded.encode(desc).ids == tok.encode(desc).ids
  with pytest.raises(MmjaxError, match="tokenizer file not found"):
    text.load_tokenizer(tmp_path / "missing.json")
