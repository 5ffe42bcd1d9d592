"""Raw-folder ingestion: items table + image files + interactions -> data dir.

`ensure_ingested(config.data)` reads the folder through an adapter
(raw_source.py for plain tables, clothing.py for the clothing photos),
validates it, checks and decodes the images, splits the interactions and
writes the same TFDS ArrayRecord data dir as the synthetic catalog
(store_write.py), so the trainer reads both alike. The data dir keeps each
image file as it is (at its original size), or downscaled to
config.data.raw.max_stored_side; readers decode it to
config.data.raw.image_size. Raw data has no oracle and no latent attributes.
The tables' own user and item ids (as written) are kept in the catalog, in
dense order.

The data dir is cached under a hash of the table files' bytes, the images'
paths, sizes and mtimes, and every ingestion option: a second run with the
same inputs reuses it, and any change to them ingests afresh.

Errors in the tables (missing file or column, empty text, duplicate item id,
an interaction naming an unknown item) raise MmjaxError naming file and line.
A missing or corrupt image is not an error: its item, and the interactions
naming it, are skipped and counted in one summary line, as are images
refused (a path outside the folder), too large or of an unlisted format.
Repeated interaction rows (same user, item and split) are dropped and
counted.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mmjax.data import catalog as catalog_lib
from mmjax.data import clothing, image_files, raw_source, store, store_write, text
from mmjax.errors import MmjaxError

ADAPTERS = {"table": raw_source.from_tables, "clothing": clothing.from_csv}
# Bump when ingestion changes what it writes for the same inputs.
INGEST_VERSION = 4
MIN_SPLIT_INTERACTIONS = 3   # A user needs one train, valid and test item.


def read_source(raw_cfg) -> raw_source.RawSource:
  return ADAPTERS[raw_cfg.adapter](raw_cfg)


def _item_index(src) -> dict[str, int]:
  """item id -> row of the items table; duplicate ids are an error."""
  index = {}
  for row, item in enumerate(src.item_ids):
    if item in index:
      raise MmjaxError(f"{src.item_where[row]}: duplicate item id {item!r} "
                       f"(first at {src.item_where[index[item]]})")
    index[item] = row
  return index


def _interaction_items(src, index) -> np.ndarray:
  """Items-table row of every interaction; unknown items are an error."""
  rows = np.empty(len(src.items), np.int64)
  for k, item in enumerate(src.items):
    if item not in index:
      raise MmjaxError(f"{src.interaction_where[k]}: item {item!r} is not in "
                       f"the items table {src.items_file}")
    rows[k] = index[item]
  return rows


def _first_rows(*columns) -> np.ndarray:
  """Mask of the rows whose values (across `columns`) are seen the first time."""
  seen, first = set(), []
  for row in zip(*columns):
    first.append(row not in seen)
    seen.add(row)
  return np.asarray(first, bool)


def _dense(values) -> tuple[np.ndarray, list[str]]:
  """Strings -> 0-based ids in order of first appearance, and the strings
  of ids 0, 1, ..."""
  ids: dict[str, int] = {}
  out = np.asarray([ids.setdefault(v, len(ids)) for v in values], np.int32)
  return out, list(ids)


def per_user_split(users: np.ndarray, valid_fraction: float,
                   test_fraction: float) -> np.ndarray:
  """Each user's last rows go to test, the ones before to valid (row order is
  time order): floor(n * fraction), at least 1 each, for users with at least
  MIN_SPLIT_INTERACTIONS interactions; all of a smaller user's go to train."""
  order = np.argsort(users, kind="stable")
  counts = np.bincount(users)
  n = counts[users]
  starts = np.cumsum(counts) - counts
  from_end = np.empty(len(users), np.int64)   # 0 = the user's last row
  from_end[order] = (starts[users[order]] + counts[users[order]] - 1
                     - np.arange(len(users)))
  big = n >= MIN_SPLIT_INTERACTIONS
  # The epsilon keeps e.g. 10 * 0.7 = 6.9999... from flooring to 6.
  n_test = np.where(big, np.maximum(1, np.floor(n * test_fraction + 1e-9)), 0)
  n_valid = np.where(big, np.maximum(1, np.floor(n * valid_fraction + 1e-9)), 0)
  return np.select([from_end < n_test, from_end < n_test + n_valid],
                   [catalog_lib.TEST, catalog_lib.VALID],
                   catalog_lib.TRAIN).astype(np.int8)


def build_catalog(src, raw_cfg) -> tuple[catalog_lib.Catalog, dict]:
  """Validated Catalog of a RawSource, and the report of what was skipped."""
  index = _item_index(src)
  item_rows = _interaction_items(src, index)
  loaded = image_files.load_images(
      src.image_paths, raw_cfg.image_size, formats=raw_cfg.image_formats,
      max_pixels=raw_cfg.max_image_pixels, max_side=raw_cfg.max_stored_side)
  ok = loaded.ok
  if not ok.any():
    raise MmjaxError(f"{src.items_file}: none of its {len(ok)} images could "
                     f"be read (first: {src.image_names[0]}, "
                     f"{loaded.status[0]})")
  new_id = np.where(ok, np.cumsum(ok) - 1, -1)
  first = _first_rows(src.users, src.items, src.splits or [0] * len(src.items))
  has_image = new_id[item_rows] >= 0
  kept = has_image & first
  users, user_ids = _dense(np.asarray(src.users, dtype=object)[kept])
  if src.splits is not None:
    split = np.asarray(src.splits, np.int8)[kept]
  else:
    split = per_user_split(users, raw_cfg.valid_fraction, raw_cfg.test_fraction)
  empty = [n for i, n in enumerate(catalog_lib.SPLIT_NAMES)
           if not (split == i).any()]
  if empty:
    how = ("its split column" if src.splits is not None else
           f"the per-user split (users need >= {MIN_SPLIT_INTERACTIONS} "
           "interactions)")
    raise MmjaxError(f"{src.interactions_file}: {how} leaves no "
                     f"{'/'.join(empty)} interactions")
  texts = [t for t, keep in zip(src.item_text, ok) if keep]
  labels = (None if src.labels is None
            else np.asarray(src.labels, np.float32)[kept])
  catalog = catalog_lib.Catalog(
      item_text=texts, item_images=loaded.pixels, item_image_files=loaded.files,
      interactions=np.stack([users, new_id[item_rows][kept]], 1).astype(np.int32),
      split=split, num_users=len(user_ids), num_items=int(ok.sum()),
      user_ids=user_ids, labels=labels,
      item_ids=[i for i, keep in zip(src.item_ids, ok) if keep]).validate()
  skipped = [n for n, keep in zip(src.image_names, ok) if not keep]
  report = dict(
      images=dict(read=int(ok.sum()), missing=loaded.count(image_files.MISSING),
                  corrupt=loaded.count(image_files.CORRUPT),
                  refused=loaded.count(image_files.REFUSED),
                  too_large=loaded.count(image_files.TOO_LARGE),
                  unsupported=loaded.count(image_files.UNSUPPORTED),
                  first_skipped=skipped[:3]),
      interactions_dropped=int((~has_image & first).sum()),
      interactions_duplicate=int((~first).sum()),
      split="column" if src.splits is not None else "per-user")
  return catalog, report


def _token_lengths(tokenizer, texts) -> dict[str, int]:
  """Histogram {length: #texts} of the texts' token counts ([CLS]/[SEP] in)."""
  lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
  values, counts = np.unique(lengths, return_counts=True)
  return {str(v): int(c) for v, c in zip(values, counts)}


def cache_key(src, raw_cfg) -> dict:
  """What the ingested data depends on: options, table bytes, image files."""
  tables = {}
  for path in src.files:
    with open(path, "rb") as f:
      tables[os.path.relpath(path, src.root)] = hashlib.sha256(f.read()).hexdigest()
  stats = hashlib.sha256()
  for name, path in zip(src.image_names, src.image_paths):
    if path is None:   # Refused: never looked at.
      stamp = "refused"
    else:
      try:
        st = os.stat(path)
        stamp = f"{st.st_size} {st.st_mtime_ns}"
      except OSError:
        stamp = "missing"
    stats.update(f"{name} {stamp}\n".encode())
  options = {k: v for k, v in raw_cfg.to_dict().items() if k != "root"}
  if not options["columns"].get("label"):   # Unlabelled folders keep their cache.
    options["columns"].pop("label", None)
  return dict(ingest_version=INGEST_VERSION, options=options, tables=tables,
              images=stats.hexdigest())


def ensure_ingested(data_cfg, log=print) -> str:
  """The data dir of config.data.raw, ingested on first use; logs the report."""
  raw_cfg = data_cfg.raw
  src = read_source(raw_cfg)
  data_dir = store_write.cached_dir("raw", cache_key(src, raw_cfg),
                                    data_cfg.cache_dir or None)
  cached = store.is_data_dir(data_dir)
  if not cached:
    catalog, report = build_catalog(src, raw_cfg)
    tokenizer = text.train_wordpiece(catalog.item_text, raw_cfg.tokenizer_vocab)
    report["text_token_lengths"] = _token_lengths(tokenizer, catalog.item_text)
    store_write.write_cached(catalog, data_dir, tokenizer=tokenizer,
                             extra_meta={"raw": dict(report, root=src.root)})
  meta = store.read_meta(data_dir)
  for line in summary_lines(meta, data_cfg.max_text_len):
    log(line + (" [cached]" if cached else ""))
  return data_dir


def summary_lines(meta: dict, max_text_len: int) -> list[str]:
  """The ingestion report of a raw data dir's meta.json, for people."""
  r = meta["raw"]
  im = r["images"]
  skipped = (f"; e.g. {', '.join(im['first_skipped'])}"
             if im["first_skipped"] else "")
  others = "".join(
      f", {im[k]} {what}" for k, what in (
          ("refused", "refused (outside the data folder)"),
          ("too_large", "too large (over data.raw.max_image_pixels)"),
          ("unsupported", "not in data.raw.image_formats"))
      if im.get(k))
  duplicates = r.get("interactions_duplicate", 0)
  split = meta["num_interactions"]
  lengths = {int(k): v for k, v in r["text_token_lengths"].items()}
  truncated = sum(v for k, v in lengths.items() if k > max_text_len)
  return [
      f"images: {im['read']} read, {im['missing']} missing, {im['corrupt']} "
      f"corrupt{others} (skipped{skipped})",
      f"raw data: {meta['num_items']} items, {meta['num_users']} users, "
      f"{'/'.join(str(split[s]) for s in catalog_lib.SPLIT_NAMES)} "
      f"train/valid/test interactions ({r['split']} split), "
      f"{r['interactions_dropped']} dropped with skipped images"
      f"{f', {duplicates} repeated rows dropped' if duplicates else ''}; text: "
      f"{truncated} of {meta['num_items']} truncated to max_text_len="
      f"{max_text_len} tokens (longest {max(lengths)})",
  ]
