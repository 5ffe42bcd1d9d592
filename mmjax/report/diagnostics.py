"""Alignment diagnostics of paired text/image embeddings (one row per item).

modality gap   ||mean(z_text) - mean(z_image)||, the distance between the two
               modalities' centroids (Liang et al. 2022, "Mind the Gap");
MMD^2          multi-kernel Gaussian MMD between the two sets (the training
               loss term, mmjax/losses/alignment.py), on a fixed subsample;
paired cosine  mean cos(z_text_i, z_image_i) of an item's own two views;
t2i R@K        text -> image retrieval recall (mmjax/eval/retrieval.py).
"""

import numpy as np

from mmjax.eval.retrieval import retrieval_recall
from mmjax.losses.alignment import mmd


def _subsample(n: int, max_items: int, seed: int) -> np.ndarray:
  if n <= max_items:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))


def alignment_diagnostics(z_text: np.ndarray, z_image: np.ndarray, *,
                          max_items: int = 1024, seed: int = 0) -> dict:
  """The four numbers above, as floats (same subsample for every model)."""
  idx = _subsample(len(z_text), max_items, seed)
  t = np.asarray(z_text, np.float32)[idx]
  i = np.asarray(z_image, np.float32)[idx]
  recall = retrieval_recall(t, i, ks=(1, 10))
  return {
      "modality_gap": float(np.linalg.norm(t.mean(0) - i.mean(0))),
      "mmd": float(mmd(t, i)),
      "paired_cosine": float(np.mean(np.sum(t * i, axis=1))),
      "t2i_r@1": recall["r@1"],
      "t2i_r@10": recall["r@10"],
  }


def pca_2d(z_text: np.ndarray, z_image: np.ndarray, *, max_items: int = 1024,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Both sets projected on the top-2 principal axes of their union."""
  idx = _subsample(len(z_text), max_items, seed)
  t = np.asarray(z_text, np.float64)[idx]
  i = np.asarray(z_image, np.float64)[idx]
  both = np.concatenate([t, i])
  mean = both.mean(0)
  _, _, vt = np.linalg.svd(both - mean, full_matrices=False)
  axes = vt[:2].T
  return (t - mean) @ axes, (i - mean) @ axes
