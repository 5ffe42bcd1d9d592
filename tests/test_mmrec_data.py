"""The MMRec-format loader: what it reads, and every error it reports."""


import numpy as np
import pytest

from mmjax.data import mmrec
from mmjax.data.catalog import TEST, TRAIN, VALID
from mmjax.errors import MmjaxError

from mmrec_fixtures import write_inter

GOOD = [(0, 0, 1, 0), (0, 1, 0, 0), (1, 2, 1, 0), (0, 2, 1, 1), (1, 0, 1, 2),
        (2, 1, 1, 2)]   # User 2 has no train row: cold start.


@pytest.fixture()
def root(tmp_path):
  write_inter(tmp_path / "d.inter", GOOD)
  np.save(tmp_path / "text.npy", np.ones((3, 4), np.float32))
  return tmp_path


def test_loads_splits_counts_and_drops_cold_start_users(root):
  d = mmrec.load(str(root), "d.inter", ["text.npy"])
  assert (d.num_users, d.num_items) == (3, 3)
  np.testing.assert_array_equal(d.pairs[TRAIN], [[0, 0], [0, 1], [1, 2]])
  np.testing.assert_array_equal(d.pairs[VALID], [[0, 2]])
  np.testing.assert_array_equal(d.pairs[TEST], [[1, 0]])   # (2, 1) dropped.
  assert d.dropped_cold == {TRAIN: 0, VALID: 0, TEST: 1}
  assert d.features["text"].shape == (3, 4) and d.features["text"].dtype == np.float32
  assert [list(x) for x in d.user_items(TRAIN)] == [[0, 1], [2], []]


def test_timestamp_column_and_separate_feature_dir(root, tmp_path_factory):
  write_inter(root / "t.inter", [(0, 0, 1, 5, 0), (0, 1, 1, 6, 2)],
              header="userID\titemID\trating\ttimestamp\tx_label")
  other = tmp_path_factory.mktemp("feats")
  np.save(other / "f.npy", np.zeros((2, 3), np.float64))
  d = mmrec.load(str(root), "t.inter", ["f.npy"], feature_dir=str(other))
  assert d.features["f"].shape == (2, 3) and d.features["f"].dtype == np.float32


def test_feature_file_list_parses_the_command_line_form():
  assert mmrec.feature_file_list("a.npy, b.npy,") == ("a.npy", "b.npy")
  assert mmrec.feature_file_list("") == ()
  assert mmrec.feature_file_list(("a.npy",)) == ("a.npy",)


def _inter_error(root, text):
  (root / "bad.inter").write_text(text)
  with pytest.raises(MmjaxError) as e:
    mmrec.load(str(root), "bad.inter")
  return str(e.value)


@pytest.mark.parametrize("text, expect", [
    ("", "empty file"),
    ("user\titem\tx_label\n0\t0\t0\n", "bad header"),
    ("userID\titemID\trating\tx_label\tcolour\n0\t0\t1\t0\tred\n", "unknown ['colour']"),
    ("userID\titemID\tx_label\n0\tbook\t0\n", "bad.inter:2: non-numeric"),
    ("userID\titemID\trating\tx_label\n0\t0\tgood\t0\n", "bad.inter:2: non-numeric"),
    ("userID\titemID\tx_label\n0\t0\t0\n1\t-3\t0\n", "bad.inter:3: negative id"),
    ("userID\titemID\tx_label\n0\t0\t3\n", "bad.inter:2: x_label=3"),
    ("userID\titemID\tx_label\n0\t0\n", "bad.inter:2: 2 fields"),
    ("userID\titemID\tx_label\n", "no interaction rows"),
    ("userID\titemID\tx_label\n0\t0\t1\n", "no train rows"),
])
def test_interaction_file_errors_name_file_and_line(tmp_path, text, expect):
  message = _inter_error(tmp_path, text)
  assert "bad.inter" in message and expect in message


def test_missing_files(root):
  with pytest.raises(MmjaxError, match="interaction file not found: .*nope.inter"):
    mmrec.load(str(root), "nope.inter")
  with pytest.raises(MmjaxError, match="feature file not found: .*nope.npy"):
    mmrec.load(str(root), "d.inter", ["nope.npy"])


def test_item_ids_out_of_range_of_a_fixed_item_count(root):
  with pytest.raises(MmjaxError, match=r"itemID 2 out of range \[0, 2\)"):
    mmrec.load(str(root), "d.inter", num_items=2)


@pytest.mark.parametrize("array, expect", [
    (np.ones((4, 2), np.float32), "4 rows, but the interactions have 3 items"),
    (np.ones((3,), np.float32), "want 2-d"),
    (np.ones((3, 2, 2), np.float32), "want 2-d"),
    (np.ones((3, 2), np.int64), "dtype int64"),
    (np.array([[1, 2], [np.nan, 0], [0, np.inf]], np.float32), "NaN/Inf in 2 rows, first row 1"),
])
def test_feature_file_errors(root, array, expect):
  np.save(root / "f.npy", array)
  with pytest.raises(MmjaxError, match="f.npy") as e:
    mmrec.load(str(root), "d.inter", ["f.npy"])
  assert expect in str(e.value)


def test_unreadable_feature_file(root):
  (root / "f.npy").write_text("not numpy")
  with pytest.raises(MmjaxError, match="f.npy: not a readable .npy"):
    mmrec.load(str(root), "d.inter", ["f.npy"])


def test_mmrec_id_mappings_give_the_raw_ids(root):
  """MMRec's u_id_mapping.csv / i_id_mapping.csv (tab-separated, raw id then
  dense id) name the users and items; without them the .inter ints do."""
  plain = mmrec.load(str(root), "d.inter")
  assert plain.user_ids is None and plain.item_map.raws([2]) == [2]
  (root / "u_id_mapping.csv").write_text(
      "user_id\tuserID\nA2X\t1\nA1Q\t0\nZZ9\t2\nEXTRA\t7\n")
  (root / "i_id_mapping.csv").write_text("asin\titemID\nB01\t0\nB02\t1\nB03\t2\n")
  d = mmrec.load(str(root), "d.inter")
  assert d.user_ids == ["A1Q", "A2X", "ZZ9"] and d.item_ids == ["B01", "B02", "B03"]
  assert d.user_map.index("A2X") == 1 and d.item_map.raw(2) == "B03"


@pytest.mark.parametrize("mapping, message", [
    ("asin\titemID\nB01\t0\nB03\t2\n", r"i_id_mapping.csv: no row for itemID 1"),
    ("asin\titemID\nB01\t0\nB02\t1\nB01\t2\n", r"item id 'B01' is given twice"),
    ("asin\titemID\nB01\tx\n", r"i_id_mapping.csv:2: itemID='x' is not an id"),
    ("asin\tid\nB01\t0\n", r"want a header with 'itemID'"),
    ("asin\titemID\nB01\t0\t9\n", r"i_id_mapping.csv:2: 3 fields"),
])
def test_bad_mapping_files_are_errors(root, mapping, message):
  (root / "i_id_mapping.csv").write_text(mapping)
  with pytest.raises(MmjaxError, match=message):
    mmrec.load(str(root), "d.inter")
