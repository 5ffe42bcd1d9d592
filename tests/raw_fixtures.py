"""A tiny raw folder (four solid-colour PNGs, two users) written on the fly."""

import os

from PIL import Image

from mmjax import config as config_lib
from mmjax.data import raw

GOOD = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200),
        "d": (200, 200, 30)}


def png(path, colour, size=(16, 16)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path, "PNG")


def write_lines(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_folder(shop, extra_items, extra_rows=()):
  """Items a-d plus `extra_items` [(id, image)]; u1/u2 see a-d, u3 sees the
  extra items (so a refused item also drops its interactions)."""
  items = ["item_id,text,image"] + [f"{i},item {i},{i}.png" for i in GOOD]
  items += [f"{i},item {i},{p}" for i, p in extra_items]
  rows = ["user_id,item_id"] + [f"{u},{i}" for u in ("u1", "u2") for i in GOOD]
  rows += [f"u3,{i}" for i, _ in extra_items] + list(extra_rows)
  write_lines(shop / "items.csv", items)
  write_lines(shop / "interactions.csv", rows)


def raw_cfg(shop, **overrides):
  c = config_lib.default_config()
  c.data.raw.update(root=str(shop), image_root="images", image_size=8,
                    **overrides)
  return c.data.raw


def ingest(shop, **overrides):
  cfg = raw_cfg(shop, **overrides)
  return raw.build_catalog(raw.read_source(cfg), cfg)
