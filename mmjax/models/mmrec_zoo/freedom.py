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

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import common as C


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
    if not features:
      return {}
    weights = C.modality_weights(features.keys(), self.mm_image_weight)
    edges = graph_lib.stack_edges(
        [graph_lib.topk_mean_graph(f, self.knn_k) for f in features.values()],
        weights)
    del on_host   # XLA's gather + segment_sum beat a host call on graphs this small.
    edges = jax.tree.map(jnp.asarray, edges)
    pairs = jnp.asarray(train_pairs)
    return dict(item=edges, edge_weights=graph_lib.bipartite_edge_weights(
        pairs, self.num_users, self.num_items))

  def keep(self, num_edges: int) -> int:
    return int(num_edges * (1.0 - self.dropout))

  def epoch_graphs(self, g, key):
    if self.dropout <= 0.0:
      return g
    ui = graph_lib.pruned_user_item_graph(
        key, g.train_pairs, g.edge_weights, self.keep(g.train_pairs.shape[0]),
        self.num_users, self.num_items)
    return dataclasses.replace(g, ui=ui)

  def _forward(self, params, g):
    h = params["item_emb"]
    if g.item is not None:
      for _ in range(self.n_mm_layers):
        h = graph_lib.propagate(h, g.item)
    x = jnp.concatenate([params["user_emb"], params["item_emb"]])
    users, items = C.split_nodes(graph_lib.layer_mean(x, g.ui, self.n_ui_layers),
                                 self.num_users)
    return users, items + h

  def vectors(self, params, g):
    return self._forward(params, g)

  def loss(self, params, g, batch, key):
    del key
    users, items = self._forward(params, g)
    u = users[batch.users]
    mf = C.bpr(C.row_dot(u, items[batch.items]), C.row_dot(u, items[batch.negatives]),
               batch.valid)
    feat = jnp.zeros((), jnp.float32)
    if self.uses_features:
      for table, trs in zip(params["feat"], params["trs"]):
        p = C.linear(trs, table[batch.items])
        n = C.linear(trs, table[batch.negatives])
        feat = feat + C.bpr(C.row_dot(u, p), C.row_dot(u, n), batch.valid)
    loss = mf + self.reg_weight * feat
    return loss, dict(loss=loss, bpr=mf, feature_bpr=feat)
