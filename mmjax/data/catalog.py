"""The in-memory catalog that every data set becomes.

A `Catalog` holds items (one text description and one RGB image each) and the
user-item interactions, already split into train / valid / test. Ids are dense
and 0-based. Row order of `interactions` is meaningful: within a user, later
rows are more recent (readers of sequential histories rely on this).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.data import ids
from mmjax.errors import MmjaxError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


def split_index(name: str) -> int:
  """Maps "train" / "valid" / "test" to 0 / 1 / 2."""
  if name not in SPLIT_NAMES:
    raise MmjaxError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
  return SPLIT_NAMES.index(name)


@dataclasses.dataclass
class Catalog(ids.OwnIds):
  """Items, users and their split interactions.

  Attributes:
    item_text: len N, one description per item.
    item_images: (N, H, W, 3) uint8, the model's (square) view of each image.
    item_image_files: len N, what the store keeps of each image (an encoded
      file at its original size, or downscaled to a maximum side; see
      `image_bytes`), when the items came from files; None: the store keeps
      item_images themselves, losslessly.
    interactions: (M, 2) int32 columns (user_id, item_id).
    split: (M,) int8: 0 train, 1 valid, 2 test.
    num_users: number of users U (ids 0..U-1).
    num_items: number of items N (ids 0..N-1).
    item_attrs: name -> (N,) int32 latent attributes (synthetic data only).
    oracle_scores: (U, N) float32 true preference logits (synthetic only).
    user_ids, item_ids: the users' and items' own ids (str or int) in dense
      order, as the raw data names them; None: the dense ints are the ids.
    labels: (M,) float32 explicit label of each interaction row, or None.
      Labels all in {0, 1} are clicks ("binary"): a 0 row is an impression
      shown but not clicked, which is no positive, so `split_pairs` and
      everything built on it (histories, popularity, ranking targets) skip
      it. Any other labels are ratings ("rating"): every rated row is a
      positive. `labelled_rows` gives every row with its label.
  """
  item_text: list[str]
  item_images: np.ndarray
  interactions: np.ndarray
  split: np.ndarray
  num_users: int
  num_items: int
  item_attrs: dict[str, np.ndarray] | None = None
  oracle_scores: np.ndarray | None = None
  user_ids: list | None = None
  item_ids: list | None = None
  labels: np.ndarray | None = None
  item_image_files: list[bytes] | None = None

  @property
  def image_size(self) -> int:
    return int(self.item_images.shape[1])

  @property
  def label_kind(self) -> str:
    """"binary" (every label 0 or 1), "rating" (any other), "" (no labels)."""
    return label_kind(self.labels)

  def split_pairs(self, split_id: int) -> np.ndarray:
    """(M_s, 2) int32 (user_id, item_id) positive rows of one split, in row
    order (a binary label's 0 rows left out)."""
    rows = self.split == split_id
    if self.label_kind == "binary":
      rows &= self.labels > 0
    return self.interactions[rows]

  def labelled_rows(self, split_id: int) -> tuple[np.ndarray, np.ndarray]:
    """((M_s, 2) int32 (user_id, item_id), (M_s,) float32 labels): every
    row of one split, impressions included; MmjaxError without labels."""
    if self.labels is None:
      raise MmjaxError("the catalog has no labels: loss.pointwise needs a label "
                       "column (data.raw.columns.label) or synthetic impressions "
                       "(data.synthetic.impressions)")
    rows = self.split == split_id
    return self.interactions[rows], self.labels[rows]

  def user_histories(
      self, split_id: int = TRAIN, max_len: int | None = None, pad: int = -1
  ) -> list[np.ndarray] | np.ndarray:
    """Per-user item sequences of one split, in row (i.e. time) order.

    Args:
      split_id: which split's interactions to collect.
      max_len: None returns a list of U int32 arrays (possibly empty). An int
        returns a (U, max_len) int32 array holding each user's *last* max_len
        items left-aligned, padded on the right with `pad`.
      pad: padding value for the array form.
    """
    pairs = self.split_pairs(split_id)
    # A stable sort by user keeps each user's rows in their original order.
    order = np.argsort(pairs[:, 0], kind="stable")
    users, items = pairs[order, 0], pairs[order, 1]
    bounds = np.searchsorted(users, np.arange(self.num_users + 1))
    if max_len is None:
      return [items[bounds[u]:bounds[u + 1]] for u in range(self.num_users)]
    out = np.full((self.num_users, max_len), pad, np.int32)
    for u in range(self.num_users):
      seq = items[max(bounds[u], bounds[u + 1] - max_len):bounds[u + 1]]
      out[u, :len(seq)] = seq
    return out

  def item_popularity(self) -> np.ndarray:
    """(N,) int64 count of train interactions per item."""
    items = self.split_pairs(TRAIN)[:, 1]
    return np.bincount(items, minlength=self.num_items).astype(np.int64)

  def validate(self) -> "Catalog":
    """Checks shapes, dtypes and id ranges; raises MmjaxError naming the field.

    Returns self so that calls can be chained.
    """
    for name in ("num_users", "num_items"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise MmjaxError(
            f"catalog.{name} must be a positive int, got {value!r}")
    n, u = int(self.num_items), int(self.num_users)

    if not isinstance(self.item_text, list) or len(self.item_text) != n:
      raise MmjaxError(f"catalog.item_text must be a list of {n} strings")
    if not all(isinstance(t, str) for t in self.item_text):
      raise MmjaxError("catalog.item_text must contain only str")

    images = self.item_images
    _check_array("item_images", images, np.uint8, ndim=4)
    if images.shape[0] != n or images.shape[3] != 3:
      raise MmjaxError(
          f"catalog.item_images must have shape ({n}, H, W, 3), "
          f"got {images.shape}")
    files = self.item_image_files
    if files is not None and (len(files) != n or not all(
        isinstance(f, bytes) for f in files)):
      raise MmjaxError(f"catalog.item_image_files must be {n} bytes objects")

    _check_array("interactions", self.interactions, np.int32, ndim=2)
    m = self.interactions.shape[0]
    if self.interactions.shape[1] != 2:
      raise MmjaxError(
          f"catalog.interactions must have shape (M, 2), "
          f"got {self.interactions.shape}")
    _check_range("interactions[:, 0] (user_id)", self.interactions[:, 0], u)
    _check_range("interactions[:, 1] (item_id)", self.interactions[:, 1], n)

    _check_array("split", self.split, np.int8, ndim=1)
    if self.split.shape[0] != m:
      raise MmjaxError(f"catalog.split must have shape ({m},), "
                       f"got {self.split.shape}")
    _check_range("split", self.split, 3)

    for name, values in (self.item_attrs or {}).items():
      _check_array(f"item_attrs[{name!r}]", values, np.int32, ndim=1)
      if values.shape[0] != n:
        raise MmjaxError(f"catalog.item_attrs[{name!r}] must have shape "
                         f"({n},), got {values.shape}")
      _check_range(f"item_attrs[{name!r}]", values, np.iinfo(np.int32).max)

    if self.oracle_scores is not None:
      _check_array("oracle_scores", self.oracle_scores, np.float32, ndim=2)
      if self.oracle_scores.shape != (u, n):
        raise MmjaxError(f"catalog.oracle_scores must have shape ({u}, {n}), "
                         f"got {self.oracle_scores.shape}")
      if not np.isfinite(self.oracle_scores).all():
        raise MmjaxError("catalog.oracle_scores must be finite")
    if self.labels is not None:
      _check_array("labels", self.labels, np.float32, ndim=1)
      if self.labels.shape[0] != m:
        raise MmjaxError(f"catalog.labels must have shape ({m},), "
                         f"got {self.labels.shape}")
      if not np.isfinite(self.labels).all():
        raise MmjaxError("catalog.labels must be finite")
    for kind, raw, count in (("user", self.user_ids, u),
                             ("item", self.item_ids, n)):
      if raw is not None:
        try:
          ids.check_raw(kind, raw, count)
        except MmjaxError as e:
          raise MmjaxError(f"catalog.{kind}_ids: {e}") from None
    return self


def label_kind(labels) -> str:
  """"binary" where every label is 0 or 1, "rating" otherwise, "" for None."""
  if labels is None:
    return ""
  return "binary" if np.isin(labels, (0.0, 1.0)).all() else "rating"


def _check_array(field, value, dtype, ndim):
  if not isinstance(value, np.ndarray):
    raise MmjaxError(f"catalog.{field} must be a numpy array, "
                     f"got {type(value).__name__}")
  if value.dtype != dtype or value.ndim != ndim:
    raise MmjaxError(
        f"catalog.{field} must be a {ndim}-d {np.dtype(dtype).name} array, "
        f"got {value.ndim}-d {value.dtype}")


def _check_range(field, values, upper):
  """Checks 0 <= values < upper."""
  if values.size and (values.min() < 0 or values.max() >= upper):
    raise MmjaxError(
        f"catalog.{field} out of range [0, {upper}): "
        f"min {values.min()}, max {values.max()}")
