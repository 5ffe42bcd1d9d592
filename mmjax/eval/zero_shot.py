"""Zero-shot classification, as CLIP evaluates it: every class name becomes
text through prompt templates ("a photo of a {label}."), the text tower
encodes them, each class's vector is the re-normalized mean of its
templates' unit vectors, and an image is given the class whose vector its
aligned image vector scores highest against.

The towers are run by the caller: the evaluator takes `encode_text` (a list
of strings -> (n, dim) aligned text vectors, e.g. `text_encoder` over an
`Embedder`, or `TrainedModel.encode_text`) and the images' aligned vectors.

Metrics ("zero_shot/...", as `evaluators` yields them): top1, top5, their
chance levels (k / classes), the majority class's top-1, the counts and
"per_class": {label: {"count", "top1"}}. Ties count against the true class
(as retrieval does), so a collapsed model scores 0, not 1.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import numpy as np

from mmjax.config import schema
from mmjax.data import catalog as catalog_lib
from mmjax.data import raw_source
from mmjax.errors import MmjaxError

# CLIP-style prompts; the config's default, declared once in the schema.
DEFAULT_TEMPLATES = schema.BY_PATH["eval.zero_shot.templates"].default
KS = (1, 5)
_KEY = "config.eval.zero_shot"

EncodeText = Callable[[list[str]], np.ndarray]


def check_templates(templates, where: str = "templates") -> tuple[str, ...]:
  """The templates as a tuple; MmjaxError unless each holds "{label}"."""
  templates = (templates,) if isinstance(templates, str) else tuple(templates)
  if not templates:
    raise MmjaxError(f"{where}: no template; give at least one, e.g. "
                     f"{DEFAULT_TEMPLATES[0]!r}")
  for t in templates:
    if not isinstance(t, str) or "{label}" not in t:
      raise MmjaxError(f"{where}: template {t!r} has no '{{label}}' where the "
                       "class name goes, e.g. 'a photo of a {label}.'")
  return templates


def check_classes(classes, where: str = "labels") -> tuple[str, ...]:
  """Distinct, non-empty class names; MmjaxError naming the bad one."""
  classes = (classes,) if isinstance(classes, str) else tuple(classes)
  if not classes:
    raise MmjaxError(f"{where}: no class label; zero-shot needs at least one")
  seen = set()
  for c in classes:
    if not isinstance(c, str) or not c.strip():
      raise MmjaxError(f"{where}: class label {c!r} is not a non-empty string")
    if c in seen:
      raise MmjaxError(f"{where}: class label {c!r} appears twice; give each once")
    seen.add(c)
  return classes


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
  """Class-major: every template of class 0, then of class 1, ..."""
  return [t.replace("{label}", c) for c in classes for t in templates]


def class_vectors(encode_text: EncodeText, classes, templates) -> np.ndarray:
  """(classes, dim) unit vectors: per class, the mean of its templates'
  normalized text vectors, normalized again (CLIP's prompt ensemble)."""
  classes, templates = check_classes(classes), check_templates(templates)
  z = _unit(encode_text(prompts(classes, templates)))
  return _unit(z.reshape(len(classes), len(templates), -1).mean(axis=1))


def true_class_ranks(image_vectors, class_vecs, truth) -> np.ndarray:
  """Per image, how many other classes score at least as high as its true
  one (0: ranked first); ties count against the true class."""
  scores = np.asarray(image_vectors, np.float32) @ np.asarray(class_vecs, np.float32).T
  truth = np.asarray(truth, np.int64)
  true = np.take_along_axis(scores, truth[:, None], axis=1)
  return (scores >= true).sum(axis=1) - 1


def accuracy(ranks, truth, classes, ks=KS) -> dict:
  """top-K accuracies, chance levels, majority-class top-1 and the
  per-class table {label: {"count", "top1"}} (classes without an image are
  left out of the table)."""
  ranks, truth = np.asarray(ranks), np.asarray(truth, np.int64)
  counts = np.bincount(truth, minlength=len(classes))
  out = {f"top{k}": float(np.mean(ranks < k)) for k in ks}
  out.update({f"chance_top{k}": min(k, len(classes)) / len(classes) for k in ks})
  out["majority_top1"] = float(counts.max() / len(truth))
  out["num_classes"], out["num_images"] = len(classes), int(len(truth))
  hits = np.bincount(truth, weights=(ranks < 1), minlength=len(classes))
  out["per_class"] = {c: {"count": int(n), "top1": float(h / n)}
                      for c, n, h in zip(classes, counts, hits) if n}
  return out


def classify(encode_text: EncodeText, image_vectors, labels, *, classes=None,
             templates=DEFAULT_TEMPLATES, ks=KS) -> dict:
  """Zero-shot metrics of images whose true class names are `labels` (one
  per image) among `classes` (default: the distinct labels, sorted), plus
  "predicted": each image's top-1 class name."""
  templates = check_templates(templates)
  labels = [labels] if isinstance(labels, str) else list(labels)
  image_vectors = np.asarray(image_vectors)
  if len(labels) != len(image_vectors):
    raise MmjaxError(f"labels: {len(labels)} labels for {len(image_vectors)} "
                     "images; give one true class label per image")
  if not labels:
    raise MmjaxError("labels: no image to classify; give at least one")
  classes = check_classes(sorted(set(labels)) if classes is None else classes)
  index = {c: i for i, c in enumerate(classes)}
  unknown = [l for l in labels if l not in index]
  if unknown:
    raise MmjaxError(f"labels: {unknown[0]!r} is not among the {len(classes)} "
                     "classes given; add it to classes")
  truth = np.asarray([index[l] for l in labels], np.int64)
  vecs = class_vectors(encode_text, classes, templates)
  ranks = true_class_ranks(image_vectors, vecs, truth)
  out = accuracy(ranks, truth, classes, ks)
  top = np.argmax(np.asarray(image_vectors, np.float32) @ vecs.T, axis=1)
  out["predicted"] = [classes[i] for i in top]
  return out


def text_encoder(embedder, params, buffers, tokenizer) -> EncodeText:
  """Texts -> aligned vectors through an `Embedder`'s jitted text tower."""
  def encode(texts):
    tokens, mask = tokenizer.encode_all(texts)
    return np.asarray(embedder.texts(params, buffers, tokens, mask))
  return encode


class ZeroShotEvaluator:
  """Zero-shot classification of a catalog's items by their images.

  `item_class[i]` is item i's class index into `classes`, or -1 for an item
  not evaluated (no label, an ignored label, or outside the split).
  """

  def __init__(self, classes, item_class, templates=DEFAULT_TEMPLATES, ks=KS):
    self.classes = check_classes(classes)
    self.templates = check_templates(templates, f"{_KEY}.templates")
    self.item_class = np.asarray(item_class, np.int64)
    self.items = np.flatnonzero(self.item_class >= 0)
    if not len(self.items):
      raise MmjaxError(f"{_KEY}: no item has a class label to evaluate")
    self.ks = tuple(ks)

  def metrics(self, encode_text: EncodeText, z_image) -> dict:
    """`z_image`: (N, dim) aligned image vectors of every catalog item."""
    truth = self.item_class[self.items]
    vecs = class_vectors(encode_text, self.classes, self.templates)
    ranks = true_class_ranks(np.asarray(z_image)[self.items], vecs, truth)
    return accuracy(ranks, truth, self.classes, self.ks)

  def run(self, encode_text: EncodeText, z_image) -> Iterator[tuple[str, object]]:
    """("zero_shot/top1", value), ...; "zero_shot/per_class" is a dict."""
    for name, value in self.metrics(encode_text, z_image).items():
      yield f"zero_shot/{name}", value


def item_classes(catalog, path: str, id_column: str, label_column: str,
                 ignore=(), split: str = "test") -> tuple[tuple[str, ...], np.ndarray]:
  """(classes, item_class) from a table naming each item's label: classes
  sorted; items of another split, unlisted or with an `ignore`d label -1."""
  table = raw_source.read_table(path, f"{_KEY}.labels_file")
  key = f"{_KEY}.id_column / label_column"
  # An empty label leaves its item unlabelled, not an error.
  ids = table.required(id_column, key)
  labels = [v.strip() for v in table.column(label_column, key)]
  position = {str(v): i for i, v in enumerate(catalog.item_ids or range(catalog.num_items))}
  label_of = {}
  for row, (item, label) in enumerate(zip(ids, labels)):
    if item in position and label and label not in ignore:
      if label_of.setdefault(position[item], label) != label:
        raise MmjaxError(f"{table.where(row)}: item {item!r} labelled both "
                         f"{label_of[position[item]]!r} and {label!r}; give one label")
  keep = np.zeros(catalog.num_items, bool)
  if split == "all":
    keep[:] = True
  else:
    keep[catalog.split_pairs(catalog_lib.split_index(split))[:, 1]] = True
  label_of = {i: l for i, l in label_of.items() if keep[i]}
  if not label_of:
    raise MmjaxError(f"{path}: no {split} item of the catalog has a label in column "
                     f"{label_column!r} (ids from {id_column!r}); check {_KEY}")
  classes = tuple(sorted(set(label_of.values())))
  index = {c: i for i, c in enumerate(classes)}
  item_class = np.full(catalog.num_items, -1, np.int64)
  for i, label in label_of.items():
    item_class[i] = index[label]
  return classes, item_class


def from_config(config, catalog) -> ZeroShotEvaluator | None:
  """The evaluator config.eval.zero_shot asks for; None where labels_file
  is "". A relative labels_file is read from data.raw.root."""
  zs = config.eval.zero_shot
  if not zs.labels_file:
    return None
  if np.size(catalog.item_images) == 0:
    raise MmjaxError(f"{_KEY}.labels_file is set but the catalog has no images "
                     "to classify; set it to \"\"")
  path = zs.labels_file
  if not os.path.isabs(path) and config.data.name == "raw":
    path = os.path.join(config.data.raw.root, path)
  classes, item_class = item_classes(catalog, path, zs.id_column, zs.label_column,
                                     tuple(zs.ignore_labels), zs.split)
  return ZeroShotEvaluator(classes, item_class, tuple(zs.templates))
