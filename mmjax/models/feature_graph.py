"""The feature-graph recommender: a graph recommender over precomputed item
features (MMRec-format data), which stay fixed during training.

The text/image encoders of the full model are replaced by a small encoder
per modality over its feature matrix: `identity` (the feature as it is),
`linear` (an `aligners.Projection`) or `mlp` (Linear -> GELU -> Projection).
Then

  content  = fusion of the modality vectors (mean, or `fusion.MLPFusion`
             for exactly two modalities)
  items_0  = item-ID embedding + content_weight * content
  (users, items) = LightGCN layer mean over the user-item graph of
             [user-ID embedding; items_0]
  items   += kNN propagation of items_0 over the item-item feature graph
             (FREEDOM's fixed item-item graph)

Scores are cosines (divided by a temperature in the loss). The modality
vectors are also aligned contrastively with the item-ID embeddings (and with
each other) by the trainer, with `losses.contrastive.infonce`.

A text tower (`text_tower.TextTower`: the last blocks of a pretrained text
encoder over the items' texts, trained by the same step) is one more
modality, after the feature files: its pooled vectors go through an encoder
like theirs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models import graph as graph_lib
from mmjax.models.aligners import Projection
from mmjax.models.fusion import MLPFusion
from mmjax.models.text_tower import TextTower

ENCODERS = ("identity", "linear", "mlp")
FUSIONS = ("mean", "mlp")


class FeatureEncoder(nnx.Module):
  """Precomputed features (N, d_in) -> unit vectors (N, dim)."""

  def __init__(self, kind: str, in_dim: int, dim: int, *, rngs: nnx.Rngs):
    if kind not in ENCODERS:
      raise ValueError(f"encoder {kind!r}: choose one of {ENCODERS}")
    if kind == "identity" and in_dim != dim:
      raise ValueError(f"identity encoder needs feature dim {in_dim} == dim {dim}")
    self.kind = kind
    self.hidden = (nnx.Linear(in_dim, 2 * dim, rngs=rngs) if kind == "mlp" else None)
    self.proj = (None if kind == "identity" else
                 Projection(2 * dim if kind == "mlp" else in_dim, dim, rngs=rngs))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.proj is None:
      return x
    if self.hidden is not None:
      x = jax.nn.gelu(self.hidden(x))
    return self.proj(x)


class FeatureGraphRecommender(nnx.Module):
  """ID embeddings + precomputed-feature content + graph propagation."""

  def __init__(self, *, num_users: int, num_items: int, feature_dims: tuple,
               dim: int, encoder: str, fusion: str, init_std: float,
               tower: dict | None = None, rngs: nnx.Rngs):
    """`tower`: TextTower's `blocks` and `layer` arguments, or None."""
    if fusion not in FUSIONS:
      raise ValueError(f"fusion {fusion!r}: choose one of {FUSIONS}")
    self.text_tower = (TextTower(num_items=num_items, **tower, rngs=rngs)
                       if tower else None)
    if tower:
      feature_dims = tuple(feature_dims) + (tower["layer"]["hidden"],)
    if fusion == "mlp" and len(feature_dims) != 2:
      raise ValueError("fusion 'mlp' needs exactly two modalities")
    init = nnx.initializers.normal(init_std)
    self.num_users = num_users
    self.user_embed = nnx.Embed(num_users, dim, embedding_init=init, rngs=rngs)
    self.item_embed = nnx.Embed(num_items, dim, embedding_init=init, rngs=rngs)
    self.encoders = nnx.List([FeatureEncoder(encoder, d, dim, rngs=rngs)
                              for d in feature_dims])
    self.fusion = (MLPFusion(dim, 2 * dim, dim, rngs=rngs)
                   if fusion == "mlp" else None)
    # CLIP's learnable inverse temperature for the alignment loss.
    self.align_log_scale = nnx.Param(jnp.asarray(math.log(10.0), jnp.float32))

  def modality_vectors(self, features: tuple, tower_vectors=None) -> list[jax.Array]:
    """Each modality's (N, dim) vectors. `tower_vectors` (N, H): the text
    tower's pooled vectors of every item (default: its memory)."""
    if self.text_tower is not None:
      if tower_vectors is None:
        tower_vectors, _ = self.text_tower(None, None)
      features = tuple(features) + (tower_vectors,)
    return [enc(f) for enc, f in zip(self.encoders, features)]

  def content(self, zs: list[jax.Array]) -> jax.Array | None:
    if not zs:
      return None
    if self.fusion is not None:
      return self.fusion(*zs)
    return sum(zs) / len(zs)

  def __call__(self, features: tuple, ui_graph: graph_lib.Edges | None,
               item_graph: graph_lib.Edges | None, *, layers: int,
               item_layers: int, content_weight, tower_vectors=None):
    """(users (U, dim), items (N, dim), modality vectors [(N, dim)])."""
    zs = self.modality_vectors(features, tower_vectors)
    items0 = self.item_embed.embedding[...]
    content = self.content(zs)
    if content is not None:
      items0 = items0 + content_weight * content
    x = jnp.concatenate([self.user_embed.embedding[...], items0], axis=0)
    if ui_graph is not None and layers:
      x = graph_lib.layer_mean(x, ui_graph, layers)
    users, items = x[:self.num_users], x[self.num_users:]
    if item_graph is not None and item_layers:
      h = items0
      for _ in range(item_layers):
        h = graph_lib.propagate(h, item_graph)
      items = items + h
    return users, items, zs
