"""Post-training transforms of the item-ID table, chosen on valid.

Item vectors are normalize(content + ID). With a dozen or so train
interactions an item, the ID rows fit the train split beyond what carries
over to held-out interactions. Two ways to keep the part that carries over,
both picked after training by valid recall@20
(`postprocess.choose.evaluate_item_id_tables`, from `postprocess.item_id_scales`
and `postprocess.item_id_clusters`):

- scale: ID' = s * ID. Shrinks the whole row toward the content.
- clusters: ID' = a * c(i) + b * (ID_i - c(i)), where c(i) is the mean ID row
  of item i's k-means cluster. The content towers already carry what the text
  and image share, so the ID rows mostly encode what the interactions reveal
  beyond it, which tends to form a few clusters. The centroid pools that
  evidence over many items; b < a shrinks the item-specific rest, most of
  which is noise.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

ITEM_ID_TABLE = "rec/item_id_embed/embedding"   # Its parameter path.


def _path(keypath) -> str:
  """'rec/item_id_embed/embedding' for a leaf of nnx.State params."""
  return jax.tree_util.keystr(keypath, simple=True, separator="/").removesuffix("/value")


@dataclasses.dataclass(frozen=True)
class TableTransform:
  """ID' = scale * ID (clusters 0), or scale * c(i) + residual * (ID_i - c(i))
  with c(i) the centroid of item i's cluster among `clusters` k-means ones."""
  clusters: int = 0
  scale: float = 1.0
  residual: float = 1.0

  def __post_init__(self):
    if self.clusters == 0 and self.residual != self.scale:
      raise ValueError("without clusters the residual scale is the scale")

  @classmethod
  def scaled(cls, s: float) -> "TableTransform":
    return cls(0, float(s), float(s))

  @property
  def label(self) -> str:
    if not self.clusters:
      return f"{self.scale:g}"
    return f"k{self.clusters}:{self.scale:g}/{self.residual:g}"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "TableTransform":
    return cls(int(d["clusters"]), float(d["scale"]), float(d["residual"]))

  def apply(self, table: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The transformed table; `labels` (from `cluster_labels(table,
    self.clusters)`) saves recomputing the clustering."""
    table = np.asarray(table, np.float32)
    if not self.clusters:
      return table * np.float32(self.scale)
    labels = cluster_labels(table, self.clusters) if labels is None else labels
    c = np.zeros_like(table)
    for k in np.unique(labels):
      c[labels == k] = table[labels == k].mean(0)
    return (self.scale * c + self.residual * (table - c)).astype(np.float32)


IDENTITY = TableTransform()


def candidates(scales, clusters) -> list[TableTransform]:
  """The identity first (it wins ties), then each scale, then for every
  cluster count each (centroid scale a, residual scale b) with a from
  scales + [1] and b from [0] + scales, b < a."""
  grid = sorted({float(s) for s in scales} | {1.0})
  out = [IDENTITY] + [TableTransform.scaled(s) for s in grid if s != 1.0]
  residuals = sorted({0.0} | set(grid))
  for k in clusters:
    out += [TableTransform(int(k), a, b) for a in grid for b in residuals if b < a]
  return out


def describe(report: dict) -> str:
  """One line on postprocess.json's `item_id_table`: the choice and the
  valid recall@20 of the identity and the best few others."""
  chosen = TableTransform.from_dict(report["chosen"])
  valid = report["recall_at_20"]["valid"]
  what = ("as trained" if chosen == IDENTITY else
          f"scaled by {chosen.scale:g}" if not chosen.clusters else
          f"{chosen.clusters} k-means clusters, centroids x{chosen.scale:g}, "
          f"rest x{chosen.residual:g}")
  top = sorted(valid, key=valid.get, reverse=True)[:3]
  shown = ", ".join(f"{k}: {valid[k]:.4f}" for k in dict.fromkeys(["1"] + top))
  return (f"item-ID table {what} (valid recall@20 of {len(valid)} tried, best: "
          f"{shown})")


def id_table(params) -> np.ndarray | None:
  """The item-ID table of params, on the host, or None without one."""
  found = [x for k, x in jax.tree_util.tree_flatten_with_path(params)[0]
           if _path(k) == ITEM_ID_TABLE]
  return np.asarray(jax.device_get(found[0])) if found else None


def with_id_table(params, table: np.ndarray):
  """params with the item-ID table replaced by `table` (same sharding)."""
  def put(k, x):
    if _path(k) != ITEM_ID_TABLE:
      return x
    return jax.device_put(np.asarray(table, x.dtype), x.sharding)
  return jax.tree_util.tree_map_with_path(put, params)


def transform_params(params, transform: TableTransform, labels=None):
  """params with `transform` applied to the item-ID table."""
  if transform == IDENTITY:
    return params
  return with_id_table(params, transform.apply(id_table(params), labels))


def cluster_labels(table: np.ndarray, k: int) -> np.ndarray:
  """k-means labels of the table's rows by direction (rows L2-normalized:
  the ID rows' norms vary with how many interactions fit them)."""
  table = np.asarray(table, np.float64)
  return kmeans(table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True),
                                   1e-12), k)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 4,
           iters: int = 100) -> np.ndarray:
  """(N,) cluster labels of the rows of x: Lloyd's algorithm from k-means++
  seeds, the lowest-inertia of `restarts` runs. Deterministic for a seed."""
  x = np.asarray(x, np.float64)
  n = len(x)
  if not 1 <= k <= n:
    raise ValueError(f"k={k} clusters for {n} rows")
  rng = np.random.default_rng(seed)
  sq = (x * x).sum(1)
  best, best_inertia = None, np.inf
  for _ in range(restarts):
    centers = x[[rng.integers(n)]]
    while len(centers) < k:   # k-means++: far points are likelier seeds.
      d2 = np.maximum(sq[:, None] - 2 * x @ centers.T + (centers ** 2).sum(1), 0).min(1)
      p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
      centers = np.vstack([centers, x[rng.choice(n, p=p)]])
    labels = None
    for _ in range(iters):
      d2 = sq[:, None] - 2 * x @ centers.T + (centers ** 2).sum(1)
      new = d2.argmin(1)
      if labels is not None and np.array_equal(new, labels):
        break
      labels = new
      for j in range(k):
        members = x[labels == j]
        # An emptied cluster restarts at the point farthest from its center.
        centers[j] = members.mean(0) if len(members) else x[d2.min(1).argmax()]
    inertia = np.maximum(d2[np.arange(n), labels], 0).sum()
    if inertia < best_inertia:
      best, best_inertia = labels, inertia
  return best
