"""What the MMRec zoo models share: PyTorch's initializers, MMRec's losses,
the graphs they propagate over and the interface the trainer uses.

Parameters are plain dicts of arrays (checkpointed as they are); a model is
a frozen dataclass of its hyper-parameters, whose methods are pure
functions of (params, graphs, batch), so they trace into one `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import graph as graph_lib


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Graphs:
  """Device constants of a data set, shared by the epochs."""
  ui: graph_lib.Edges               # D^-1/2 A D^-1/2 over U + N nodes.
  train_pairs: jax.Array            # (M, 2) int32 (user, item).
  features: tuple                   # (N, d_m) float32, one per modality.
  item: Any = None                  # FREEDOM's frozen kNN graph (sparse.Static).
  full: Any = None                  # `ui` as a sparse.Static, where a model evaluates over it.
  edge_weights: jax.Array | None = None       # FREEDOM's pruning law, (M,).
  pair_orders: Any = None           # FREEDOM's graph_lib.pair_orders of the train pairs.
  # FREEDOM's pruned graph layout (sparse.Capped): block width, spill room.
  ui_width: int = dataclasses.field(default=0, metadata=dict(static=True))
  ui_spill: int = dataclasses.field(default=0, metadata=dict(static=True))


@dataclasses.dataclass
class Batch:
  users: jax.Array      # (B,) int32.
  items: jax.Array      # (B,) positives.
  negatives: jax.Array | None   # (B,) one per pair, or None.
  valid: jax.Array      # (B,) bool: False on the padding of the last batch.


def xavier_uniform(key, shape) -> jax.Array:
  """torch.nn.init.xavier_uniform_ of a (fan_out, fan_in) tensor."""
  bound = math.sqrt(6.0 / (shape[0] + shape[1]))
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def xavier_normal(key, shape) -> jax.Array:
  return math.sqrt(2.0 / (shape[0] + shape[1])) * jax.random.normal(key, shape)


def linear_init(key, d_in: int, d_out: int, weight: str = "default") -> dict:
  """torch.nn.Linear's parameters, stored (d_in, d_out): the default
  Kaiming-uniform weight (bound 1/sqrt(d_in)) or `xavier_normal`; the bias
  is uniform in +-1/sqrt(d_in) either way."""
  kw, kb = jax.random.split(key)
  bound = 1.0 / math.sqrt(d_in)
  if weight == "xavier_normal":
    w = xavier_normal(kw, (d_out, d_in)).T
  else:
    w = jax.random.uniform(kw, (d_in, d_out), jnp.float32, -bound, bound)
  return dict(w=w, b=jax.random.uniform(kb, (d_out,), jnp.float32, -bound, bound))


def linear(p: dict, x: jax.Array) -> jax.Array:
  return x @ p["w"] + p["b"]


def masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  v = valid.astype(x.dtype)
  return jnp.sum(x * v) / jnp.maximum(jnp.sum(v), 1.0)


def bpr(pos: jax.Array, neg: jax.Array, valid, gamma: float = 0.0) -> jax.Array:
  """-mean log sigmoid(pos - neg); `gamma` > 0: BPRLoss's -log(gamma + sigmoid)."""
  if gamma:
    return masked_mean(-jnp.log(gamma + jax.nn.sigmoid(pos - neg)), valid)
  return masked_mean(-jax.nn.log_sigmoid(pos - neg), valid)


def emb_loss(valid, *embeddings) -> jax.Array:
  """MMRec's EmbLoss: the sum of the (Frobenius) norms of the batch rows,
  over the batch size; `valid` None: whole matrices over the last's rows."""
  total = jnp.zeros((), jnp.float32)
  for e in embeddings:
    if valid is not None:
      e = e * valid[:, None].astype(e.dtype)
    total = total + jnp.sqrt(jnp.sum(e * e))
  rows = embeddings[-1].shape[0] if valid is None else jnp.maximum(jnp.sum(valid), 1)
  return total / rows


def row_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.sum(a * b, axis=-1)


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """torch.nn.functional.cosine_similarity over the last axis."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return row_dot(a, b) / (na * nb)


def split_nodes(x: jax.Array, num_users: int):
  return x[:num_users], x[num_users:]


def modality_weights(names, image_weight: float) -> list[float]:
  """FREEDOM's mix of per-modality item graphs: image `image_weight`, text
  the rest (MMRec's two modalities); modalities named neither share
  equally. One modality alone weighs 1."""
  names = list(names)
  if len(names) == 1:
    return [1.0]
  image = [("image" in n or n.startswith("v_")) for n in names]
  if any(image) and not all(image):
    ni, nt = sum(image), len(names) - sum(image)
    return [image_weight / ni if m else (1.0 - image_weight) / nt for m in image]
  return [1.0 / len(names)] * len(names)


@dataclasses.dataclass(frozen=True)
class ZooModel:
  """Interface of a zoo model. Subclasses set their MMRec defaults as fields."""
  name: ClassVar[str] = ""
  negatives: ClassVar[bool] = True   # MMRec's use_neg_sampling.
  num_users: int = 0
  num_items: int = 0
  feature_dims: tuple = ()
  feature_names: tuple = ()
  embedding_size: int = 64
  learning_rate: float = 1e-3
  train_batch_size: int = 2048

  def init(self, key) -> dict:
    raise NotImplementedError

  def init_features(self, params: dict, features: tuple) -> dict:
    """Parameters that start as the features (MMRec's trainable tables)."""
    del features
    return params

  def graphs(self, data_pairs: np.ndarray, features: dict, on_host: bool) -> dict:
    """Host-side extra graphs (e.g. the kNN graph): Graphs field -> value."""
    del data_pairs, features, on_host
    return {}

  def epoch_graphs(self, g: Graphs, key) -> Graphs:
    """The graphs one epoch trains over (FREEDOM prunes edges per epoch)."""
    del key
    return g

  def loss(self, params: dict, g: Graphs, batch: Batch, key) -> tuple[Any, dict]:
    raise NotImplementedError

  def vectors(self, params: dict, g: Graphs):
    """(users (U, d), items (N, d)) whose dot products are the scores."""
    raise NotImplementedError
