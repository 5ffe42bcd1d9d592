"""`mmjax features`: MMRec-style item feature files from pretrained towers.

Reads a raw items table (.tsv/.csv) whose ids are exactly 0..N-1, runs the
text column through an HF BERT-family folder (e.g. all-MiniLM-L6-v2) and
optionally an image column through an HF ViT/CLIP folder, both loaded by
`hf_import`, and writes `text_feat.npy` / `image_feat.npy` (float32, row i =
item i) plus `features.json` describing how they were made:

  mmjax features --items items.tsv --id_column itemID --text_column title \
      --text_model DIR --max_length 64 --pooling mean --out DIR

Text features are the masked mean (or pooler output) over tokens,
L2-normalized unless --no-normalize: what sentence-transformers computes.
"""

import argparse
import csv
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import batched_apply
from mmjax.models.encoders import hf_import


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="mmjax features",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--items", required=True, help=".tsv or .csv items table.")
  p.add_argument("--id_column", default="itemID")
  p.add_argument("--text_column", help="Column of item text.")
  p.add_argument("--text_model", help="HF BERT-family checkpoint folder.")
  p.add_argument("--image_column", help="Column of image paths.")
  p.add_argument("--image_root", default="", help="Image paths are relative to it.")
  p.add_argument("--image_model", help="HF ViT / CLIP checkpoint folder.")
  p.add_argument("--max_length", type=int, default=64)
  p.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                 help="Text pooling: masked token mean or the BERT pooler.")
  p.add_argument("--image_pooling", choices=("cls", "mean"), default="cls",
                 help="Image pooling: the (pooled) CLS token or patch mean.")
  p.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                 default=True, help="L2-normalize each row.")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--out", required=True, help="Output folder.")
  return p


def read_items(path: str, id_column: str, columns: list[str]) -> dict:
  """{column: values in id order} of a table whose ids are 0..N-1, unique."""
  if not os.path.isfile(path):
    raise MmjaxError(f"items file not found: {path}")
  delimiter = "\t" if path.endswith((".tsv", ".inter")) else ","
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter=delimiter)
    fields = reader.fieldnames or []
    for column in [id_column] + columns:
      if column not in fields:
        raise MmjaxError(f"{path}: no column {column!r} (columns: {fields})")
    rows = list(reader)
  ids = []
  for line, row in enumerate(rows, start=2):
    try:
      ids.append(int(row[id_column]))
    except (TypeError, ValueError):
      raise MmjaxError(f"{path}:{line}: {id_column}={row[id_column]!r} is not "
                       "an integer") from None
  ids = np.asarray(ids, np.int64)
  order = np.argsort(ids, kind="stable")
  if not np.array_equal(ids[order], np.arange(len(ids))):
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1][:5].tolist()
    missing = sorted(set(range(len(ids))) - set(ids.tolist()))[:5]
    raise MmjaxError(f"{path}: {id_column} must be 0..{len(ids) - 1}, each once "
                     f"(MMRec row order); duplicated: {dup}, missing: {missing}")
  return {c: [rows[i][c] for i in order] for c in columns}


def _unit_rows(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _bar(n: int, desc: str) -> tqdm:
  return tqdm(total=n, desc=desc, unit="item", dynamic_ncols=True)


def _apply(fn, arrays, batch_size: int, bar: tqdm) -> np.ndarray:
  """`batched_apply`, advancing `bar` by each batch's real (unpadded) rows."""
  n, done = len(arrays[0]), [0]

  def counted(*xs):
    out = fn(*xs)
    step = min(len(xs[0]), n - done[0])
    done[0] += step
    bar.update(step)
    return out
  return batched_apply(counted, arrays, batch_size)


def _pooled_fn(module, normalize: bool):
  """jitted inputs -> pooled rows; weights are an argument, not constants."""
  graphdef, state = nnx.split(module)

  @jax.jit
  def pooled(state, *inputs):
    _, out = nnx.merge(graphdef, state)(*inputs)
    return _unit_rows(out) if normalize else out
  return functools.partial(pooled, state)


def text_features(texts: list[str], model_dir: str, *, max_length: int,
                 pooling: str, normalize: bool, batch_size: int) -> np.ndarray:
  """(N, D) float32 features of `texts` with the folder's tokenizer + BERT."""
  tokens, mask = TextTokenizer(model_dir, max_length).encode_all(texts)
  fn = _pooled_fn(hf_import.load_text_encoder(model_dir, pooling=pooling),
                  normalize)
  # Rows run cut to their bucket's longest text (padding changes nothing
  # under the mask): short titles then cost a fraction of max_length.
  lengths = mask.sum(axis=1)
  buckets = sorted({min(max_length, _bucket(n)) for n in lengths.tolist()})
  out = np.zeros((len(texts), 0), np.float32)
  with _bar(len(texts), "text") as bar:
    lower = 0
    for upper in buckets:
      rows = np.nonzero((lengths > lower) & (lengths <= upper))[0]
      lower = upper
      if not len(rows):
        continue
      feats = _apply(fn, (tokens[rows, :upper], mask[rows, :upper]),
                     batch_size, bar)
      if not out.shape[1]:
        out = np.zeros((len(texts), feats.shape[1]), np.float32)
      out[rows] = feats
  return out


def _bucket(length: int) -> int:
  """The next power of two >= length (>= 8): few distinct compiled shapes."""
  return max(8, 1 << (int(length) - 1).bit_length())


class ImageLoader:
  """Reads, resizes and normalizes the images of given rows, as the
  checkpoint's HF image processor does (NHWC for our ViT)."""

  def __init__(self, paths: list[str], root: str, model_dir: str):
    import transformers
    self.paths, self.root = paths, root
    size = hf_import.image_config_from_hf(model_dir)["image_size"]
    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
      self.processor = transformers.AutoImageProcessor.from_pretrained(
          model_dir, local_files_only=True)
    else:   # A bare checkpoint: plain resize, the architecture's mean/std.
      mean, std = hf_import.image_normalization(model_dir)
      self.processor = transformers.ViTImageProcessor(
          size=dict(height=size, width=size), image_mean=mean, image_std=std)
    self.missing: set[int] = set()   # Rows whose image was unreadable.

  def __call__(self, rows: np.ndarray) -> np.ndarray:
    from PIL import Image
    images, ok = [], []
    for row in rows.tolist():
      file = os.path.join(self.root, self.paths[row])
      try:
        images.append(Image.open(file).convert("RGB"))
        ok.append(True)
      except (OSError, ValueError):
        images.append(Image.new("RGB", (8, 8)))
        ok.append(False)
        self.missing.add(row)
    pixels = self.processor(images=images, return_tensors="np")["pixel_values"]
    return pixels.transpose(0, 2, 3, 1).astype(np.float32), np.asarray(ok)


def image_features(paths: list[str], root: str, model_dir: str, *,
                  pooling: str, normalize: bool,
                  batch_size: int) -> tuple[np.ndarray, list[int]]:
  """(N, D) float32 image features and the rows whose image was unreadable
  (their row is zeros)."""
  loader = ImageLoader(paths, root, model_dir)
  model_fn = _pooled_fn(
      hf_import.load_image_encoder(model_dir, pooling=pooling), normalize)

  def fn(rows):
    pixels, ok = loader(rows)
    return np.where(ok[:, None], np.asarray(model_fn(pixels)), 0.0)

  with _bar(len(paths), "image") as bar:
    feats = _apply(fn, (np.arange(len(paths)),), batch_size, bar)
  return feats.astype(np.float32), sorted(loader.missing)


def run(args) -> dict:
  """Writes the feature files and features.json; returns the JSON record."""
  if not args.text_column and not args.image_column:
    raise MmjaxError("give --text_column and/or --image_column")
  if bool(args.text_column) != bool(args.text_model):
    raise MmjaxError("--text_column and --text_model go together")
  if bool(args.image_column) != bool(args.image_model):
    raise MmjaxError("--image_column and --image_model go together")
  if args.max_length <= 0 or args.batch_size <= 0:
    raise MmjaxError("--max_length and --batch_size must be > 0")
  columns = [c for c in (args.text_column, args.image_column) if c]
  items = read_items(args.items, args.id_column, columns)
  os.makedirs(args.out, exist_ok=True)
  record = dict(items=os.path.abspath(args.items), id_column=args.id_column,
                num_items=len(items[columns[0]]), normalize=args.normalize,
                backend=jax.default_backend(), files={})
  if args.text_column:
    t0 = time.time()
    feats = text_features(items[args.text_column], args.text_model,
                         max_length=args.max_length, pooling=args.pooling,
                         normalize=args.normalize, batch_size=args.batch_size)
    np.save(os.path.join(args.out, "text_feat.npy"), feats)
    record["files"]["text_feat.npy"] = dict(
        column=args.text_column, model=os.path.abspath(args.text_model),
        max_length=args.max_length, pooling=args.pooling, shape=list(feats.shape),
        seconds=round(time.time() - t0, 2))
  if args.image_column:
    t0 = time.time()
    feats, missing = image_features(
        items[args.image_column], args.image_root, args.image_model,
        pooling=args.image_pooling, normalize=args.normalize,
        batch_size=args.batch_size)
    np.save(os.path.join(args.out, "image_feat.npy"), feats)
    record["files"]["image_feat.npy"] = dict(
        column=args.image_column, root=os.path.abspath(args.image_root),
        model=os.path.abspath(args.image_model), pooling=args.image_pooling,
        shape=list(feats.shape),
        unreadable_images=len(missing), unreadable_rows=missing[:100],
        seconds=round(time.time() - t0, 2))
    if missing:
      print(f"mmjax features: {len(missing)} unreadable image(s); their rows "
            "are zeros (listed in features.json)")
  with open(os.path.join(args.out, "features.json"), "w") as f:
    json.dump(record, f, indent=2)
  return record
