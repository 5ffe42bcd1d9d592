"""`mmjax export`: a run's user and item embeddings as .npy and parquet.

  mmjax export --workdir runs/demo [--out runs/demo/export]

Writes into the out dir (default <workdir>/export):
  users.npy           (U, dim) user vectors
  items.npy           (N, dim) fused item vectors (what recommend scores)
  items_text.npy      (N, dim) aligned text vectors
  items_image.npy     (N, dim) aligned image vectors (catalogs with images)
  id_map.json         row r of each .npy -> user_id / item_id (+ item text):
                      the data's own ids (SKUs, user names; the dense ints
                      for data without them)
  users.parquet       user_id, embedding
  items.parquet       item_id, text, embedding, text_embedding[, image_embedding]
  scoring_users.npy   (U, d') and scoring_items.npy (N, d'): their dot
                      products are recommend's scores (temperature and item
                      bias in, and the user refit if postprocess.json chose one)
  export.json         what was written: step, shapes, files
The other vectors are unit-norm; a user-item dot product is their cosine.
A feature-graph run has no towers: users.npy and items.npy are its scoring
vectors and there are no per-modality files.
"""

import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmjax.errors import MmjaxError
from mmjax.train.atomic import atomic_write

# item_embeddings key -> (.npy name, parquet column).
_ITEM_VECTORS = {"item": ("items", "embedding"),
                 "z_text": ("items_text", "text_embedding"),
                 "z_image": ("items_image", "image_embedding")}


def _vectors(x: np.ndarray) -> pa.Array:
  """(n, d) float32 -> a parquet column of fixed-size lists."""
  x = np.ascontiguousarray(x, np.float32)
  return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def export(model, out_dir: str) -> dict:
  """Writes the embeddings of a model of `mmjax.load`; returns the manifest."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise MmjaxError(f"cannot create export dir {out_dir}: {e.strerror}") from None
  users = model.user_embeddings
  items = {k: v for k, v in model.item_embeddings.items() if k in _ITEM_VECTORS}
  # The data's own ids (the dense ints for data without them), row order.
  user_ids = model.user_map.to_list()
  item_ids = model.item_map.to_list()
  # Each file whole or not at all (temp file + rename): a killed export
  # leaves the previous one's files.
  out = lambda name: atomic_write(os.path.join(out_dir, name), "wb")
  files = {"users.npy": users.shape}
  with out("users.npy") as f:
    np.save(f, users)
  for key, vectors in items.items():
    name = _ITEM_VECTORS[key][0] + ".npy"
    with out(name) as f:
      np.save(f, vectors)
    files[name] = vectors.shape
  for name, vectors in zip(("scoring_users.npy", "scoring_items.npy"),
                           model.scoring_vectors):
    with out(name) as f:
      np.save(f, vectors)
    files[name] = vectors.shape
  with atomic_write(os.path.join(out_dir, "id_map.json")) as f:
    json.dump({"user_id": user_ids, "item_id": item_ids,
               "item_text": list(model.item_text)}, f)
  with out("users.parquet") as f:
    pq.write_table(pa.table({"user_id": model.user_map.column(),
                             "embedding": _vectors(users)}), f)
  columns = {"item_id": model.item_map.column(), "text": pa.array(model.item_text)}
  columns.update({_ITEM_VECTORS[k][1]: _vectors(v) for k, v in items.items()})
  with out("items.parquet") as f:
    pq.write_table(pa.table(columns), f)
  files.update({"id_map.json": None, "users.parquet": (len(user_ids),),
                "items.parquet": (len(item_ids),)})
  manifest = dict(workdir=model.workdir, step=model.step,
                  num_users=model.num_users, num_items=model.num_items,
                  dim=int(users.shape[1]),
                  files={k: list(v) if v else None for k, v in files.items()})
  with atomic_write(os.path.join(out_dir, "export.json")) as f:
    json.dump(manifest, f, indent=2)
  return manifest


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Export user and item embeddings.")
  p.add_argument("--workdir", required=True, help="A finished run's workdir.")
  p.add_argument("--out", default=None, help="Output dir (default <workdir>/export).")
  return p


def run(args) -> None:
  from mmjax.api import load
  model = load(args.workdir)
  out = args.out or os.path.join(model.workdir, "export")
  out = out if "://" in out else os.path.abspath(out)
  manifest = export(model, out)
  print(f"exported step {manifest['step']}: {manifest['num_users']} users, "
        f"{manifest['num_items']} items, dim {manifest['dim']} -> {out}")
  for name, shape in manifest["files"].items():
    print(f"  {name:18s} {tuple(shape) if shape else ''}")
