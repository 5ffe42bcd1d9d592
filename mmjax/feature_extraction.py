"""`mmjax features`: MMRec-style item feature files from pretrained towers.

Reads a raw items table (.tsv/.csv) whose ids are 0..N-1 (rows in id order)
or the items' own ids such as SKUs (rows in file order), runs the
text column through an HF BERT-family folder (e.g. all-MiniLM-L6-v2) and
optionally an image column through an HF ViT/CLIP folder, both loaded by
`hf_import`, and writes `text_feat.npy` / `image_feat.npy` (float32, row i =
item i), `item_ids.json` (row i's id) and `features.json` describing how
they were made:

  mmjax features --items items.tsv --id_column itemID --text_column title \
      --text_model DIR --max_length 64 --pooling mean --out DIR

Text features are the masked mean (or pooler output) over tokens,
L2-normalized unless --no-normalize: what sentence-transformers computes.

Image paths must stay inside --image_root after symlinks (absolute ones
inside --absolute_image_root); others are refused, never opened. Only
--image_formats are opened, and images over --max_image_pixels are skipped
before decoding. A skipped image's row is zeros.
"""

import argparse
import collections
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from mmjax.data import image_files, safe_paths
from mmjax.data.features import TextTokenizer
from mmjax.data.items_table import read_items
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import batched_apply
from mmjax.models import pretrained
from mmjax.models.encoders import hf_import


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="mmjax features",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--items", required=True, help=".tsv or .csv items table.")
  p.add_argument("--id_column", default="itemID")
  p.add_argument("--text_column", help="Column of item text.")
  p.add_argument("--text_model", help="HF BERT-family checkpoint folder.")
  p.add_argument("--image_column", help="Column of image paths.")
  p.add_argument("--image_root", default="", help="Image paths are relative "
                 "to it and must stay inside it.")
  p.add_argument("--absolute_image_root", default="", help="Absolute image "
                 "paths are read only inside this folder; default: refused.")
  p.add_argument("--image_formats", default=",".join(image_files.FORMATS),
                 help="The only image formats opened (PIL names).")
  p.add_argument("--max_image_pixels", type=int, default=image_files.MAX_PIXELS,
                 help="Larger images are skipped before decoding.")
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

  def __init__(self, paths: list[str], root: str, model_dir: str, *,
               absolute_root: str = "", formats=image_files.FORMATS,
               max_pixels: int = image_files.MAX_PIXELS):
    import transformers
    # Resolved up front: a refused path (None) is never opened.
    self.files = [safe_paths.inside(root or ".", p, absolute_root=absolute_root)
                  for p in paths]
    self.formats, self.max_pixels = tuple(formats), max_pixels
    size = hf_import.image_config_from_hf(model_dir)["image_size"]
    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
      self.processor = transformers.AutoImageProcessor.from_pretrained(
          model_dir, local_files_only=True)
    else:   # A bare checkpoint: plain resize, the architecture's mean/std.
      mean, std = hf_import.image_normalization(model_dir)
      self.processor = transformers.ViTImageProcessor(
          size=dict(height=size, width=size), image_mean=mean, image_std=std)
    self.skipped: dict[int, str] = {}   # Row -> why its image was skipped.

  def _read(self, row: int):
    """The row's RGB image, or None (the reason is in self.skipped)."""
    status, opened = image_files.open_checked(self.files[row], self.formats,
                                              self.max_pixels)
    if opened is not None:
      try:
        with opened:
          return opened.convert("RGB")
      except (OSError, SyntaxError, ValueError):
        status = image_files.CORRUPT
    self.skipped[row] = status
    return None

  def __call__(self, rows: np.ndarray) -> np.ndarray:
    from PIL import Image
    images, ok = [], []
    with image_files.quiet_bomb_warnings():
      for row in rows.tolist():
        image = self._read(row)
        ok.append(image is not None)
        images.append(image if image is not None else Image.new("RGB", (8, 8)))
    pixels = self.processor(images=images, return_tensors="np")["pixel_values"]
    return pixels.transpose(0, 2, 3, 1).astype(np.float32), np.asarray(ok)


def image_features(paths: list[str], root: str, model_dir: str, *,
                  pooling: str, normalize: bool, batch_size: int,
                  **checks) -> tuple[np.ndarray, dict[int, str]]:
  """(N, D) float32 image features and {row: why} of the rows whose image
  was skipped (their row is zeros). `checks`: ImageLoader's path and image
  limits."""
  loader = ImageLoader(paths, root, model_dir, **checks)
  model_fn = _pooled_fn(
      hf_import.load_image_encoder(model_dir, pooling=pooling), normalize)

  def fn(rows):
    pixels, ok = loader(rows)
    return np.where(ok[:, None], np.asarray(model_fn(pixels)), 0.0)

  with _bar(len(paths), "image") as bar:
    feats = _apply(fn, (np.arange(len(paths)),), batch_size, bar)
  return feats.astype(np.float32), dict(sorted(loader.skipped.items()))


IDS_FILE = "item_ids.json"   # Row i's item id (str or int), in --out.
_REASONS = {image_files.REFUSED: "refused (outside --image_root)",
            image_files.TOO_LARGE: "over --max_image_pixels",
            image_files.UNSUPPORTED: "not in --image_formats"}


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
  formats = tuple(f.strip().upper() for f in args.image_formats.split(",")
                  if f.strip())
  if not formats or not set(formats) <= set(image_files.KNOWN_FORMATS):
    raise MmjaxError(f"--image_formats={args.image_formats!r}: choose from "
                     f"{','.join(image_files.KNOWN_FORMATS)}")
  if args.max_image_pixels <= 0:
    raise MmjaxError("--max_image_pixels must be > 0")
  if args.text_model:   # The folders before any work: one line naming the file.
    limit = pretrained.check_text_folder(args.text_model)["max_len"]
    if args.max_length > limit:
      raise MmjaxError(f"--max_length={args.max_length} exceeds {args.text_model}'s "
                       f"max_position_embeddings={limit}")
  if args.image_model:
    hf_import.check_image_folder(args.image_model)
  columns = [c for c in (args.text_column, args.image_column) if c]
  items = read_items(args.items, args.id_column, columns)
  os.makedirs(args.out, exist_ok=True)
  ids = items[args.id_column]
  # Row i's own id, for runs on these features to name their items by.
  with open(os.path.join(args.out, IDS_FILE), "w") as f:
    json.dump(ids, f)
  record = dict(items=os.path.abspath(args.items), id_column=args.id_column,
                num_items=len(ids), normalize=args.normalize,
                ids_file=IDS_FILE,
                row_order="file" if ids and isinstance(ids[0], str) else "id",
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
    feats, skipped = image_features(
        items[args.image_column], args.image_root, args.image_model,
        pooling=args.image_pooling, normalize=args.normalize,
        batch_size=args.batch_size, absolute_root=args.absolute_image_root,
        formats=formats, max_pixels=args.max_image_pixels)
    reasons = collections.Counter(skipped.values())
    np.save(os.path.join(args.out, "image_feat.npy"), feats)
    record["files"]["image_feat.npy"] = dict(
        column=args.image_column, root=os.path.abspath(args.image_root),
        model=os.path.abspath(args.image_model), pooling=args.image_pooling,
        shape=list(feats.shape),
        unreadable_images=len(skipped), unreadable_rows=list(skipped)[:100],
        unreadable_why=dict(reasons), seconds=round(time.time() - t0, 2))
    if skipped:
      why = ", ".join(f"{n} {_REASONS.get(r, r)}" for r, n in reasons.items())
      print(f"mmjax features: {len(skipped)} unreadable image(s) ({why}); "
            "their rows are zeros (listed in features.json)")
  with open(os.path.join(args.out, "features.json"), "w") as f:
    json.dump(record, f, indent=2)
  return record


def read_back(feature_dir: str, num_items: int) -> tuple[list | None, list | None]:
  """(item texts, item ids) of the items table `mmjax features` read into
  feature_dir, for a run on its features; each None where features.json, the
  ids file or the table (its text column) is missing, unreadable or not of
  num_items rows."""
  try:
    with open(os.path.join(feature_dir, "features.json")) as f:
      record = json.load(f)
    files = record.get("files", {})
  except (OSError, ValueError, AttributeError):
    return None, None
  item_ids = texts = None
  try:
    with open(os.path.join(feature_dir, record.get("ids_file", IDS_FILE))) as f:
      item_ids = json.load(f)
  except (OSError, ValueError):
    pass
  if not isinstance(item_ids, list) or len(item_ids) != num_items:
    item_ids = None
  # The text feature file's entry names the text column (an image's, a root).
  column = next((f.get("column") for f in files.values()
                 if isinstance(f, dict) and "max_length" in f), None)
  if column:
    try:
      texts = read_items(record["items"], record["id_column"], [column])[column]
    except (MmjaxError, KeyError, TypeError):
      texts = None
  if texts is not None and len(texts) != num_items:
    texts = None
  return texts, item_ids

