"""Vectorized numpy renderer for synthetic product images.

Each image shows one item: a category silhouette (a distinct geometric shape
built from coordinate-grid masks), filled with the item's colour and pattern,
jittered in position / scale / mirroring, on a noisy tinted background with 1-3
random-coloured distractor blobs, plus pixel noise. Shapes are defined in a
resolution-free local frame (roughly [-1, 1]^2, y pointing down), so the same
code renders 16x16, 32x32 or 64x64 images.
"""

from __future__ import annotations

import numpy as np

# Colour name -> base RGB in [0, 1]. Hues are far apart so that colour stays
# recognisable under pattern shading, noise and background tints.
PALETTE = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.25, 0.85),
    "purple": (0.55, 0.15, 0.70),
    "pink": (0.98, 0.45, 0.70),
    "black": (0.08, 0.08, 0.08),
}

# Images are rendered in chunks of this many items to bound peak memory
# (float32 work arrays of 64x64 images for thousands of items add up).
_CHUNK = 256


def _shirt(x, y):
  body = (np.abs(x) < 0.45) & (y > -0.55) & (y < 0.9)
  sleeves = (np.abs(x) < 0.95) & (y > -0.55) & (y < -0.1)
  neck = (x / 0.22) ** 2 + ((y + 0.55) / 0.18) ** 2 < 1
  return (body | sleeves) & ~neck


def _dress(x, y):
  bodice = (np.abs(x) < 0.28) & (y > -0.85) & (y < -0.2)
  skirt = (y >= -0.2) & (y < 0.9) & (np.abs(x) < 0.28 + 0.6 * (y + 0.2) / 1.1)
  return bodice | skirt


def _shoe(x, y):
  foot = ((x - 0.1) / 0.85) ** 2 + ((y - 0.45) / 0.32) ** 2 < 1
  shaft = (x > -0.75) & (x < -0.15) & (y > -0.8) & (y < 0.45)
  return foot | shaft


def _hat(x, y):
  dome = (x ** 2 + (y - 0.25) ** 2 < 0.62 ** 2) & (y < 0.25)
  brim = (x / 0.95) ** 2 + ((y - 0.28) / 0.15) ** 2 < 1
  return dome | brim


def _bag(x, y):
  body = (np.abs(x) < 0.75) & (y > -0.15) & (y < 0.85)
  r = np.sqrt(x ** 2 + (y + 0.15) ** 2)
  handle = (r > 0.33) & (r < 0.55) & (y < -0.15)
  return body | handle


def _scarf(x, y):
  band = np.abs(y - 0.35 * np.sin(2.5 * x)) < 0.25
  fringe = (np.abs(np.abs(x) - 0.95) < 0.1) & (np.sin(40 * y) > 0)
  return ((np.abs(x) < 0.9) & band) | (fringe & band)


# Category name -> silhouette mask function of local coordinates (x, y).
SHAPES = {
    "shirt": _shirt,
    "dress": _dress,
    "shoe": _shoe,
    "hat": _hat,
    "bag": _bag,
    "scarf": _scarf,
}


def _solid(x, y, angle):
  del y, angle
  return np.zeros_like(x)


def _striped(x, y, angle):
  t = x * np.cos(angle) + y * np.sin(angle)
  return (t * 1.6) % 1.0 < 0.5


def _dotted(x, y, angle):
  del angle
  dx, dy = (x * 1.8) % 1.0 - 0.5, (y * 1.8) % 1.0 - 0.5
  return dx ** 2 + dy ** 2 < 0.3 ** 2


def _checkered(x, y, angle):
  del angle
  return (np.floor(x * 1.6) + np.floor(y * 1.6)) % 2


def _gradient(x, y, angle):
  del x, angle
  return np.clip((y + 0.9) / 1.8, 0, 1)


# Pattern name -> per-pixel blend weight in [0, 1] between the base colour and
# its secondary shade, as a function of local coordinates and stripe angle.
PATTERNS = {
    "solid": _solid,
    "striped": _striped,
    "dotted": _dotted,
    "checkered": _checkered,
    "gradient": _gradient,
}


def _by_group(group, fns, out, *args):
  """out[i] = fns[group[i]](*args[i]), evaluated one group at a time.

  Evaluating each function only on its own items keeps the cost independent of
  how many shapes / patterns there are.
  """
  for g, fn in enumerate(fns):
    idx = np.flatnonzero(group == g)
    if idx.size:
      out[idx] = fn(*(a[idx] for a in args))
  return out


def _secondary_shade(rgb):
  """Lighter shade for dark colours, darker for the rest (same hue)."""
  lum = rgb @ np.array([0.3, 0.59, 0.11], np.float32)
  lighter = rgb + (1 - rgb) * 0.55
  return np.where(lum[:, None] < 0.3, lighter, rgb * 0.45)


def render_items(
    category: np.ndarray,
    colour: np.ndarray,
    pattern: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    *,
    return_masks: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Renders one image per item.

  Args:
    category: (N,) int indices into SHAPES.
    colour: (N,) int indices into PALETTE.
    pattern: (N,) int indices into PATTERNS.
    image_size: output height = width, e.g. 16, 32, 64.
    rng: source of all randomness (jitter, background, blobs, noise).
    return_masks: also return the (N, S, S) bool silhouette masks.

  Returns:
    (N, S, S, 3) uint8 images, and masks if requested.
  """
  category, colour, pattern = (
      np.asarray(a, np.int64) for a in (category, colour, pattern))
  n, s = len(category), int(image_size)
  palette = np.array(list(PALETTE.values()), np.float32)
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  # Per-item parameters are drawn up front, one vectorized call each.
  scale = rng.uniform(0.62, 0.82, n)
  slack = (1 - 0.95 * scale) * 0.8
  centre = f32(rng.uniform(-1, 1, (n, 2)) * slack[:, None])
  scale = f32(scale)
  mirror = f32(np.where(rng.random(n) < 0.5, -1.0, 1.0))
  angle = f32(rng.choice([0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], n))
  base = f32(np.clip(palette[colour] + rng.normal(0, 0.03, (n, 3)), 0, 1))
  shade = _secondary_shade(base)
  bg_level = rng.uniform(0.25, 0.85, (n, 1))
  bg_tint = f32(np.clip(bg_level + rng.uniform(-0.08, 0.08, (n, 3)), 0, 1))
  bg_dir = rng.uniform(0, 2 * np.pi, n)
  bg_cos, bg_sin = f32(0.08 * np.cos(bg_dir)), f32(0.08 * np.sin(bg_dir))
  num_blobs = rng.integers(1, 4, n)
  blob_xy = f32(rng.uniform(-0.9, 0.9, (n, 3, 2)))
  blob_r2 = f32(rng.uniform(0.08, 0.16, (n, 3)) ** 2)
  blob_rgb = f32(rng.random((n, 3, 3)))

  grid = f32((np.arange(s) + 0.5) / s * 2 - 1)
  gy, gx = np.meshgrid(grid, grid, indexing="ij")
  images = np.empty((n, s, s, 3), np.uint8)
  masks = np.empty((n, s, s), bool)
  for lo in range(0, n, _CHUNK):
    sl = slice(lo, min(n, lo + _CHUNK))
    m = sl.stop - lo
    col = lambda v: v[sl].reshape(m, 1, 1)  # noqa: E731
    rgb = lambda v: v[sl].reshape(m, 1, 1, 3)  # noqa: E731

    # Background: tinted level + a soft linear gradient.
    img = (gx * col(bg_cos) + gy * col(bg_sin))[..., None] + rgb(bg_tint)
    # Distractor blobs go under the item so they never occlude it.
    for b in range(3):
      d2 = (gx - col(blob_xy[:, b, 0])) ** 2 + (gy - col(blob_xy[:, b, 1])) ** 2
      on = (d2 < col(blob_r2[:, b])) & (col(num_blobs) > b)
      np.copyto(img, rgb(blob_rgb[:, b]), where=on[..., None])

    # Item in its local frame, filled with colour blended by the pattern.
    x = (gx - col(centre[:, 0])) / col(scale) * col(mirror)
    y = (gy - col(centre[:, 1])) / col(scale)
    mask = _by_group(category[sl], list(SHAPES.values()),
                     np.zeros((m, s, s), bool), x, y)
    blend = _by_group(pattern[sl], list(PATTERNS.values()),
                      np.zeros((m, s, s), np.float32), x, y,
                      np.broadcast_to(col(angle), x.shape))[..., None]
    fill = rgb(base) + (rgb(shade) - rgb(base)) * blend
    np.copyto(img, fill, where=mask[..., None])

    # Pixel noise: stronger on the background, which doubles as texture.
    sigma = np.where(mask, np.float32(0.03), np.float32(0.065))[..., None]
    img += sigma * rng.standard_normal(img.shape, np.float32)
    np.clip(img * 255 + 0.5, 0, 255, out=img)
    images[sl] = img.astype(np.uint8)
    masks[sl] = mask
  return (images, masks) if return_masks else images
