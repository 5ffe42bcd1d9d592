"""Images as the item records store them: encoded files, decoded to the
model's square size where they are read.

The store keeps each image once, as an encoded file: an item's own file as
it was (at its original size), or re-encoded smaller when its longest side
is over a configured maximum; an in-memory image (a rendered synthetic one)
as its pixels, in a binary PPM (an uncompressed standard format that decodes
as a copy: such images hardly compress, and PNG's decode would cost more
than the rest of a batch's item join). `decode` turns stored bytes into the
model's (size, size, 3) uint8: the image fitted into the square, keeping its aspect
ratio, centred on grey (grey is ~0 after `normalize_images`, so padding
carries no signal). An image already of that square size decodes to its
exact pixels.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps

_PAD_GREY = (128, 128, 128)
# Formats a stored image may have: everything ingestion may keep verbatim.
STORED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# The header `encode_array` writes: binary RGB, 8 bits per channel.
_PPM_HEADER = re.compile(rb"P6\n(\d+) (\d+)\n255\n")
# Re-encoding a downscaled photo: near-lossless, still a fraction of PNG.
_JPEG_QUALITY = 95


def fit(img: Image.Image, size: int) -> np.ndarray:
  """An opened image -> (size, size, 3) uint8: EXIF orientation applied,
  fitted into the square and centred on grey. JPEGs decode at a reduced
  scale when they are much larger than size (PIL's draft mode)."""
  img.draft("RGB", (size, size))
  img = ImageOps.exif_transpose(img).convert("RGB")
  # ImageOps.pad returns an exact copy of an image already size x size.
  img = ImageOps.pad(img, (size, size), method=Image.Resampling.BICUBIC,
                     color=_PAD_GREY)
  return np.asarray(img, np.uint8)


def decode(data: bytes, size: int) -> np.ndarray:
  """Stored image bytes -> (size, size, 3) uint8."""
  header = _PPM_HEADER.match(data)
  if header is not None:
    w, h = int(header[1]), int(header[2])
    pixels = np.frombuffer(data, np.uint8, offset=header.end()).reshape(h, w, 3)
    if (h, w) == (size, size):
      return pixels.copy()
    return fit(Image.fromarray(pixels, "RGB"), size)
  with Image.open(io.BytesIO(data), formats=STORED_FORMATS) as img:
    return fit(img, size)


def decode_all(stored, size: int) -> np.ndarray:
  """(K, size, size, 3) uint8 of K stored images."""
  out = np.empty((len(stored), size, size, 3), np.uint8)
  for k, data in enumerate(stored):
    out[k] = decode(data, size)
  return out


def encode_array(pixels: np.ndarray) -> bytes:
  """(H, W, 3) uint8 -> a binary PPM file of exactly those pixels."""
  h, w, c = pixels.shape
  if c != 3:
    raise ValueError(f"want (H, W, 3) pixels, got {pixels.shape}")
  return b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(
      pixels, np.uint8).tobytes()


def stored_file(data: bytes, img: Image.Image, max_side: int) -> bytes:
  """What the store keeps of an image file (`data`, opened as `img`): the
  file itself, or, when its longest side is over max_side (0: no maximum),
  the image downscaled to that side, re-encoded (JPEG stays JPEG; any
  other format becomes PNG). EXIF orientation is applied before a
  downscale; a file kept as it is keeps its EXIF for `decode`."""
  if not max_side or max(img.size) <= max_side:
    return data
  fmt = img.format
  img.draft("RGB", (max_side, max_side))
  small = ImageOps.exif_transpose(img).convert("RGB")
  small.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
  buf = io.BytesIO()
  if fmt == "JPEG":
    small.save(buf, format="JPEG", quality=_JPEG_QUALITY)
  else:
    small.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()
