"""Representation diagnostics of the aligned spaces: rank and modality gap.

  * `effective_rank` (RankMe, Garrido et al. 2023): exp of the entropy of the
    normalized singular values of the (N, d) embedding matrix, uncentered as
    RankMe defines it. 1 for a collapsed (rank-one) set, d for a set spread
    evenly over every direction; a falling value is the early sign of the
    dimensional collapse that alignment without negatives invites.
  * `modality_gap` (Liang et al. 2022, "Mind the Gap"): the distance between
    the centroids of the two modalities' unit vectors. Contrastive models keep
    the modalities in separate cones; 0 means their centroids coincide.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7   # RankMe's epsilon: keeps log(p) finite for zero singular values.


def effective_rank(x) -> float:
  """exp(-sum_k p_k log p_k), p_k = s_k / sum(s) + eps, s the singular values
  of the (N, d) matrix `x` (uncentered). 0 for an all-zero matrix."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"expected an (N, d) matrix, got shape {x.shape}")
  s = np.linalg.svd(x, compute_uv=False)
  if s.sum() <= 0:
    return 0.0
  p = s / s.sum() + _EPS
  return float(np.exp(-np.sum(p * np.log(p))))


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def modality_gap(z_text, z_image) -> float:
  """||mean(unit z_text) - mean(unit z_image)||: rows are normalized first."""
  return float(np.linalg.norm(_unit(z_text).mean(0) - _unit(z_image).mean(0)))


def representation_report(z_text, z_image) -> dict:
  """{"text": {"effective_rank"}, "image": {"effective_rank"}, "modality_gap",
  "dim"} of the two modalities' (N, d) embeddings of the same N items."""
  return {"text": {"effective_rank": effective_rank(z_text)},
          "image": {"effective_rank": effective_rank(z_image)},
          "modality_gap": modality_gap(z_text, z_image),
          "dim": int(np.shape(z_text)[-1])}
