"""Raw-folder ingestion: tables + image files -> a cached mmjax data dir."""

import csv
import io
import json
import os
import shutil

import grain
import numpy as np
import pytest
from PIL import Image

from mmjax import config as config_lib
from mmjax.data import clothing, image_bytes, raw, store
from mmjax.errors import MmjaxError

CLOTHING = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                        "clothing")
COLOURS = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200),
           "d": (200, 200, 30), "e": (30, 200, 200), "f": (200, 30, 200)}
LONG_TEXT = " ".join(["very long description"] * 10)
ITEMS = [  # item_id, text, image file
    ("a", "red wide shirt", "a.png"), ("b", "green tall dress", "b.jpg"),
    ("c", "blue hat", "c.png"), ("d", "yellow bag", "d.png"),
    ("e", "cyan scarf", "e.png"), ("f", LONG_TEXT, "f.png"),
    ("g", "corrupt file", "g.jpg"), ("h", "missing file", "h.png")]
# In time order; g (corrupt) and h (missing) drop out with their items.
INTERACTIONS = [("u1", i) for i in "abcd"] + [("u2", i) for i in "efag"] + [
    ("u3", i) for i in "bhce"] + [("u4", i) for i in "fa"]


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([header, *rows])


def make_folder(root):
  """A raw folder: 6 good images (one wide, one tall JPEG), a truncated JPEG
  and a missing file."""
  os.makedirs(os.path.join(root, "images"))
  for item, colour in COLOURS.items():
    size = {"a": (24, 12), "b": (12, 24)}.get(item, (16, 16))
    ext = "jpg" if item == "b" else "png"
    Image.new("RGB", size, colour).save(
        os.path.join(root, "images", f"{item}.{ext}"))
  jpeg = io.BytesIO()
  Image.effect_noise((32, 32), 50).convert("RGB").save(jpeg, "JPEG")
  with open(os.path.join(root, "images", "g.jpg"), "wb") as f:
    f.write(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])   # Truncated.
  _write_csv(os.path.join(root, "items.csv"), ["item_id", "text", "image"], ITEMS)
  _write_csv(os.path.join(root, "interactions.csv"), ["user_id", "item_id"],
             INTERACTIONS)
  return root


def data_config(root, cache):
  from tiny import tiny_config
  c = tiny_config()
  c.data.name = "raw"
  c.data.synthetic.update(config_lib.default_config().data.synthetic)  # Unread.
  c.data.cache_dir = str(cache)
  c.data.raw.update(root=str(root), image_root="images", image_size=16,
                    tokenizer_vocab=200)
  return c


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return make_folder(str(tmp_path_factory.mktemp("raw") / "shop"))


@pytest.fixture(scope="module")
def ingested(folder, tmp_path_factory):
  cfg = data_config(folder, tmp_path_factory.mktemp("cache"))
  lines = []
  data_dir = raw.ensure_ingested(cfg.data, log=lines.append)
  return cfg, data_dir, lines


def test_round_trip_through_tfds_and_grain(ingested):
  _, data_dir, _ = ingested
  records = list(grain.MapDataset.source(store.open_items(data_dir)))
  by_id = {int(r["item_id"]): r for r in records}
  assert sorted(by_id) == list(range(6))   # g and h are skipped.
  for k, (item, text, _) in enumerate(ITEMS[:6]):
    assert by_id[k]["text"].decode() == text
    image = image_bytes.decode(by_id[k]["image"], 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    tol = 8 if item == "b" else 0   # JPEG is lossy.
    centre = image[6:10, 6:10].reshape(-1, 3)
    assert np.abs(centre.astype(int) - COLOURS[item]).max() <= tol
  # Wide a: 16x8 centred, grey bands above and below; tall b: left and right.
  a, b = (image_bytes.decode(by_id[k]["image"], 16) for k in (0, 1))
  assert (a[:4] == 128).all() and (a[12:] == 128).all()
  assert (a[4:12] == COLOURS["a"]).all()
  assert (b[:, :4] == 128).all() and (b[:, 12:] == 128).all()

  cat = store.load_catalog(data_dir)
  assert cat.num_items == 6 and cat.num_users == 4
  assert cat.oracle_scores is None and cat.item_attrs is None
  ids = {c: i for i, c in enumerate("abcdef")}
  users = {u: i for i, u in enumerate(["u1", "u2", "u3", "u4"])}
  kept = [(users[u], ids[i]) for u, i in INTERACTIONS if i in ids]
  assert cat.interactions.tolist() == [list(p) for p in kept]
  # Per user, the last kept row is test, the one before valid; u4 has 2: train.
  assert cat.split.tolist() == [0, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0]
  # The tables' own ids, in dense order; the skipped items g and h are gone.
  assert cat.item_ids == list("abcdef")
  assert cat.user_ids == ["u1", "u2", "u3", "u4"]


def test_the_data_dir_keeps_the_files_or_downscales_them(ingested, folder,
                                                         tmp_path):
  _, data_dir, _ = ingested
  files = store.load_catalog(data_dir).item_image_files
  for k, (_, _, name) in enumerate(ITEMS[:6]):
    with open(os.path.join(folder, "images", name), "rb") as f:
      assert files[k] == f.read()   # At its original size, as it was.
  cfg = data_config(folder, tmp_path)
  cfg.data.raw.max_stored_side = 12
  small = store.load_catalog(raw.ensure_ingested(cfg.data, log=lambda _: None))
  stored = [Image.open(io.BytesIO(f)) for f in small.item_image_files]
  # Wide a and tall b are downscaled to a longest side of 12, b still a
  # JPEG; the 16 px squares to 12; the model's images stay 16 px.
  assert [(im.format, im.size) for im in stored[:3]] == [
      ("PNG", (12, 6)), ("JPEG", (6, 12)), ("PNG", (12, 12))]
  assert small.item_images.shape == (6, 16, 16, 3)
  centre = small.item_images[:, 6:10, 6:10].reshape(6, -1, 3).astype(int)
  for k, item in enumerate("abcdef"):
    assert np.abs(centre[k] - COLOURS[item]).max() <= 8


def test_summary_lines_count_skips_and_truncation(ingested):
  cfg, data_dir, lines = ingested
  assert lines[0] == ("images: 6 read, 1 missing, 1 corrupt "
                      "(skipped; e.g. g.jpg, h.png)")
  assert ("6/3/3 train/valid/test interactions (per-user split), "
          "2 dropped with skipped images") in lines[1]
  # tiny_config's max_text_len=16 truncates only the long text of f.
  assert "text: 1 of 6 truncated to max_text_len=16 tokens" in lines[1]
  meta = store.read_meta(data_dir)
  assert meta["raw"]["images"]["missing"] == 1
  assert meta["raw"]["images"]["corrupt"] == 1


def test_second_run_reuses_the_cache(ingested, monkeypatch):
  cfg, data_dir, _ = ingested
  monkeypatch.setattr(raw, "build_catalog", _must_not_run)
  lines = []
  assert raw.ensure_ingested(cfg.data, log=lines.append) == data_dir
  assert lines[0].endswith("[cached]")
  # Any ingestion option is part of the key.
  monkeypatch.undo()
  cfg = cfg.copy_and_resolve_references()
  cfg.data.raw.image_size = 8
  other = raw.ensure_ingested(cfg.data, log=lambda _: None)
  assert other != data_dir
  assert store.load_catalog(other).item_images.shape[1:] == (8, 8, 3)


def _must_not_run(*_):
  raise AssertionError("re-ingested a cached folder")


def test_split_column_is_used_when_present(folder, tmp_path):
  root = shutil.copytree(folder, tmp_path / "split")
  rows = [(u, i, "test" if k % 3 == 2 else str(k % 3))
          for k, (u, i) in enumerate(INTERACTIONS)]
  _write_csv(root / "interactions.csv", ["user_id", "item_id", "split"], rows)
  cfg = data_config(root, tmp_path / "cache")
  cat = store.load_catalog(raw.ensure_ingested(cfg.data, log=lambda _: None))
  want = [k % 3 for k, (_, i) in enumerate(INTERACTIONS) if i not in "gh"]
  assert cat.split.tolist() == want


def _edit(folder, tmp_path, file, edit):
  """A copy of the folder whose table `file` has its rows changed by edit."""
  root = shutil.copytree(folder, tmp_path / "edited")
  with open(root / file, newline="") as f:
    header, *rows = list(csv.reader(f))
  header, rows = edit(header, rows)
  _write_csv(root / file, header, rows)
  return root


@pytest.mark.parametrize("file, edit, message", [
    ("items.csv", lambda h, r: (["id", *h[1:]], r),
     r"items.csv: no column 'item_id' \(config.data.raw.columns.item_id\)"),
    ("items.csv", lambda h, r: (h, r[:2] + [["c", " ", "c.png"]] + r[3:]),
     r"items.csv:4: column 'text' is empty"),
    ("items.csv", lambda h, r: (h, r + [["a", "again", "a.png"]]),
     r"items.csv:10: duplicate item id 'a' \(first at .*items.csv:2\)"),
    ("interactions.csv", lambda h, r: (h, r[:5] + [["u2", "zz"]] + r[5:]),
     r"interactions.csv:7: item 'zz' is not in the items table .*items.csv"),
    ("interactions.csv", lambda h, r: (h, [["u1", "a"], ["u2", "b"]]),
     r"interactions.csv: the per-user split \(users need >= 3 interactions\) "
     r"leaves no valid/test interactions"),
    ("interactions.csv", lambda h, r: (h + ["split"], [x + ["dev"] for x in r]),
     r"interactions.csv:2: split 'dev' is not one of train/valid/test"),
])
def test_table_errors_name_file_column_line(folder, tmp_path, file, edit, message):
  cfg = data_config(_edit(folder, tmp_path, file, edit), tmp_path / "cache")
  with pytest.raises(MmjaxError, match=message):
    raw.ensure_ingested(cfg.data, log=lambda _: None)


def test_missing_files_and_dirs(folder, tmp_path):
  cfg = data_config(folder, tmp_path / "cache")
  cfg.data.raw.items_file = "nope.csv"
  with pytest.raises(MmjaxError, match=r"config.data.raw.items_file: file not "
                     r"found: .*nope.csv"):
    raw.ensure_ingested(cfg.data)
  cfg.data.raw.root = str(tmp_path / "absent")
  with pytest.raises(MmjaxError, match=r"config.data.raw.root: data dir not "
                     r"found: .*absent"):
    raw.ensure_ingested(cfg.data)
  cfg.data.raw.root = ""
  with pytest.raises(MmjaxError, match=r"config.data.raw.root is required"):
    raw.ensure_ingested(cfg.data)


def test_config_validation(folder, tmp_path):
  cfg = data_config(folder, tmp_path)
  config_lib.validate(cfg)
  cfg.data.raw.image_size = 20   # Not a multiple of the ViT patch (8).
  with pytest.raises(MmjaxError, match="must divide the image size 20"):
    config_lib.validate(cfg)
  cfg.data.raw.image_size = 16
  cfg.data.raw.test_fraction = 0.95
  with pytest.raises(MmjaxError, match="valid_fraction and test_fraction"):
    config_lib.validate(cfg)


def test_per_user_split_fractions():
  users = np.repeat(np.arange(3), [10, 2, 20]).astype(np.int32)
  split = raw.per_user_split(users, 0.1, 0.2)
  assert split[:10].tolist() == [0] * 7 + [1] + [2] * 2
  assert split[10:12].tolist() == [0, 0]
  assert np.bincount(split[12:]).tolist() == [14, 2, 4]
  assert split[-4:].tolist() == [2] * 4


def make_shop(root, num_items=60, num_users=10, per_user=8, seed=0):
  """A raw folder big enough to rank top-50: random colours and pairs."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "images"))
  for i in range(num_items):
    Image.new("RGB", (16, 16), tuple(int(v) for v in rng.integers(0, 256, 3))
              ).save(os.path.join(root, "images", f"{i}.png"))
  _write_csv(os.path.join(root, "items.csv"), ["item_id", "text", "image"],
             [(f"p{i}", f"item {i % 7} colour {i % 5}", f"{i}.png")
              for i in range(num_items)])
  _write_csv(os.path.join(root, "interactions.csv"), ["user_id", "item_id"],
             [(f"u{u}", f"p{i}") for u in range(num_users)
              for i in rng.choice(num_items, per_user, replace=False)])
  return root


@pytest.mark.slow  # One train-step and eval compile: ~40 s on 2 busy cores.
def test_train_and_evaluate_on_an_ingested_folder(tmp_path):
  from mmjax.run import train_and_evaluate
  cfg = data_config(make_shop(str(tmp_path / "shop")), tmp_path / "cache")
  cfg.train.update(steps=2, batch_size=8, log_every=1, checkpoint_every=100)
  # This test is about the data, not the losses: fewer terms, faster compile.
  cfg.loss.update(siglip=0.0, bpr=0.0, bce=0.0, mmd=0.0, coral=0.0)
  lines = []
  summary = train_and_evaluate(cfg, str(tmp_path / "run"), log=lines.append)
  assert lines[0] == "images: 60 read, 0 missing, 0 corrupt (skipped)"
  assert summary["data"]["num_items"] == 60
  assert summary["data"]["num_users"] == 10
  assert "oracle" not in summary and "popularity" in summary
  assert set(summary["ratios"]) <= {"test_recall@20_vs_popularity"}
  assert 0.0 <= summary["test"]["recall@20"] <= 1.0
  assert summary["retrieval"]["chance_r@1"] == pytest.approx(1 / 60)
  on_disk = json.load(open(tmp_path / "run" / "summary.json"))
  assert on_disk["config"]["data"]["raw"]["root"] == cfg.data.raw.root


def test_clothing_caption():
  assert clothing.caption("T-Shirt", False) == "a photo of a t-shirt"
  assert clothing.caption("Outwear", True) == "a photo of an outwear for kids"
  assert clothing.caption("Pants", False) == "a photo of pants"
  assert clothing.caption("Not sure", False) == "a photo of a piece of clothing"


@pytest.mark.skipif(not os.path.isdir(CLOTHING),
                    reason="needs ../shared/data/clothing (real photos)")
def test_clothing_subset_ingests(tmp_path):
  """The first 300 rows plus the 5 rows without an image, from the real set."""
  with open(os.path.join(CLOTHING, "images.csv"), newline="") as f:
    header, *rows = list(csv.reader(f))
  images = os.path.join(os.path.abspath(CLOTHING), "images")
  missing = [r for r in rows if not os.path.exists(
      os.path.join(images, r[0] + ".jpg"))]
  assert len(missing) == 5
  subset = rows[:300] + [r for r in missing if r not in rows[:300]]
  os.makedirs(tmp_path / "clothing")
  _write_csv(tmp_path / "clothing" / "images.csv", header, subset)
  cfg = data_config(tmp_path / "clothing", tmp_path / "cache")
  cfg.data.raw.update(adapter="clothing", items_file="images.csv",
                      image_root=images, image_size=32)
  lines = []
  cat = store.load_catalog(raw.ensure_ingested(cfg.data, log=lines.append))
  read = len(subset) - 5
  assert lines[0].startswith(f"images: {read} read, 5 missing, 0 corrupt")
  assert cat.num_items == read and cat.item_images.shape[1:] == (32, 32, 3)
  assert cat.item_text[1] == clothing.caption(subset[1][2], subset[1][3] == "True")
  assert cat.item_images.std() > 20   # Real photos, not padding.
