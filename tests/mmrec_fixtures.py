"""Tiny MMRec-format data sets written on the fly for the tests."""

import os

import numpy as np


def write_inter(path, rows, header="userID\titemID\trating\tx_label"):
  with open(path, "w") as f:
    f.write(header + "\n")
    f.writelines("\t".join(str(v) for v in r) + "\n" for r in rows)


def make_dataset(root, num_users=24, num_items=60, per_user=8, dims=(8, 6), seed=0):
  """A learnable toy set: users like items of their own cluster.

  Writes root/toy.inter (80/10/10 split per user, x_label) and one feature
  file per entry of dims (feat0.npy, ...) whose rows carry the item cluster.
  Returns the feature file names.
  """
  rng = np.random.default_rng(seed)
  clusters = 3
  item_c = np.arange(num_items) % clusters
  rows = []
  for u in range(num_users):
    pool = np.flatnonzero(item_c == u % clusters)
    items = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
    for j, i in enumerate(items):
      label = 0 if j < len(items) - 2 else (1 if j == len(items) - 2 else 2)
      rows.append((u, int(i), int(rng.integers(0, 2)), label))
  write_inter(os.path.join(root, "toy.inter"), rows)
  names = []
  for m, d in enumerate(dims):
    centers = rng.normal(size=(clusters, d))
    feat = centers[item_c] + 0.3 * rng.normal(size=(num_items, d))
    names.append(f"feat{m}.npy")
    np.save(os.path.join(root, names[-1]), feat.astype(np.float32))
  return names
