"""Item image files -> what the store keeps of them (`image_bytes`: the file
at its original size, or downscaled to a maximum side) and their fixed-size
uint8 RGB arrays, decoded in parallel by grain.

Each image is fitted into a size x size square (`image_bytes.fit`). A
missing or undecodable file is not an error: it is counted and the item
skipped, as real data sets always hold a few of them.

Only the listed formats are opened (PIL is never asked to identify any
other), and an image whose header declares more than `max_pixels` pixels is
refused before its pixels are decoded. A path refused by `safe_paths`
arrives as None and is counted as refused without touching the disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings

import grain
import numpy as np
from PIL import Image

from mmjax.data import image_bytes

OK, MISSING, CORRUPT = "ok", "missing", "corrupt"
REFUSED, TOO_LARGE, UNSUPPORTED = "refused", "too large", "unsupported"
FORMATS = ("JPEG", "PNG", "WEBP")
# What a config may list (config.data.raw.image_formats has the same choices).
KNOWN_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = 4096 * 4096


def open_checked(path: str | None, formats=FORMATS, max_pixels=MAX_PIXELS
                 ) -> tuple[str, Image.Image | None]:
  """(OK, the opened, not yet decoded image) or (status, None). The caller
  closes the image."""
  if path is None:
    return REFUSED, None
  if not os.path.isfile(path):
    return MISSING, None
  try:
    img = Image.open(path, formats=tuple(formats))
  except Image.UnidentifiedImageError:
    return UNSUPPORTED, None
  except Image.DecompressionBombError:
    return TOO_LARGE, None
  except (OSError, SyntaxError, ValueError):
    return CORRUPT, None
  width, height = img.size
  if width * height > max_pixels:
    img.close()
    return TOO_LARGE, None
  return OK, img


def load_image(path: str | None, size: int, formats=FORMATS,
               max_pixels: int = MAX_PIXELS, max_side: int = 0
               ) -> tuple[str, np.ndarray | None, bytes | None]:
  """(status, (size, size, 3) uint8 or None, the bytes to store or None) of
  one image file; the pixels are those of the stored bytes."""
  status, opened = open_checked(path, formats, max_pixels)
  if opened is None:
    return status, None, None
  try:
    with opened as img, open(path, "rb") as f:
      stored = image_bytes.stored_file(f.read(), img, max_side)
    return OK, image_bytes.decode(stored, size), stored
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    # PIL reports unreadable, truncated and malformed files with these.
    return CORRUPT, None, None


@contextlib.contextmanager
def quiet_bomb_warnings():
  """PIL's DecompressionBombWarning silenced: the pixel cap above is
  stricter and counts those images. Enter it on the main thread around the
  whole decode (warning filters are process-wide, not per thread)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    yield


@dataclasses.dataclass
class LoadedImages:
  """Pixels of the images that loaded, and what happened to every file."""
  pixels: np.ndarray      # (K, size, size, 3) uint8, K = #status == OK
  status: list[str]       # per input path: OK or why it was skipped
  files: list[bytes]      # (K,) what the store keeps of each image

  @property
  def ok(self) -> np.ndarray:
    return np.asarray([s == OK for s in self.status], bool)

  def count(self, status: str) -> int:
    return sum(s == status for s in self.status)


def load_images(paths: list[str | None], size: int, *, formats=FORMATS,
                max_pixels: int = MAX_PIXELS, max_side: int = 0,
                num_threads: int = 4) -> LoadedImages:
  """Decodes `paths` in order, `num_threads` at a time (PIL releases the GIL);
  a None path is one refused by safe_paths."""
  load = functools.partial(load_image, size=size, formats=formats,
                           max_pixels=max_pixels, max_side=max_side)
  # By index: grain would drop a None element instead of mapping it.
  ds = grain.MapDataset.range(len(paths)).map(lambda i: load(paths[i]))
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=4 * num_threads))
  status, pixels, files = [], [], []
  with quiet_bomb_warnings():
    for s, img, stored in it:
      status.append(s)
      if img is not None:
        pixels.append(img)
        files.append(stored)
  stacked = (np.stack(pixels) if pixels
             else np.zeros((0, size, size, 3), np.uint8))
  return LoadedImages(stacked, status, files)
