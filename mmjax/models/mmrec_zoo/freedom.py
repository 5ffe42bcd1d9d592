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
import functools

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
    """MMRec's two tables, kept as one (users, then items): the graph
    products and Adam then read and write one array per step."""
    ku, ki, kf = jax.random.split(key, 3)
    d = self.embedding_size
    params = dict(nodes=jnp.concatenate([
        C.xavier_uniform(ku, (self.num_users, d)),
        C.xavier_uniform(ki, (self.num_items, d))]))
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
      # Laid out to read the item rows of the node table.
      out["item"] = jax.tree.map(jnp.asarray, sparse.Static.from_edges(
          edges.src, edges.dst, edges.weight, self.num_items, offset=self.num_users))
    if self.dropout > 0.0:
      out["pair_orders"] = tuple(jnp.asarray(o) for o in graph_lib.pair_orders(train_pairs))
      # The pruned graphs' degrees barely vary between draws: a few size
      # the layout; a draw that spills more takes the segment sum.
      nodes = self.num_users + self.num_items
      draw = jax.jit(lambda k: self._pruned(pairs, out["edge_weights"], k,
                                            out["pair_orders"]).dst)
      degrees = [np.bincount(np.asarray(draw(jax.random.key(s))), minlength=nodes)
                 for s in range(3)]
      out["ui_width"], out["ui_spill"] = sparse.capped_layout(degrees)
    return out

  def keep(self, num_edges: int) -> int:
    return int(num_edges * (1.0 - self.dropout))

  def _pruned(self, pairs, weights, key, orders):
    return graph_lib.pruned_user_item_graph(
        key, pairs, weights, self.keep(pairs.shape[0]), self.num_users, self.num_items,
        orders)

  def epoch_graphs(self, g, key):
    if self.dropout <= 0.0:
      return g
    ui = self._pruned(g.train_pairs, g.edge_weights, key, g.pair_orders)
    ui = sparse.Capped.from_edges(ui, self.num_users + self.num_items,
                                  g.ui_width, g.ui_spill)
    return dataclasses.replace(g, ui=ui)

  def vectors(self, params, g):
    x = params["nodes"]
    nodes = sparse.layer_mean(x, g.full, self.n_ui_layers)
    users, items = C.split_nodes(nodes, self.num_users)
    return users, items + _item_graph(x, g.item, self.num_users, self.n_mm_layers)

  def loss(self, params, g, batch, key):
    del key
    shape = (self.num_users, self.n_ui_layers, self.n_mm_layers)
    u, (pos, neg) = final_rows(shape, params["nodes"], batch.users,
                               (batch.items, batch.negatives), g.ui, g.item)
    mf = C.bpr(C.row_dot(u, pos), C.row_dot(u, neg), batch.valid)
    feat = jnp.zeros((), jnp.float32)
    if self.uses_features:
      for table, trs in zip(params["feat"], params["trs"]):
        p = C.linear(trs, table[batch.items])
        n = C.linear(trs, table[batch.negatives])
        feat = feat + C.bpr(C.row_dot(u, p), C.row_dot(u, n), batch.valid)
    loss = mf + self.reg_weight * feat
    return loss, dict(loss=loss, bpr=mf, feature_bpr=feat)


def _item_graph(x, item, num_users: int, layers: int, transpose: bool = False):
  """The item graph's `layers` products (N, d) of the item rows of the node
  table x (the graph reads them in place), or of its transpose."""
  if item is None or not layers:
    return x[num_users:]
  ell = item.a_t if transpose else item.a
  h = ell.matmul(x)
  for _ in range(layers - 1):
    h = ell.matmul(jnp.concatenate([x[:num_users], h]))
  return h


def _product(x, graph):
  """A x over the user-item graph: as drawn this epoch (sparse.Capped) or
  fixed (graph_lib.Edges, without pruning)."""
  if isinstance(graph, sparse.Capped):
    return sparse.capped_product(x, graph)
  return graph_lib.propagate(x, graph)


def _product_at(x, graph):
  """rows -> (A x)[rows]."""
  if isinstance(graph, sparse.Capped) and not graph.checked:
    return sparse.capped_rows(x, graph)
  y = _product(x, graph)
  return lambda rows: y[rows]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def final_rows(shape, x, users, items, ui, item):
  """FREEDOM's final vectors of `users` and of each array of item ids in
  the tuple `items`, from the node table x (U users, then the items), with
  shape = (U, ui layers L, item graph layers): users M x, items M x + h,
  M = (I + A + ... + A^L) / (L + 1) the layer mean over `ui` and h the item
  graph's products of the item rows of x (those rows themselves without an
  item graph, as in MMRec). M runs as its Horner form
  x + A (x + A (...)), one product a layer, gathered at the rows used; the
  VJP scatters the rows' cotangents once and applies M (symmetric) and the
  item graph's transpose: fewer passes over the tables than autodiff's."""
  return _final_rows_fwd(shape, x, users, items, ui, item)[0]


def _final_rows_fwd(shape, x, users, items, ui, item):
  num_users, layers, item_layers = shape
  t = x
  for _ in range(layers - 1):
    t = x + _product(t, ui)
  last = _product_at(t, ui) if layers else lambda rows: 0.0
  mean = lambda rows: (x[rows] + last(rows)) / (layers + 1)
  h = _item_graph(x, item, num_users, item_layers)
  out_items = tuple(mean(num_users + i) + h[i] for i in items)
  return (mean(users), out_items), (x.shape, users, items, ui, item)


def _final_rows_bwd(shape, res, dz):
  num_users, layers, item_layers = shape
  x_shape, users, items, ui, item = res
  du, ditems = dz
  # Scaled first: M's 1 / (L + 1) costs no pass over the table.
  scale = 1.0 / (layers + 1)
  g = jnp.zeros(x_shape, du.dtype).at[users].add(du * scale)
  for i, di in zip(items, ditems):
    g = g.at[num_users + i].add(di * scale)
  dx = g
  for _ in range(layers):
    dx = g + _product(dx, ui)
  # The item rows' cotangents reach h unchanged.
  dx = dx.at[num_users:].add(
      (layers + 1) * _item_graph(g, item, num_users, item_layers, transpose=True))
  ids = lambda a: np.zeros(a.shape, jax.dtypes.float0)
  return (dx, ids(users), tuple(ids(i) for i in items), sparse.no_gradient(ui),
          sparse.no_gradient(item))


final_rows.defvjp(_final_rows_fwd, _final_rows_bwd)
