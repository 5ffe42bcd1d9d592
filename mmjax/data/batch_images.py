"""The model's float32 images of a uint8 batch, in a few whole-batch numpy
passes: the train stream's per-batch image transform.

Gives exactly the values of `features.model_images` (`normalize_images`,
then `augment_images` with the same draws): the same float32 operations in
the same order, only batched. A per-image 256-entry lookup table (that
function's way) costs more here than the arithmetic, as numpy's `take`
first widens every uint8 index to intp.
"""

import numpy as np

_TO_UNIT = np.float32(2.0 / 255.0)
_ONE = np.float32(1.0)
# Images per float pass: a chunk's float32 copy stays in a core's L2 cache
# between the passes instead of streaming through memory each time.
_CHUNK_BYTES = 1 << 20


def batch_model_images(images: np.ndarray, rng: np.random.Generator | None,
                       max_shift: int = 2) -> np.ndarray:
  """uint8 (B, H, W, C) -> float32 in [-1, 1]; with an rng, each image is
  shifted by up to max_shift px (edge padding) and jittered in brightness
  and contrast, drawing from rng as `features.model_images` does."""
  if rng is None:
    return _normalize(images, np.empty(images.shape, np.float32))
  b, h, w, c = images.shape
  m = max_shift
  dy, dx = rng.integers(0, 2 * m + 1, (2, b))
  scale = rng.uniform(0.9, 1.1, (b, 1, 1, 1)).astype(np.float32)
  shift = rng.uniform(-0.1, 0.1, (b, 1, 1, 1)).astype(np.float32)
  padded = _edge_pad(images, m)
  crops = np.empty_like(images)
  for k, (y, x) in enumerate(zip(dy.tolist(), dx.tolist())):
    crops[k] = padded[k, y:y + h, x:x + w]
  out = np.empty(images.shape, np.float32)
  step = max(1, _CHUNK_BYTES // (4 * h * w * c))
  for lo in range(0, b, step):
    o = _normalize(crops[lo:lo + step], out[lo:lo + step])
    np.multiply(o, scale[lo:lo + step], out=o)
    np.add(o, shift[lo:lo + step], out=o)
    np.clip(o, -_ONE, _ONE, out=o)
  return out


def _normalize(images, out):
  """`features.normalize_images` into out: uint8 [0, 255] -> [-1, 1]."""
  np.multiply(images, _TO_UNIT, out=out, dtype=np.float32)
  return np.subtract(out, _ONE, out=out)


def _edge_pad(images, m):
  """np.pad(mode="edge") of the two spatial axes, without its per-call
  bookkeeping."""
  b, h, w, c = images.shape
  out = np.empty((b, h + 2 * m, w + 2 * m, c), images.dtype)
  out[:, m:m + h, m:m + w] = images
  out[:, :m, m:m + w] = images[:, :1]
  out[:, m + h:, m:m + w] = images[:, -1:]
  out[:, :, :m] = out[:, :, m:m + 1]
  out[:, :, m + w:] = out[:, :, m + w - 1:m + w]
  return out
