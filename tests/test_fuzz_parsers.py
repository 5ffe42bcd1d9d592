"""Property-based fuzzing of the `.inter` and items-table parsers: whatever
the bytes, they either parse or raise MmjaxError, never anything else."""

import os

from hypothesis import HealthCheck, given, settings, strategies as st

from mmjax.config import default_config
from mmjax.data import mmrec, raw
from mmjax.errors import MmjaxError

FUZZ = settings(max_examples=int(os.environ.get("MMJAX_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Fields that are almost right are where parsers break: ids, near-ids, names.
_FIELD = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["", " ", "userID", "itemID", "x_label", "rating", "timestamp",
                     "item_id", "text", "image", "user_id", "1.5", "nan", "-0",
                     "1e3", "1_0", "\u0660", '"', '""', "a,b", "\x00", "\r"]),
    st.text(max_size=6))


def _table(sep: str):
  line = st.lists(_FIELD, max_size=6).map(sep.join)
  return st.lists(line, max_size=8).map("\n".join)


def _contents(sep: str):
  """Structured near-valid text, arbitrary text, or arbitrary bytes."""
  return st.one_of(_table(sep).map(lambda s: s.encode("utf-8", "surrogatepass")),
                   st.text().map(lambda s: s.encode("utf-8", "surrogatepass")),
                   st.binary(max_size=200))


def _parses_or_mmjax_error(fn):
  try:
    return fn()
  except MmjaxError as e:
    assert str(e)
    return None


@FUZZ
@given(data=_contents("\t"),
       header=st.sampled_from(["userID\titemID\tx_label\n", "userID\titemID\trating\tx_label\n", ""]))
def test_inter_parser(tmp_path, data, header):
  (tmp_path / "x.inter").write_bytes(header.encode() + data)
  got = _parses_or_mmjax_error(lambda: mmrec.load(str(tmp_path), "x.inter"))
  if got is not None:   # What parses is consistent.
    for pairs in got.pairs.values():
      assert pairs.ndim == 2 and (pairs >= 0).all()
      assert (pairs[:, 0] < got.num_users).all() and (pairs[:, 1] < got.num_items).all()


@FUZZ
@given(items=_contents(","), header=st.sampled_from(["item_id,text,image\n", ""]))
def test_items_table_parser(tmp_path, items, header):
  (tmp_path / "items.csv").write_bytes(header.encode() + items)
  (tmp_path / "interactions.csv").write_text(
      "user_id,item_id\n" + "".join(f"u{u},{k}\n" for u in range(3) for k in range(4)))
  cfg = default_config().data.raw
  cfg.root = str(tmp_path)
  cfg.image_size = 8

  def ingest():
    src = raw.read_source(cfg)
    assert len(src.item_ids) == len(src.item_text) == len(src.image_paths)
    return raw.build_catalog(src, cfg)   # Images are missing: an MmjaxError.

  _parses_or_mmjax_error(ingest)


def _valid_npy(rows: int) -> bytes:
  import io
  import numpy as np
  buf = io.BytesIO()
  np.save(buf, np.arange(rows * 3, dtype=np.float32).reshape(rows, 3))
  return buf.getvalue()


@FUZZ
@given(data=st.data())
def test_feature_file_parser(tmp_path, data):
  """A valid .npy truncated, with bytes flipped or replaced, or arbitrary
  bytes: loads as a consistent matrix or is one MmjaxError."""
  good = _valid_npy(4)
  how = data.draw(st.sampled_from(["truncate", "flip", "replace", "bytes"]))
  if how == "truncate":
    blob = good[:data.draw(st.integers(0, len(good) - 1))]
  elif how == "flip":
    i = data.draw(st.integers(0, len(good) - 1))
    blob = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
  elif how == "replace":
    i = data.draw(st.integers(0, len(good) - 1))
    blob = good[:i] + data.draw(st.binary(min_size=1, max_size=16)) + good[i + 1:]
  else:
    blob = data.draw(st.binary(max_size=200))
  path = tmp_path / "feat.npy"
  path.write_bytes(blob)
  got = _parses_or_mmjax_error(lambda: mmrec.load_features(str(path), 4))
  if got is not None:
    assert got.shape[0] == 4 and got.dtype.name == "float32"
