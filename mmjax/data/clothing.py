"""Adapter for the clothing photo set (clothing-dataset, CC0): one CSV -> RawSource.

The folder holds `images.csv` (columns image, sender_id, label, kids) and
`images/<image>.jpg`. The conversion:
- item    = one photo; id = `image`, image file = `<image_root>/<image>.jpg`;
- text    = a caption from the label, "a photo of a t-shirt", plus
            " for kids" when `kids` is True; the noise labels ("Not sure",
            "Skip", "Other") all become "a photo of a piece of clothing";
- interaction = (sender_id, image): the person who sent the photo stands in
            for a user, so every item has exactly one interaction and valid
            and test items are cold-start items (no train interaction).
Rows stay in file order, which the per-user split treats as time order.
"""

from __future__ import annotations

from mmjax.data import raw_source
from mmjax.errors import MmjaxError

NOISE_LABELS = ("Not sure", "Skip", "Other")
_PLURAL = ("pants", "shorts", "shoes")   # Read "a photo of pants".
_KIDS = {"true": True, "false": False}


def caption(label: str, kids: bool) -> str:
  """"a photo of a t-shirt [for kids]" for one row."""
  noun = label.strip().lower()
  if label in NOISE_LABELS:
    phrase = "a piece of clothing"
  elif noun in _PLURAL:
    phrase = noun
  else:
    phrase = ("an " if noun[0] in "aeiou" else "a ") + noun
  return f"a photo of {phrase}" + (" for kids" if kids else "")


def from_csv(raw_cfg) -> raw_source.RawSource:
  """RawSource of the clothing folder; items_file names its images.csv."""
  table = raw_source.read_table(raw_source.resolve(raw_cfg, "items_file"),
                                "config.data.raw.items_file")
  key = "the clothing adapter reads image, sender_id, label, kids"
  images = table.required("image", key)
  kids = []
  for row, v in enumerate(table.required("kids", key)):
    if v.lower() not in _KIDS:
      raise MmjaxError(f"{table.where(row)}: column 'kids' is {v!r}, "
                       "expected True or False")
    kids.append(_KIDS[v.lower()])
  names = [f"{i}.jpg" for i in images]
  where = [table.where(r) for r in range(len(table.rows))]
  return raw_source.RawSource(
      items_file=table.path,
      item_ids=images,
      item_text=[caption(l, k) for l, k in
                 zip(table.required("label", key), kids)],
      image_paths=raw_source.image_paths(raw_cfg, names),
      image_names=names,
      item_where=where,
      interactions_file=table.path,
      users=table.required("sender_id", key),
      items=images,
      splits=None,
      interaction_where=where,
      root=raw_source.data_root(raw_cfg),
      files=[table.path])
