"""Matplotlib figures for the report and `mmjax recommend --png`.

Everything renders to PNG bytes, so the HTML report can inline it (base64)
and the CLI can write it to a file.
"""

import base64
import io

import numpy as np
from etils import epath

from mmjax.train import reporting


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  _pyplot().close(fig)
  return buf.getvalue()


def data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_png(image: np.ndarray, size: int = 96) -> bytes:
  """One uint8 (H, W, 3) image, upscaled (nearest) to `size` pixels."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).resize((size, size), Image.NEAREST).save(buf, "PNG")
  return buf.getvalue()


def curves_png(metrics_path: str) -> bytes | None:
  """reporting.plot_curves of metrics.jsonl (every logged term), or None."""
  if not epath.Path(metrics_path).exists() or not reporting.read_metrics(metrics_path):
    return None
  buf = io.BytesIO()
  reporting.plot_curves(metrics_path, buf)
  return buf.getvalue()


def image_grid_png(rows: list[tuple[str, list[tuple[np.ndarray, str]]]]) -> bytes:
  """Rows of captioned images, e.g. [("history", [(img, "item 3"), ...]), ...]."""
  plt = _pyplot()
  cols = max(len(cells) for _, cells in rows)
  fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.9 * len(rows)),
                           squeeze=False)
  for r, (label, cells) in enumerate(rows):
    for c in range(cols):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(cells):
        ax.axis("off")
        continue
      image, caption = cells[c]
      ax.imshow(image, interpolation="nearest")
      ax.set_xlabel(caption, fontsize=6, wrap=True)
    axes[r, 0].set_ylabel(label, fontsize=9)
  fig.tight_layout()
  return _png(fig)


def projection_png(panels: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
  """Side-by-side 2-D scatter plots of (title, text points, image points)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4),
                           squeeze=False)
  for ax, (title, text, image) in zip(axes[0], panels):
    ax.scatter(text[:, 0], text[:, 1], s=6, alpha=0.6, label="text")
    ax.scatter(image[:, 0], image[:, 1], s=6, alpha=0.6, label="image")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _png(fig)
