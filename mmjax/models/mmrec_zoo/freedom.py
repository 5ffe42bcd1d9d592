"""MMRec's FREEDOM (src/models/freedom.py; Zhou & Shen, "A Tale of Two
Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation").

  h      = A_mm^n_mm_layers item_emb, A_mm the frozen item-item kNN graph
           of the raw features (top knn_k by cosine, self included; with
           image and text mixed mm_image_weight : 1 - mm_image_weight)
  users, items = LightGCN layer mean (n_ui_layers) over the user-item graph;
           items += h
  train  graph: per epoch, degree-sensitive pruning keeps (1 - dropout) of
           the edges, drawn without replacement with probability ~
           1/sqrt(deg_u deg_i), renormalized (`pre_epoch_processing`)
  eval   graph: the full normalized one
  loss   = BPR(u, i+, i-) + reg_weight * sum_m BPR(u, W_m f_m[i+], W_m f_m[i-])

f_m (the feature table) and W_m (an nn.Linear) train, as in MMRec, but they
enter the loss only: with reg_weight 0 they get no gradient, so they are
left out (Adam would leave them unchanged anyway).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import common as C
from mmjax.models.mmrec_zoo import sparse


@dataclasses.dataclass(frozen=True)
class FREEDOM(C.ZooModel):
  name = "freedom"
  feat_embed_dim: int = 64
  knn_k: int = 10
  n_mm_layers: int = 1
  n_ui_layers: int = 2
  reg_weight: float = 0.0
  mm_image_weight: float = 0.1
  dropout: float = 0.9

  @property
  def uses_features(self) -> bool:
    return self.reg_weight != 0.0 and bool(self.feature_dims)

  def init(self, key) -> dict:
    ku, ki, kf = jax.random.split(key, 3)
    d = self.embedding_size
    params = dict(user_emb=C.xavier_uniform(ku, (self.num_users, d)),
                  item_emb=C.xavier_uniform(ki, (self.num_items, d)))
    if self.uses_features:
      keys = jax.random.split(kf, len(self.feature_dims))
      params["trs"] = [C.linear_init(k, dim, self.feat_embed_dim)
                       for k, dim in zip(keys, self.feature_dims)]
    return params

  def init_features(self, params: dict, features: tuple) -> dict:
    """The trainable feature tables start as the features."""
    if self.uses_features:
      params = dict(params, feat=[jnp.asarray(f) for f in features])
    return params

  def graphs(self, train_pairs, features, on_host):
    # Both graphs are laid out for gathers (sparse.py), which beat the
    # segment sum and a host call on every backend.
    del on_host
    pairs = jnp.asarray(train_pairs, jnp.int32)
    out = dict(edge_weights=graph_lib.bipartite_edge_weights(
        pairs, self.num_users, self.num_items))
    ui = graph_lib.user_item_graph(train_pairs, self.num_users, self.num_items)
    out["full"] = jax.tree.map(jnp.asarray, sparse.Static.from_edges(
        ui.src, ui.dst, ui.weight, self.num_users + self.num_items))
    if features:
      weights = C.modality_weights(features.keys(), self.mm_image_weight)
      edges = graph_lib.stack_edges(
          [graph_lib.topk_mean_graph(f, self.knn_k) for f in features.values()],
          weights)
      out["item"] = jax.tree.map(jnp.asarray, sparse.Static.from_edges(
          edges.src, edges.dst, edges.weight, self.num_items))
    if self.dropout > 0.0:
      # The pruned graphs' degrees barely vary between draws: a few size
      # the layout; a draw that spills more takes the segment sum.
      nodes = self.num_users + self.num_items
      draw = jax.jit(lambda k: self._pruned(pairs, out["edge_weights"], k).dst)
      degrees = [np.bincount(np.asarray(draw(jax.random.key(s))), minlength=nodes)
                 for s in range(3)]
      out["ui_width"], out["ui_spill"] = sparse.capped_layout(degrees)
    return out

  def keep(self, num_edges: int) -> int:
    return int(num_edges * (1.0 - self.dropout))

  def _pruned(self, pairs, weights, key):
    return graph_lib.pruned_user_item_graph(
        key, pairs, weights, self.keep(pairs.shape[0]), self.num_users, self.num_items)

  def epoch_graphs(self, g, key):
    if self.dropout <= 0.0:
      return g
    ui = self._pruned(g.train_pairs, g.edge_weights, key)
    ui = sparse.Capped.from_edges(ui, self.num_users + self.num_items,
                                  g.ui_width, g.ui_spill)
    return dataclasses.replace(g, ui=ui)

  def _tables(self, params, g, ui=None):
    """(the layer mean over the user-item graph `ui` (default g.ui),
    (U + N, d); the item graph's h, (N, d)): users are the first U rows,
    items the rest plus h."""
    h = params["item_emb"]
    if g.item is not None:
      for _ in range(self.n_mm_layers):
        h = sparse.propagate(h, g.item)
    x = jnp.concatenate([params["user_emb"], params["item_emb"]])
    return sparse.layer_mean(x, g.ui if ui is None else ui, self.n_ui_layers), h

  def vectors(self, params, g):
    nodes, h = self._tables(params, g, g.full)
    users, items = C.split_nodes(nodes, self.num_users)
    return users, items + h

  def loss(self, params, g, batch, key):
    del key
    nodes, h = self._tables(params, g)
    # Rows gathered from the whole tables: the gradient is one scatter into
    # each, not per-split tables padded back together.
    b = batch.users.shape[0]
    items = jnp.concatenate([batch.items, batch.negatives])
    rows = nodes[jnp.concatenate([batch.users, items + self.num_users])]
    u, it = rows[:b], rows[b:] + h[items]
    mf = C.bpr(C.row_dot(u, it[:b]), C.row_dot(u, it[b:]), batch.valid)
    feat = jnp.zeros((), jnp.float32)
    if self.uses_features:
      for table, trs in zip(params["feat"], params["trs"]):
        p = C.linear(trs, table[batch.items])
        n = C.linear(trs, table[batch.negatives])
        feat = feat + C.bpr(C.row_dot(u, p), C.row_dot(u, n), batch.valid)
    loss = mf + self.reg_weight * feat
    return loss, dict(loss=loss, bpr=mf, feature_bpr=feat)
