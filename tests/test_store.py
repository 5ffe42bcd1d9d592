"""Tests of the TFDS ArrayRecord storage of catalogs."""

import json
import os
import shutil

import grain
import numpy as np
import pytest

from mmjax.data import catalog as catalog_lib
from mmjax.data import image_bytes
from mmjax.data import store
from mmjax.data import store_write
from mmjax.data import synthetic
from mmjax.data import text
from mmjax.errors import MmjaxError

SMALL = synthetic.SyntheticSpec(num_items=120, num_users=60, image_size=16)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  cat = synthetic.generate(SMALL)
  data_dir = str(tmp_path_factory.mktemp("store") / "small")
  store_write.write_catalog(cat, data_dir, tokenizer_vocab=512)
  return cat, data_dir


def test_round_trip(written):
  cat, data_dir = written
  back = store.load_catalog(data_dir)
  assert back.item_text == cat.item_text
  assert np.array_equal(back.item_images, cat.item_images)
  # Row order (i.e. time order) survives TFDS's record shuffling.
  assert np.array_equal(back.interactions, cat.interactions)
  assert np.array_equal(back.split, cat.split)
  for s in range(3):
    assert np.array_equal(back.split_pairs(s), cat.split_pairs(s))
  assert list(back.item_attrs) == list(cat.item_attrs)
  for k, v in cat.item_attrs.items():
    assert np.array_equal(back.item_attrs[k], v)
  assert np.array_equal(back.oracle_scores, cat.oracle_scores)
  assert (back.num_users, back.num_items) == (cat.num_users, cat.num_items)
  # Written again, the stored image files are kept byte for byte.
  again = os.path.join(os.path.dirname(data_dir), "again")
  store_write.write_catalog(back, again, tokenizer_vocab=512)
  assert store.load_catalog(again).item_image_files == back.item_image_files
  shutil.rmtree(again)


def test_layout_and_meta(written):
  cat, data_dir = written
  assert sorted(os.listdir(data_dir)) == [
      "interactions", "items", "meta.json", "oracle_scores.npy",
      "tokenizer.json"]
  meta = store.read_meta(data_dir)
  assert meta["num_users"] == cat.num_users
  assert meta["num_items"] == cat.num_items
  assert meta["image_size"] == SMALL.image_size
  assert meta["attributes"] == list(synthetic.VOCAB)
  assert meta["format_version"] == store.FORMAT_VERSION
  # No temp or backup folders left beside the data dir.
  assert os.listdir(os.path.dirname(data_dir)) == ["small"]


def test_grain_items_source(written):
  cat, data_dir = written
  ds = grain.MapDataset.source(store.open_items(data_dir))
  assert len(ds) == cat.num_items
  for i in (0, 7, len(ds) - 1):
    rec = ds[i]
    item = int(rec["item_id"])
    assert rec["text"].decode() == cat.item_text[item]
    # The stored file decodes to the exact pixels.
    image = image_bytes.decode(rec["image"], 16)
    assert np.array_equal(image, cat.item_images[item])
    for a, v in cat.item_attrs.items():
      assert rec[a] == v[item]


def test_interaction_sources(written):
  cat, data_dir = written
  for s, name in enumerate(catalog_lib.SPLIT_NAMES):
    src = store.open_interactions(data_dir, name)
    pairs = cat.split_pairs(s)
    assert len(src) == len(pairs)
    rec = grain.MapDataset.source(src)[0]
    assert tuple(cat.interactions[rec["row"]]) == (rec["user_id"],
                                                   rec["item_id"])
    assert cat.split[rec["row"]] == s
  with pytest.raises(MmjaxError, match="unknown split"):
    store.open_interactions(data_dir, "eval")


def test_tokenizer_file(written):
  cat, data_dir = written
  tok = text.load_tokenizer(store.tokenizer_path(data_dir))
  assert tok.token_to_id("[PAD]") == 0
  assert tok.token_to_id("[UNK]") not in tok.encode(cat.item_text[0]).ids


def test_missing_dirs(tmp_path):
  with pytest.raises(MmjaxError, match="data dir not found"):
    store.load_catalog(str(tmp_path / "nope"))
  with pytest.raises(MmjaxError, match="not an mmjax data dir"):
    store.load_catalog(str(tmp_path))
  with pytest.raises(MmjaxError, match="not an mmjax data dir"):
    store.open_items(str(tmp_path))


def test_write_is_quiet_and_replaces(tmp_path, capsys):
  cat = synthetic.generate(synthetic.SyntheticSpec(
      num_items=40, num_users=20, interactions_per_user=10, image_size=8))
  data_dir = str(tmp_path / "d")
  store_write.write_catalog(cat, data_dir)
  cat.oracle_scores = None
  cat.item_attrs = None
  store_write.write_catalog(cat, data_dir)
  assert capsys.readouterr().out == ""
  back = store.load_catalog(data_dir)
  assert back.oracle_scores is None and back.item_attrs is None
  assert back.item_text == cat.item_text
  assert os.listdir(tmp_path) == ["d"]
  # A non-empty folder that is not a data dir is never overwritten.
  other = tmp_path / "other"
  other.mkdir()
  (other / "precious.txt").write_text("keep me")
  with pytest.raises(MmjaxError, match="refusing to overwrite"):
    store_write.write_catalog(cat, str(other))
  assert os.listdir(other) == ["precious.txt"]


def test_own_ids_round_trip_in_ids_json(tmp_path):
  """A catalog's own ids (str or int) come back as written; a catalog
  without them writes no ids.json and its ids are the dense ints."""
  cat = synthetic.generate(synthetic.SyntheticSpec(
      num_items=40, num_users=20, interactions_per_user=10, image_size=8))
  store_write.write_catalog(cat, str(tmp_path / "plain"), tokenizer_vocab=128)
  assert "ids.json" not in os.listdir(tmp_path / "plain")
  plain = store.load_catalog(str(tmp_path / "plain"))
  assert plain.user_ids is None and plain.user_map.raws([3, 19]) == [3, 19]
  cat.user_ids = [f"user{u}" for u in range(20)]
  cat.item_ids = [1000 + i for i in range(39)] + ["sku-ea7b6656"]
  store_write.write_catalog(cat, str(tmp_path / "own"), tokenizer_vocab=128)
  back = store.load_catalog(str(tmp_path / "own"))
  assert back.user_ids == cat.user_ids and back.item_ids == cat.item_ids
  assert back.item_map.index("1005") == back.item_map.index(1005) == 5
  assert back.user_map.raw(7) == "user7"


@pytest.mark.parametrize("user_ids, message", [
    (["a"] * 20, r"catalog.user_ids: user id 'a' is given twice \(indices 0 and 1\)"),
    (["a", "b"], "catalog.user_ids: user ids: 2 given for 20 users"),
    ([f"u{u}" for u in range(19)] + [1.5], "user ids must be str or int, got 1.5"),
    ([str(u) for u in range(19)] + [3], "user id 3 is given twice"),
])
def test_bad_own_ids_are_refused(user_ids, message):
  cat = synthetic.generate(synthetic.SyntheticSpec(
      num_items=40, num_users=20, interactions_per_user=10, image_size=8))
  cat.user_ids = user_ids
  with pytest.raises(MmjaxError, match=message):
    cat.validate()


def test_write_rejects_bad_catalog(tmp_path):
  cat = synthetic.generate(synthetic.SyntheticSpec(
      num_items=40, num_users=20, interactions_per_user=10, image_size=8))
  cat.split = cat.split.astype(np.int64)
  with pytest.raises(MmjaxError, match="split"):
    store_write.write_catalog(cat, str(tmp_path / "d"))
  assert not os.path.exists(tmp_path / "d")


def test_ensure_synthetic_caches(tmp_path, monkeypatch):
  spec = synthetic.SyntheticSpec(num_items=40, num_users=20,
                                 interactions_per_user=10, image_size=8)
  monkeypatch.setenv("MMJAX_CACHE", str(tmp_path))
  data_dir = store_write.ensure_synthetic(spec)
  assert os.path.dirname(data_dir) == str(tmp_path)
  meta_file = os.path.join(data_dir, "meta.json")
  mtime = os.stat(meta_file).st_mtime_ns
  with open(meta_file) as f:
    assert json.load(f)["synthetic_spec"]["num_items"] == 40

  def fail(_):
    raise AssertionError("regenerated a cached data set")
  monkeypatch.setattr(synthetic, "generate", fail)
  assert store_write.ensure_synthetic(spec) == data_dir
  assert os.stat(meta_file).st_mtime_ns == mtime
  # Another spec gets another dir (and would have to be generated).
  with pytest.raises(AssertionError, match="regenerated"):
    store_write.ensure_synthetic(synthetic.dataclasses.replace(spec, seed=1))
  monkeypatch.undo()
  other_root = tmp_path / "explicit"
  assert store_write.ensure_synthetic(spec, str(other_root)).startswith(
      str(other_root))
