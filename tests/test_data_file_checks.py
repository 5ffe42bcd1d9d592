"""Data files a careless hand wrote: a byte-order mark, repeated rows, ids too
large for their type, latin-1 text, an .npz or empty .npy as a feature file.
Each is read or refused with one line, never a traceback or a huge allocation."""

import os
import tracemalloc

import numpy as np
import pytest

from mmjax import feature_extraction
from mmjax.data import mmrec, raw, raw_source
from mmjax.data.catalog import TRAIN
from mmjax.errors import MmjaxError

from mmrec_fixtures import write_inter
from raw_fixtures import GOOD, ingest, png, write_folder

BOM = "\ufeff"
ROWS = [(0, 0, 1, 0), (0, 1, 1, 0), (1, 1, 1, 0), (1, 0, 1, 1), (0, 2, 1, 2)]


def _read_items(table):
  return feature_extraction.read_items(str(table), "itemID", ["title"])


def _one_line_error(fn, match):
  with pytest.raises(MmjaxError, match=match) as e:
    fn()
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.fixture()
def shop(tmp_path):
  for item, colour in GOOD.items():
    png(str(tmp_path / "images" / f"{item}.png"), colour)
  return tmp_path


# ------------------------------------------------------------ byte-order mark


def test_a_bom_is_accepted_in_every_table(shop, tmp_path):
  write_folder(shop, [])
  for name in ("items.csv", "interactions.csv"):
    text = open(shop / name, encoding="utf-8").read()
    open(shop / name, "w", encoding="utf-8").write(BOM + text)
  catalog, _ = ingest(shop)
  assert catalog.num_items == 4
  write_inter(tmp_path / "d.inter", ROWS,
              header=BOM + "userID\titemID\trating\tx_label")
  assert mmrec.load(str(tmp_path), "d.inter").num_users == 2
  table = tmp_path / "items.tsv"
  table.write_text(BOM + "itemID\ttitle\n0\ta\n1\tb\n", encoding="utf-8")
  assert feature_extraction.read_items(str(table), "itemID", ["title"]) == {
      "itemID": [0, 1], "title": ["a", "b"]}


# ------------------------------------------------------------ repeated rows


def test_repeated_interaction_rows_are_dropped_and_counted(shop, tmp_path):
  write_folder(shop, [], extra_rows=["u1,a", "u1,a"])
  catalog, report = ingest(shop)
  assert report["interactions_duplicate"] == 2
  assert len(catalog.interactions) == 8   # u1 and u2 each see a-d once.
  meta = dict(raw=dict(report, text_token_lengths={"3": 4}), num_items=4,
              num_users=2, num_interactions=dict(train=4, valid=2, test=2))
  assert "2 repeated rows dropped" in raw.summary_lines(meta, 8)[1]

  write_inter(tmp_path / "d.inter", ROWS + [ROWS[1], ROWS[1]])
  d = mmrec.load(str(tmp_path), "d.inter")
  assert d.dropped_repeated == 2 and len(d.pairs[TRAIN]) == 3
  assert "2 repeated rows dropped" in d.describe()


# ------------------------------------------------------------ ids


def test_ids_too_large_for_int32_are_one_line_errors(tmp_path):
  write_inter(tmp_path / "d.inter", ROWS + [(99999999999999999999, 0, 1, 0)])
  _one_line_error(lambda: mmrec.load(str(tmp_path), "d.inter"),
                  r"d.inter:7: id 99999999999999999999 does not fit the int32")


def test_a_sparse_id_is_refused_before_any_large_allocation(tmp_path):
  write_inter(tmp_path / "d.inter", ROWS + [(2_000_000_000, 0, 1, 0)])
  tracemalloc.start()
  try:
    _one_line_error(lambda: mmrec.load(str(tmp_path), "d.inter"),
                    r"userID 2000000000 is far beyond the 6 rows")
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 50 * 2**20


def test_feature_item_ids_beyond_the_rows_are_one_line_errors(tmp_path):
  table = tmp_path / "items.tsv"
  table.write_text(f"itemID\ttitle\n0\ta\n{10**30}\tb\n")
  _one_line_error(lambda: _read_items(table),
                  r"must be 0..1, each once .* out of range: \['10000000000000000")


# ------------------------------------------------------------ encodings, .npy


def test_latin1_tables_are_one_line_errors(tmp_path):
  table = tmp_path / "items.tsv"
  table.write_bytes("itemID\ttitle\n0\tcaf\u00e9\n".encode("latin-1"))
  _one_line_error(lambda: _read_items(table),
                  r"items.tsv: not UTF-8 text")
  _one_line_error(lambda: raw_source.read_table(str(table), "key"),
                  r"items.tsv: cannot parse")


@pytest.mark.parametrize("write, match", [
    (lambda p: np.savez(p, a=np.zeros((3, 2), np.float32)), r"an \.npz archive"),
    (lambda p: open(p, "wb").close(), r"not a readable \.npy array"),
    (lambda p: open(p, "wb").write(b"PK\x03\x04junk"), r"not a readable \.npy"),
])
def test_npz_and_empty_feature_files_are_one_line_errors(tmp_path, write, match):
  path = str(tmp_path / "feat.npy")
  write(path)
  if os.path.exists(path + ".npz"):   # np.savez appends .npz to the name.
    os.replace(path + ".npz", path)
  _one_line_error(lambda: mmrec.load_features(path, 3), match)
