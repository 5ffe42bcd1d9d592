"""Paths from data and model files stay inside their folder; images are
opened only in the listed formats and under the pixel cap."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from mmjax.config import checks
from mmjax.config.schema import KEYS
from mmjax.data import image_files, raw, safe_paths
from mmjax.errors import MmjaxError

from raw_fixtures import GOOD, ingest, png, raw_cfg, write_folder, write_lines

SECRET = (7, 222, 99)   # The outside file's colour: must never reach a catalog.


@pytest.fixture()
def tree(tmp_path):
  """tmp/outside/secret.png (a valid PNG) next to tmp/data/shop, a raw
  folder whose images/ holds four good PNGs and a symlink to the secret."""
  png(str(tmp_path / "outside" / "secret.png"), SECRET)
  shop = tmp_path / "data" / "shop"
  for item, colour in GOOD.items():
    png(str(shop / "images" / f"{item}.png"), colour)
  os.symlink(tmp_path / "outside" / "secret.png", shop / "images" / "link.png")
  return tmp_path, shop


def _has_secret(catalog) -> bool:
  centre = catalog.item_images[:, 4, 4].astype(int)
  return bool((np.abs(centre - SECRET).sum(axis=1) < 30).any())


# ------------------------------------------------------------ safe_paths


def test_inside_refuses_escapes_and_keeps_inside_paths(tree):
  tmp, shop = tree
  root = str(shop / "images")
  assert safe_paths.inside(root, "a.png") == os.path.realpath(f"{root}/a.png")
  assert safe_paths.inside(root, "x/../b.png") == os.path.realpath(f"{root}/b.png")
  for path in ("../../../outside/secret.png", "/etc/passwd", "link.png",
               str(tmp / "outside" / "secret.png"), "", "a\0.png"):
    assert safe_paths.inside(root, path) is None, path
  # An absolute path only inside an explicitly allowed root.
  outside = str(tmp / "outside")
  want = os.path.join(os.path.realpath(outside), "secret.png")
  assert safe_paths.inside(root, f"{outside}/secret.png",
                           absolute_root=outside) == want
  assert safe_paths.inside(root, "/etc/passwd", absolute_root=outside) is None


def test_a_textual_escape_never_touches_the_disk(tree, monkeypatch):
  tmp, shop = tree
  asked = []
  for name in ("lstat", "stat"):
    real = getattr(os, name)
    monkeypatch.setattr(os, name, lambda p, *a, _f=real, **k: (
        asked.append(os.fspath(p)), _f(p, *a, **k))[1])
  assert safe_paths.inside(str(shop / "images"), "../../../outside/secret.png") is None
  assert safe_paths.inside(str(shop / "images"), "/etc/passwd") is None
  assert not [p for p in asked if "outside" in p or p.startswith("/etc")]


# ------------------------------------------------------------ ingestion


def test_escaping_image_paths_are_refused_and_never_read(tree):
  tmp, shop = tree
  write_folder(shop, [("e", "../../../outside/secret.png"), ("f", "/etc/passwd"),
                 ("g", "link.png"), ("h", str(tmp / "outside" / "secret.png"))])
  catalog, report = ingest(shop)
  assert catalog.num_items == 4 and not _has_secret(catalog)
  im = report["images"]
  assert (im["refused"], im["missing"], im["corrupt"]) == (4, 0, 0)
  assert report["interactions_dropped"] == 4
  meta = dict(raw=dict(report, text_token_lengths={"3": 4}),
              num_interactions=dict(train=4, valid=2, test=2), num_items=4,
              num_users=2)
  assert "4 refused (outside the data folder)" in raw.summary_lines(meta, 8)[0]


def test_a_refusal_does_not_tell_whether_the_outside_file_exists(tree):
  tmp, shop = tree
  write_folder(shop, [("e", "../../../outside/secret.png")])
  _, there = ingest(shop)
  write_folder(shop, [("e", "../../../outside/no_such_file.png")])
  _, absent = ingest(shop)
  assert there["images"] == dict(absent["images"],
                                 first_skipped=there["images"]["first_skipped"])
  assert there["images"]["refused"] == 1 and there["images"]["missing"] == 0


def test_absolute_paths_are_read_inside_the_allowed_root(tree):
  tmp, shop = tree
  write_folder(shop, [("h", str(tmp / "outside" / "secret.png"))])
  catalog, report = ingest(shop, absolute_image_root=str(tmp / "outside"))
  assert report["images"]["refused"] == 0 and _has_secret(catalog)


def test_cache_key_never_stats_a_refused_path(tree, monkeypatch):
  tmp, shop = tree
  write_folder(shop, [("g", "link.png")])
  cfg = raw_cfg(shop)
  src = raw.read_source(cfg)
  asked = []
  real = os.stat
  monkeypatch.setattr(os, "stat", lambda p, *a, **k: (
      asked.append(os.fspath(p)), real(p, *a, **k))[1])
  raw.cache_key(src, cfg)
  assert not [p for p in asked if "outside" in p or "link" in p]


# ------------------------------------------------------------ images


def test_a_png_named_jpg_is_opened_only_if_png_is_listed(tree):
  tmp, shop = tree
  for item, colour in GOOD.items():   # a-c real JPEGs, d a PNG named .jpg.
    Image.new("RGB", (16, 16), colour).save(
        shop / "images" / f"{item}.jpg", "PNG" if item == "d" else "JPEG")
  write_folder(shop, [])
  write_lines(shop / "items.csv", ["item_id,text,image"] + [
      f"{i},item {i},{i}.jpg" for i in GOOD])
  catalog, report = ingest(shop, image_formats=("JPEG",))
  assert report["images"]["unsupported"] == 1 and catalog.num_items == 3
  catalog, report = ingest(shop, image_formats=("JPEG", "PNG"))
  assert report["images"]["unsupported"] == 0 and catalog.num_items == 4


def test_images_over_the_pixel_cap_are_too_large_and_not_decoded(tree, monkeypatch):
  tmp, shop = tree
  png(str(shop / "images" / "big.png"), (1, 2, 3), size=(40, 40))
  write_folder(shop, [("big", "big.png")])
  decoded = []
  real_load = Image.Image.load
  monkeypatch.setattr(Image.Image, "load", lambda self: (
      decoded.append(self.size), real_load(self))[1])
  catalog, report = ingest(shop, max_image_pixels=40 * 40 - 1)
  assert report["images"]["too_large"] == 1 and catalog.num_items == 4
  assert (40, 40) not in decoded
  _, report = ingest(shop, max_image_pixels=40 * 40)
  assert report["images"]["too_large"] == 0


def test_pil_bomb_checks_never_escape(tree, monkeypatch):
  tmp, shop = tree
  path = str(shop / "images" / "a.png")   # 16 x 16 = 256 pixels.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # 256 > 2 * 100: error.
  assert image_files.load_image(path, 8, max_pixels=10**6)[0] == image_files.TOO_LARGE
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)   # Only a warning.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = image_files.load_images([path], 8, max_pixels=10**6)
  assert loaded.status == [image_files.OK]
  assert not [w for w in caught
              if issubclass(w.category, Image.DecompressionBombWarning)]


def test_image_formats_key_takes_only_known_formats():
  key = next(k for k in KEYS if k.path == "data.raw.image_formats")
  assert set(key.choices) == set(image_files.KNOWN_FORMATS)
  checks.check_value(key, ("JPEG", "WEBP"))
  with pytest.raises(MmjaxError, match="choose each one of"):
    checks.check_value(key, ("JPEG", "PSD"))


# ------------------------------------------------------------ mmjax features


def test_features_image_root_refuses_escapes(tree):
  from hf_fixtures import save_tiny_vit
  from mmjax.feature_extraction import ImageLoader
  tmp, shop = tree
  vit = save_tiny_vit(tmp / "vit")
  paths = ["a.png", "../../../outside/secret.png", "/etc/passwd", "link.png",
           "missing.png"]
  loader = ImageLoader(paths, str(shop / "images"), vit)
  pixels, ok = loader(np.arange(len(paths)))
  assert ok.tolist() == [True, False, False, False, False]
  assert loader.skipped == {1: "refused", 2: "refused", 3: "refused",
                            4: "missing"}


# ------------------------------------------------------------ HF index


def test_hf_index_weight_map_outside_the_folder_is_refused(tmp_path):
  from mmjax.models.encoders import hf_import
  model = tmp_path / "model"
  model.mkdir()
  for target in ("../outside.safetensors", "/etc/passwd"):
    with open(model / "model.safetensors.index.json", "w") as f:
      json.dump({"weight_map": {"w": target}}, f)
    with pytest.raises(MmjaxError, match=r"leaves the folder .*; refused"):
      hf_import.read_state_dict(str(model))


def test_api_image_paths_get_the_same_format_check(tmp_path):
  from mmjax import api
  Image.new("RGB", (8, 8)).save(tmp_path / "x.gif")
  with pytest.raises(MmjaxError, match="x.gif: unsupported"):
    api._image_batch([str(tmp_path / "x.gif")], 8)
