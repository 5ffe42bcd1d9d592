"""Item image files -> fixed-size uint8 RGB arrays, decoded in parallel by grain.

Each image is resized to fit a size x size square, keeping its aspect ratio,
and centred on a grey canvas (grey is ~0 after `normalize_images`, so padding
carries no signal). A missing or undecodable file is not an error: it is
counted and the item skipped, as real data sets always hold a few of them.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import grain
import numpy as np
from PIL import Image, ImageOps

OK, MISSING, CORRUPT = "ok", "missing", "corrupt"
_PAD_GREY = (128, 128, 128)


def load_image(path: str, size: int) -> tuple[str, np.ndarray | None]:
  """(status, (size, size, 3) uint8 or None) of one image file."""
  if not os.path.isfile(path):
    return MISSING, None
  try:
    with Image.open(path) as img:
      img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, faster.
      img = ImageOps.exif_transpose(img).convert("RGB")
      img = ImageOps.pad(img, (size, size), method=Image.Resampling.BICUBIC,
                         color=_PAD_GREY)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    # PIL reports unreadable, truncated and malformed files with these.
    return CORRUPT, None
  return OK, np.asarray(img, np.uint8)


@dataclasses.dataclass
class LoadedImages:
  """Pixels of the images that loaded, and what happened to every file."""
  pixels: np.ndarray      # (K, size, size, 3) uint8, K = #status == OK
  status: list[str]       # per input path: OK / MISSING / CORRUPT

  @property
  def ok(self) -> np.ndarray:
    return np.asarray([s == OK for s in self.status], bool)

  def count(self, status: str) -> int:
    return sum(s == status for s in self.status)


def load_images(paths: list[str], size: int, *, num_threads: int = 4
                ) -> LoadedImages:
  """Decodes `paths` in order, `num_threads` at a time (PIL releases the GIL)."""
  ds = grain.MapDataset.source(paths).map(
      functools.partial(load_image, size=size))
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=4 * num_threads))
  status, pixels = [], []
  for s, img in it:
    status.append(s)
    if img is not None:
      pixels.append(img)
  stacked = (np.stack(pixels) if pixels
             else np.zeros((0, size, size, 3), np.uint8))
  return LoadedImages(stacked, status)
