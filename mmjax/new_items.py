"""Items the run never saw, scored from their text and image alone.

  model = mmjax.load("runs/demo").add_items(
      texts=["a red striped cotton shirt"], images=[Image.open("new.jpg")],
      ids=["sku-new-1"])
  model.recommend(user="user7", k=10)   # may now return "sku-new-1"

A new item goes through the trained towers and the fusion as a catalog item
does. What it lacks is what training learns per item: the item-ID embedding
(added to the fused content before normalization) and the per-item score
offsets (the model's item bias; the item offsets of the user refit the run
chose, if any). It gets a zero ID contribution, so its item vector is
normalize(content), what the catalog item would get with its ID row zeroed
(`TrainedModel.without_item_ids`); and each offset at the mean over the
catalog items: a softmax score is blind to a shift shared by all items, so
only an offset relative to the others means anything, and the mean scores a
new item as an item of average popularity (`offset_quantile` puts them at a
quantile of the catalog's instead). Users keep their vectors (their
histories hold catalog items only).

`add_items` returns a new model and leaves the loaded one as it was (as
`with_item_id_scale` does): its cached embeddings stay valid, the two can be
compared, and adding is cheap (the catalog is not encoded again). Images are
required: every end-to-end model fuses an image tower's output, and a blank
stand-in would place the item where blank images land, not nowhere. The
items live in the returned object only: the workdir, and so `mmjax export`
and `mmjax recommend`, stay as trained.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from mmjax.data import ids as ids_lib
from mmjax.data.features import normalize_images
from mmjax.errors import MmjaxError
from mmjax.queries import Queries

_SAME = object()   # add_items on a model with new items: its offset_quantile.


def _as_list(values, name: str) -> list:
  """A str/int scalar as a list of one; any sequence (or array) as a list."""
  if values is None:
    raise MmjaxError(f"add_items needs {name}=, one per new item")
  if isinstance(values, (str, bytes, int, np.integer)):
    return [values]
  return list(values)


def _image_list(images):
  """A (n, H, W, 3) array as it is; one image (array, PIL image, path) as a
  list of one; any other sequence as a list."""
  if images is None:
    raise MmjaxError("add_items needs images=, one per item (uint8 (n, H, W, 3), "
                     "PIL images or paths): the model fuses text and image")
  if isinstance(images, np.ndarray):
    return images if images.ndim == 4 else [images]
  if isinstance(images, (str, os.PathLike)) or hasattr(images, "getbands"):
    return [images]
  return list(images)


def add_items(base, texts, images, ids, *, decode, offset_quantile=None):
  """`base` (a TrainedModel) with new items appended; `decode(images, size)`
  turns the images into uint8 (n, size, size, 3) as `encode_images` does.
  offset_quantile: None puts each score offset of a new item at the catalog
  items' mean; a number in [0, 1] at that quantile of theirs (lower: new
  items shown less)."""
  if offset_quantile is not None and (
      isinstance(offset_quantile, bool) or not isinstance(offset_quantile, (int, float))
      or not 0 <= offset_quantile <= 1):
    raise MmjaxError(f"offset_quantile={offset_quantile!r} must be a number in "
                     "[0, 1] (None: the catalog items' mean)")
  texts, ids, images = _as_list(texts, "texts"), _as_list(ids, "ids"), _image_list(images)
  if not ids:
    raise MmjaxError("add_items needs at least one item (ids=[] given)")
  if not len(texts) == len(images) == len(ids):
    raise MmjaxError(f"add_items got {len(texts)} texts, {len(images)} images and "
                     f"{len(ids)} ids: give one of each per new item")
  bad = next((t for t in texts if not isinstance(t, str)), None)
  if bad is not None:
    raise MmjaxError(f"add_items texts must be str, got {bad!r}")
  ids = ids_lib.check_raw("item", ids, len(ids))   # Type; no id given twice.
  existing = set(map(str, base.item_map.to_list()))
  taken = next((v for v in ids if str(v) in existing), None)
  if taken is not None:
    raise MmjaxError(f"item id {taken!r} is already in the catalog (index "
                     f"{base.item_map.index(taken)}): give new items new ids")
  images = decode(images, base.catalog.image_size)
  return ModelWithNewItems(base, texts, images, ids, encode(base, texts, images),
                           offset_quantile)


def encode(base, texts: list, images: np.ndarray) -> dict[str, np.ndarray]:
  """{"z_text", "z_image", "content", "item"} (n, dim) of new items through
  `base`'s towers; "item" is normalize(content): no ID contribution."""
  tokens, mask = base.tokenizer.encode_all(texts)
  out = base._embedder.items(base._params, base._buffers, tokens, mask,
                             normalize_images(images))
  # The encoder's "item" adds ID rows of dense indices these items do not
  # own; their vector is the fused content alone.
  out = {k: np.asarray(v) for k, v in out.items() if k != "item"}
  content = out["content"].astype(np.float32)
  # As models.aligners.l2_normalize: a floor on the squared norm.
  sq = np.maximum((content * content).sum(-1, keepdims=True), np.float32(1e-12))
  out["item"] = (content / np.sqrt(sq)).astype(out["content"].dtype)
  return out


class ModelWithNewItems(Queries):
  """A trained model with items appended after its catalog (dense indices
  N, N+1, ... in the order given), ranked with the catalog's by
  recommend, similar and search. Everything else is the base model's."""

  def __init__(self, base, texts: list, images: np.ndarray, ids: list,
               vectors: dict[str, np.ndarray], offset_quantile: float | None = None):
    self._base, self._new = base, (list(texts), images, list(ids))
    self.offset_quantile = offset_quantile
    self._vectors = vectors
    cat = base.catalog
    self.catalog = dataclasses.replace(
        cat, item_text=list(cat.item_text) + list(texts),
        item_images=np.concatenate([cat.item_images, images]),
        item_image_files=None,
        num_items=cat.num_items + len(ids),
        item_ids=cat.item_map.to_list() + list(ids),
        item_attrs=None, oracle_scores=None)   # Unknown for new items.

  def __getattr__(self, name):
    if name.startswith("__"):   # copy/pickle probes: not the base's.
      raise AttributeError(name)
    return getattr(self._base, name)

  @property
  def new_item_ids(self) -> list:
    """The ids added to the base model's catalog, in dense-index order."""
    return list(self._new[2])

  num_items = property(lambda self: self.catalog.num_items)
  item_text = property(lambda self: self.catalog.item_text)
  _id_maps = property(lambda self: (self.catalog.user_map, self.catalog.item_map))
  _similar_vectors = property(lambda self: self.item_embeddings["item"])

  @functools.cached_property
  def item_embeddings(self) -> dict[str, np.ndarray]:
    """The base model's rows, then the new items' (same keys)."""
    base = self._base.item_embeddings
    return {k: np.concatenate([base[k], self._vectors[k].astype(base[k].dtype)])
            for k in base}

  @functools.cached_property
  def scoring_vectors(self) -> tuple[np.ndarray, np.ndarray]:
    """The base (u', v'); a new item's row is its item vector, then each
    per-item offset column at its mean over the catalog (or the quantile
    `offset_quantile` of it)."""
    u, v = self._base.scoring_vectors
    item = self._vectors["item"].astype(v.dtype)
    catalog = v[:, item.shape[1]:]
    value = (catalog.mean(0) if self.offset_quantile is None
             else np.quantile(catalog, self.offset_quantile, axis=0))
    offsets = np.broadcast_to(value.astype(v.dtype), (len(item), catalog.shape[1]))
    return u, np.concatenate([v, np.concatenate([item, offsets], 1)])

  @functools.cached_property
  def item_id_table(self) -> np.ndarray | None:
    """The base table with a zero row per new item (their ID contribution)."""
    table = self._base.item_id_table
    if table is None:
      return None
    return np.concatenate([table, np.zeros((len(self._vectors["item"]),
                                            table.shape[1]), table.dtype)])

  def search(self, text: str, k: int = 10):
    # The base's search over this model's gallery (catalog and new items).
    return type(self._base).search(self, text, k)

  def add_items(self, *, texts, images, ids, offset_quantile=_SAME
                ) -> "ModelWithNewItems":
    """More new items: the base model with these and the earlier ones (at
    this model's offset_quantile unless one is given)."""
    old_texts, old_images, old_ids = self._new
    texts, ids = _as_list(texts, "texts"), _as_list(ids, "ids")
    images = list(old_images) + list(_image_list(images))
    if offset_quantile is _SAME:
      offset_quantile = self.offset_quantile
    return self._base.add_items(texts=old_texts + texts, images=images,
                                ids=old_ids + ids, offset_quantile=offset_quantile)

  def _again(self, base) -> "ModelWithNewItems":
    texts, images, ids = self._new
    return base.add_items(texts=texts, images=images, ids=ids,
                          offset_quantile=self.offset_quantile)

  def at_init(self) -> "ModelWithNewItems":
    return self._again(self._base.at_init())

  def with_item_id_scale(self, scale: float) -> "ModelWithNewItems":
    """The base snapshot rescaled (`TrainedModel.with_item_id_scale`), the
    same items added to it (their ID contribution stays zero)."""
    return self._again(self._base.with_item_id_scale(scale))

  def without_item_ids(self) -> "ModelWithNewItems":
    return self._again(self._base.without_item_ids())
