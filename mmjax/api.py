"""`mmjax.load(workdir)`: a finished run as an object for inference.

  model = mmjax.load("runs/demo")
  model.recommend(user="user7", k=10)   # [Scored(item, score, text, id), ...]
  model.recommend(users=["user7", "user8"], k=10)   # one list per user
  model.similar(item="sku-ea7b6656", k=10)
  model.search("red striped shirt")  # text -> items via the aligned text tower
  model.encode_text(["a red shirt"]), model.encode_images(uint8_images)
  model.add_items(texts=[...], images=[...], ids=[...])  # mmjax.new_items

Users and items are named by the data's own ids (a catalog without them: the
dense ints); `Scored.item` is the dense index, `Scored.id` the item's own id.
The model is rebuilt from the run's resolved config (summary.json) and the
latest checkpoint's parameters; the data come from the config's data dir. At
the step the run post-processed, the choice in postprocess.json is applied.
A feature-graph run (data.name="mmrec") loads as a `FeatureGraphModel`: the
vectors of the run it serves, without towers. `mmjax export`, `recommend` and
`report` are thin wrappers over these objects.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from mmjax import config as config_lib
from mmjax.config.saved import from_saved
from mmjax.data import ids, image_bytes, image_files, store
from mmjax.data.catalog import TRAIN
from mmjax.data.features import normalize_images
from mmjax.data.pipeline import text_tokenizer
from mmjax.errors import MmjaxError
from mmjax import mesh as mesh_lib
from mmjax.eval.embed import Embedder
from mmjax.eval import zero_shot as zero_shot_lib
from mmjax.models.model import DataShapes, build_model
from mmjax.postprocess import choose, item_id_table, user_refit
from mmjax.train.checkpoint import Checkpointer, restore_best
from mmjax.train.trainer import SERVED
from mmjax.train.optimizer import make_optimizer
from mmjax.train.step import init_state
from mmjax.data.resolve import resolve_data_dir
from mmjax.queries import Queries, Scored  # noqa: F401 (Scored: public)


class TrainedModel(Queries):
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
    each is fitted into the catalog's image size as the catalog's images
    are (aspect ratio kept, centred on grey; `data.image_bytes.fit`).
    """
    if not self.has_images:
      raise MmjaxError(f"{self.workdir}: this run's catalog has no images")
    images = _image_batch(images, self.catalog.image_size)
    return np.asarray(self._embedder.images(self._params, self._buffers,
                                            normalize_images(images)))

  def zero_shot(self, images, labels, *, classes=None, templates=None) -> dict:
    """`mmjax.eval.zero_shot.classify` of `images` (as for encode_images) with
    true class names `labels`, among `classes` (default: the distinct labels);
    templates default to the config's eval.zero_shot.templates."""
    templates = zero_shot_lib.check_templates(   # Before the images are encoded.
        self.config.eval.zero_shot.templates if templates is None else templates)
    return zero_shot_lib.classify(self.encode_text, self.encode_images(images),
                                  labels, classes=classes, templates=templates)

  def add_items(self, *, texts, images, ids, offset_quantile=None):
    """A new model: this one and items it never saw, scored from their text
    and image alone (this one is left as it is). See `mmjax.new_items`."""
    from mmjax.new_items import add_items
    return add_items(self, texts, images, ids, decode=_image_batch,
                     offset_quantile=offset_quantile)

  # -- queries (recommend, similar, seen: mmjax.queries) -------------------

  def search(self, text: str, k: int = 10) -> list[Scored]:
    """Text -> items: the query's aligned text vector against the items'
    aligned image vectors (their text vectors for a catalog without images)."""
    self._check_k(k, self.num_items)
    gallery = self.item_embeddings["z_image" if self.has_images else "z_text"]
    return self._top(self.encode_text([text])[0], gallery, np.asarray([], np.int32), k)

  @property
  def item_text(self) -> list[str]:
    return self.catalog.item_text

  @property
  def _id_maps(self) -> tuple[ids.IdMap, ids.IdMap]:
    return self.catalog.user_map, self.catalog.item_map

  @property
  def _interactions(self) -> np.ndarray:
    return self.catalog.interactions

  @property
  def _similar_vectors(self) -> np.ndarray:
    return self.item_embeddings["item"]


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
      with opened:
        out.append(image_bytes.fit(opened, size))
      continue
    if isinstance(im, np.ndarray):
      im = Image.fromarray(im.astype(np.uint8))
    out.append(image_bytes.fit(im, size))
  if not out:
    raise MmjaxError("encode_images needs at least one image")
  return np.stack(out).astype(np.uint8)


# -- loading ---------------------------------------------------------------

def _read_summary(workdir: str) -> dict:
  path = epath.Path(workdir) / "summary.json"
  if not path.exists():
    raise MmjaxError(f"{path} not found: the run has not finished "
                     "(`mmjax train` writes it at the end)")
  try:
    summary = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise MmjaxError(f"cannot read {path}: {e}") from None
  if not isinstance(summary, dict) or "config" not in summary:
    raise MmjaxError(f"{path} has no 'config'")
  return summary


def config_of(summary: dict, path: str) -> ml_collections.ConfigDict:
  """The run's resolved config (summary.json) on top of today's defaults."""
  return from_saved(summary["config"], path)


def _data_dir(config, summary: dict) -> str:
  """The dir the run read (summary.json), else the config's (regenerated)."""
  recorded = summary.get("data", {}).get("dir", "")
  if recorded and store.is_data_dir(recorded):
    return recorded
  return resolve_data_dir(config.data, labelled=config.loss.pointwise > 0)


def _local(workdir) -> str:
  """An absolute path for a local workdir; a URL (gs://...) as it is."""
  workdir = os.fspath(workdir)
  return workdir if "://" in workdir else os.path.abspath(workdir)


def load(workdir: str, step: int | None = None):
  """A finished run's model: its best-valid state (<workdir>/best; the
  latest checkpoint for a run that kept none), or the checkpoint of the
  given step. A `TrainedModel`, or a `FeatureGraphModel` for a
  feature-graph run."""
  workdir = _local(workdir)
  if not epath.Path(workdir).is_dir():
    raise MmjaxError(f"workdir not found: {workdir}")
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if (epath.Path(workdir) / "summary.json").exists() and _read_summary(
      workdir)["config"].get("data", {}).get("name") == "mmrec":
    return _load_feature_graph(workdir, step)
  if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise MmjaxError(f"no checkpoint in {ckpt_dir} (train first: "
                     f"mmjax train --config ... --workdir {workdir})")
  summary = _read_summary(workdir)
  config = config_of(summary, f"{workdir}/summary.json")
  data_dir = _data_dir(config, summary)
  catalog = store.load_catalog(data_dir)
  tokenizer = text_tokenizer(data_dir, config)
  shapes = DataShapes.of(catalog, tokenizer, config.data.max_text_len)
  model = build_model(config.model, shapes, seed=config.seed,
                      caption=config.loss.caption > 0)
  graphdef, state = init_state(model, make_optimizer(config.train), config.seed)
  restored = restore_best(workdir, {k: state[k] for k in SERVED}) if step is None else None
  if restored is None:
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


# -- feature-graph runs ------------------------------------------------------

class FeatureGraphModel(Queries):
  """A feature-graph run (data.name="mmrec") as its served vmapped run (the
  best on valid): user and item scoring vectors, queried by the data's own
  ids. It has no text or image tower.

  Item ids: MMRec's i_id_mapping.csv in the data dir, else the ids `mmjax
  features` read (its item_ids.json), else the .inter ints. Item text: the
  text column of the items table that `mmjax features` read, else the id.
  """

  has_images = False

  def __init__(self, *, workdir, summary, serving, item_text=None,
               item_ids=None):
    self.workdir, self.summary, self.data = workdir, summary, serving.data
    self.config, self.step = serving.config, serving.step
    self.run, self.seed = serving.run, serving.seed
    self._users = np.asarray(serving.users, np.float32)
    self._items = np.asarray(serving.items, np.float32)
    self._ids = (ids.IdMap("user", self.num_users, self.data.user_ids),
                 ids.IdMap("item", self.num_items,
                           self.data.item_ids or item_ids))
    self._text = item_text

  num_users = property(lambda self: self._users.shape[0])
  num_items = property(lambda self: self._items.shape[0])
  _id_maps = property(lambda self: self._ids)
  scoring_vectors = property(lambda self: (self._users, self._items))
  user_embeddings = property(lambda self: self._users)
  item_embeddings = property(lambda self: {"item": self._items})

  @functools.cached_property
  def item_text(self) -> list[str]:
    return self._text or [str(i) for i in self.item_map.to_list()]

  @functools.cached_property
  def _interactions(self) -> np.ndarray:
    return np.concatenate([self.data.pairs[s] for s in sorted(self.data.pairs)])

  @functools.cached_property
  def _similar_vectors(self) -> np.ndarray:
    norm = np.linalg.norm(self._items, axis=1, keepdims=True)
    return self._items / np.maximum(norm, 1e-12)

  def _no_tower(self, *_, **__):
    raise MmjaxError(f"{self.workdir} is a feature-graph run: it has no text "
                     "or image tower (search and encode_* need a `mmjax "
                     "train` run)")

  def add_items(self, **_):
    raise MmjaxError(f"{self.workdir} is a feature-graph run: its item vectors come "
                     "from the interaction graph, where a new item has no edges, and "
                     "it has no towers to encode one (add_items needs a `mmjax train` run)")

  search = encode_text = encode_images = zero_shot = _no_tower


def _load_feature_graph(workdir: str, step) -> FeatureGraphModel:
  from mmjax.feature_extraction import read_back
  from mmjax.train.feature_graph_serving import restore_serving
  if step is not None:
    raise MmjaxError(f"{workdir}: a feature-graph run serves its best run on "
                     f"valid; step={step} cannot be chosen")
  serving = restore_serving(workdir)
  data_cfg = serving.config.data
  text, item_ids = read_back(data_cfg.feature_dir or data_cfg.dir,
                             serving.items.shape[0])
  return FeatureGraphModel(workdir=workdir, summary=_read_summary(workdir),
                           serving=serving, item_text=text, item_ids=item_ids)
