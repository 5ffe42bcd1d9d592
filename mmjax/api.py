"""`mmjax.load(workdir)`: a finished run as an object for inference.

  model = mmjax.load("runs/demo")
  model.recommend(user=3, k=10)      # [Scored(item, score, text), ...]
  model.similar(item=42, k=10)
  model.search("red striped shirt")  # text -> items via the aligned text tower
  model.encode_text(["a red shirt"]), model.encode_images(uint8_images)

The model is rebuilt from the run's resolved config (summary.json) and the
latest checkpoint's parameters; the data come from the config's data dir. At
the step the run post-processed, the choice in postprocess.json is applied.
`mmjax export`, `recommend` and `report` are thin wrappers over this object.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np

from mmjax import config as config_lib
from mmjax.data import image_files, store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import normalize_images
from mmjax.data.pipeline import text_tokenizer
from mmjax.errors import MmjaxError
from mmjax import mesh as mesh_lib
from mmjax.eval.embed import Embedder
from mmjax.eval.metrics import topk_from_embeddings
from mmjax.models.model import DataShapes, build_model
from mmjax.postprocess import choose, item_id_table, user_refit
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optimizer import make_optimizer
from mmjax.train.step import init_state
from mmjax.data.resolve import resolve_data_dir


@dataclasses.dataclass(frozen=True)
class Scored:
  """One result row: an item, its score and its text."""
  item: int
  score: float
  text: str


class TrainedModel:
  """Item/user embeddings and queries of one parameter snapshot of a run.

  Embeddings of the whole catalog are computed once, on first use.
  """

  def __init__(self, *, workdir, config, summary, catalog, tokenizer,
               embedder, params, buffers, step, initial=None, refit=None):
    self.workdir, self.config, self.summary = workdir, config, summary
    self.catalog, self.tokenizer, self.step = catalog, tokenizer, step
    self._embedder, self._params, self._buffers = embedder, params, buffers
    self._initial = initial  # (params, buffers) at initialization.
    # The run's chosen user refit (user_refit.load), for the post-processed
    # step only; the derived snapshots below score with the tower.
    self._refit = refit

  @property
  def num_users(self) -> int:
    return self.catalog.num_users

  @property
  def num_items(self) -> int:
    return self.catalog.num_items

  @property
  def has_images(self) -> bool:
    return getattr(self.catalog, "item_images", None) is not None

  def at_init(self) -> "TrainedModel":
    """The same model with its parameters at initialization (config + seed)."""
    if self._initial is None:
      raise MmjaxError("this snapshot has no initialization to go back to")
    params, buffers = self._initial
    return TrainedModel(workdir=self.workdir, config=self.config,
                        summary=self.summary, catalog=self.catalog,
                        tokenizer=self.tokenizer, embedder=self._embedder,
                        params=params, buffers=buffers, step=0)

  @functools.cached_property
  def item_id_table(self) -> np.ndarray | None:
    """(N, dim) item-ID embeddings as this snapshot adds them to the fused
    content before normalization (after the item-ID table transform the run
    chose in postprocess.json, if any), or None for a model without them."""
    return item_id_table.id_table(self._params)

  def without_item_ids(self) -> "TrainedModel":
    """The same snapshot with the item-ID table zeroed: its "item" vectors
    are the normalized fused content alone."""
    return self.with_item_id_scale(0.0)

  def with_item_id_scale(self, scale: float) -> "TrainedModel":
    """The same snapshot with the item-ID table times `scale`: its "item"
    vectors are normalize(content + scale * ID), relative to this snapshot
    (scale 1 is the model as loaded). A diagnostic of how much of the ID
    embeddings carries over to held-out interactions (`mmjax.bench.ceiling`)."""
    if self.item_id_table is None:
      raise MmjaxError("this model has no item-ID embeddings")
    params = item_id_table.transform_params(
        self._params, item_id_table.TableTransform.scaled(scale))
    return TrainedModel(workdir=self.workdir, config=self.config,
                        summary=self.summary, catalog=self.catalog,
                        tokenizer=self.tokenizer, embedder=self._embedder,
                        params=params, buffers=self._buffers, step=self.step)

  # -- embeddings --------------------------------------------------------

  @functools.cached_property
  def item_embeddings(self) -> dict[str, np.ndarray]:
    """"item" (as scored), "z_text" and "z_image" (aligned) and "content" (the
    fused text and image before the item-ID embedding), each (N, dim)."""
    tokens, mask = self.tokenizer.encode_all(self.catalog.item_text)
    out = self._embedder.items(self._params, self._buffers, tokens, mask,
                              normalize_images(self.catalog.item_images))
    return {k: np.asarray(v) for k, v in out.items()}

  @functools.cached_property
  def user_embeddings(self) -> np.ndarray:
    """(U, dim) user vectors from each user's train history (as evaluated)."""
    histories = self.catalog.user_histories(
        TRAIN, max_len=config_lib.eval_history_len(self.config.data))
    return np.asarray(self._embedder.users(
        self._params, self._buffers, histories, self.item_embeddings["item"]))

  @functools.cached_property
  def scoring_vectors(self) -> tuple[np.ndarray, np.ndarray]:
    """(u', v') with u'.v' the model's score (temperature and item bias in;
    at the post-processed step, with the user refit the run chose, if any)."""
    u, v = self._embedder.scoring(self._params, self._buffers, self.user_embeddings,
                                  self.item_embeddings["item"])
    u, v = np.asarray(u), np.asarray(v)
    if self._refit is None:
      return u, v
    try:
      return user_refit.apply(self._refit, v)
    except ValueError as e:
      raise MmjaxError(f"{self.workdir}/{user_refit.FILE}: {e}") from None

  def encode_text(self, texts) -> np.ndarray:
    """(n, dim) aligned text vectors of a list of strings."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
      raise MmjaxError("encode_text needs at least one text")
    tokens, mask = self.tokenizer.encode_all(texts)
    return np.asarray(self._embedder.texts(self._params, self._buffers, tokens, mask))

  def encode_images(self, images) -> np.ndarray:
    """(n, dim) aligned image vectors.

    images: a uint8 (n, H, W, 3) array, or a list of PIL images / file paths;
    each is resized to the catalog's image size.
    """
    if not self.has_images:
      raise MmjaxError(f"{self.workdir}: this run's catalog has no images")
    images = _image_batch(images, self.catalog.image_size)
    return np.asarray(self._embedder.images(self._params, self._buffers,
                                            normalize_images(images)))

  # -- queries -----------------------------------------------------------

  def seen(self, user: int) -> np.ndarray:
    """Every item `user` interacted with (all splits), oldest first."""
    self._check_id("user", user, self.num_users)
    pairs = self.catalog.interactions
    return pairs[pairs[:, 0] == user, 1]

  def recommend(self, user: int, k: int = 10) -> list[Scored]:
    """Top-k items for `user` by the model's score, seen items excluded."""
    seen = self.seen(user)
    self._check_k(k, self.num_items - len(np.unique(seen)))
    u, v = self.scoring_vectors
    return self._top(u[user], v, seen, k)

  def similar(self, item: int, k: int = 10) -> list[Scored]:
    """The k items whose (fused) item vectors are nearest to `item`'s."""
    self._check_id("item", item, self.num_items)
    self._check_k(k, self.num_items - 1)
    v = self.item_embeddings["item"]
    return self._top(v[item], v, np.asarray([item]), k)

  def search(self, text: str, k: int = 10) -> list[Scored]:
    """Text -> items: the query's aligned text vector against the items'
    aligned image vectors (their text vectors for a catalog without images)."""
    self._check_k(k, self.num_items)
    gallery = self.item_embeddings["z_image" if self.has_images else "z_text"]
    return self._top(self.encode_text([text])[0], gallery, np.asarray([], np.int32), k)

  def _top(self, query, gallery, exclude, k) -> list[Scored]:
    exclude = np.asarray(exclude, np.int32).reshape(1, -1)
    if not exclude.size:
      exclude = np.full((1, 1), -1, np.int32)   # -1 pads: nothing excluded.
    top = topk_from_embeddings(query[None], gallery, exclude, k)[0]
    scores = gallery[top].astype(np.float32) @ query.astype(np.float32)
    return [Scored(int(i), float(s), self.catalog.item_text[i])
            for i, s in zip(top, scores)]

  @staticmethod
  def _check_id(kind: str, value, count: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or not 0 <= value < count:
      raise MmjaxError(f"unknown {kind} {value!r}: {kind} ids are 0..{count - 1}")

  @staticmethod
  def _check_k(k: int, available: int) -> None:
    if not 1 <= k <= available:
      raise MmjaxError(f"k={k} must be in [1, {available}] (the items available)")


def _image_batch(images, size: int) -> np.ndarray:
  """uint8 (n, size, size, 3) from an array or a list of PIL images/paths."""
  from PIL import Image
  if isinstance(images, np.ndarray) and images.ndim == 4:
    if images.shape[1:] == (size, size, 3) and images.dtype == np.uint8:
      return images
    images = [Image.fromarray(np.asarray(im, np.uint8)) for im in images]
  out = []
  for im in images:
    if isinstance(im, (str, os.PathLike)):
      # The ingestion decoder's checks: listed formats, pixel cap first.
      with image_files.quiet_bomb_warnings():
        status, opened = image_files.open_checked(os.fspath(im))
      if opened is None:
        raise MmjaxError(f"cannot read image {im}: {status}")
      im = opened
    elif isinstance(im, np.ndarray):
      im = Image.fromarray(im.astype(np.uint8))
    out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
  if not out:
    raise MmjaxError("encode_images needs at least one image")
  return np.stack(out).astype(np.uint8)


# -- loading ---------------------------------------------------------------

def _read_summary(workdir: str) -> dict:
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    raise MmjaxError(f"{path} not found: the run has not finished "
                     "(`mmjax train` writes it at the end)")
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  if "config" not in summary:
    raise MmjaxError(f"{path} has no 'config'")
  return summary


# What rebuilding the model and its train state reads; the other sections
# (losses, the feature graph, post-processing, ...) only steered training or
# evaluation.
_REBUILT_FROM = ("seed", "data", "model", "train")


def _known(node, values: dict, prefix: str, unknown: list[str]) -> dict:
  """`values` without the keys `node` lacks (collected in `unknown`)."""
  out = {}
  for key, value in values.items():
    if key not in node:
      unknown.append(prefix + key)
    elif isinstance(value, dict) and isinstance(node[key], ml_collections.ConfigDict):
      out[key] = _known(node[key], value, f"{prefix}{key}.", unknown)
    else:
      out[key] = value
  return out


def config_of(summary: dict, path: str) -> ml_collections.ConfigDict:
  """The run's resolved config on top of today's defaults.

  A key this version lacks is an error where it shapes the model (seed, data,
  model, train) and is dropped elsewhere: a run stays loadable after, say, a
  loss option is renamed.
  """
  config = config_lib.default_config()
  unknown = []
  values = _known(config, summary["config"], "", unknown)
  bad = [k for k in unknown if k.split(".")[0] in _REBUILT_FROM]
  if bad:
    raise MmjaxError(f"{path}: config keys unknown to this mmjax version: "
                     + ", ".join(f"config.{k}" for k in bad))
  config.update(values)
  return config


def _data_dir(config, summary: dict) -> str:
  """The dir the run read (summary.json), else the config's (regenerated)."""
  recorded = summary.get("data", {}).get("dir", "")
  if recorded and store.is_data_dir(recorded):
    return recorded
  return resolve_data_dir(config.data)


def load(workdir: str, step: int | None = None) -> TrainedModel:
  """A finished run's model at its latest (or the given) checkpoint step."""
  workdir = os.path.abspath(os.fspath(workdir))
  if not os.path.isdir(workdir):
    raise MmjaxError(f"workdir not found: {workdir}")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  has_summary = os.path.isfile(os.path.join(workdir, "summary.json"))
  if has_summary and _read_summary(workdir)["config"].get("data", {}).get("name") == "mmrec":
    raise MmjaxError(f"{workdir} is a feature-graph run (data.name='mmrec'): "
                     "it keeps no model to load; export/recommend/report need a "
                     "`mmjax train` run")
  if not os.path.isdir(ckpt_dir) or not any(d.isdigit() for d in os.listdir(ckpt_dir)):
    raise MmjaxError(f"no checkpoint in {ckpt_dir} (train first: "
                     f"mmjax train --config ... --workdir {workdir})")
  summary = _read_summary(workdir)
  config = config_of(summary, os.path.join(workdir, "summary.json"))
  data_dir = _data_dir(config, summary)
  catalog = store.load_catalog(data_dir)
  tokenizer = text_tokenizer(data_dir, config)
  shapes = DataShapes.of(catalog, tokenizer, config.data.max_text_len)
  model = build_model(config.model, shapes, seed=config.seed)
  graphdef, state = init_state(model, make_optimizer(config.train), config.seed)
  ckpt = Checkpointer(workdir, every=config.train.checkpoint_every,
                      keep=config.train.keep_checkpoints)
  try:
    step = ckpt.latest_step() if step is None else step
    try:
      restored = ckpt.restore(state, step=step)
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise MmjaxError(f"cannot restore step {step} from {ckpt_dir}: "
                       f"{str(e).splitlines()[0]}") from None
  finally:
    ckpt.close()
  # Inference runs on all local devices, whatever mesh the run trained on.
  mesh = mesh_lib.make_mesh(config_lib.default_config().mesh)
  put = lambda tree: jax.device_put(tree, mesh_lib.replicated(mesh))
  step = int(restored["step"])
  post = choose.read(workdir)
  params = restored["params"]
  transform = choose.item_id_transform(post, step)
  if transform is not None:
    params = item_id_table.transform_params(params, transform)
  return TrainedModel(
      workdir=workdir, config=config, summary=summary, catalog=catalog,
      tokenizer=tokenizer, step=step,
      embedder=Embedder(graphdef, mesh, config.train.eval_batch_size),
      params=put(params), buffers=put(restored["buffers"]),
      initial=(put(state["params"]), put(state["buffers"])),
      refit=choose.user_refit_vectors(workdir, post, step))
