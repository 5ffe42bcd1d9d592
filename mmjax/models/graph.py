"""Graphs over users and items, as edge lists, and propagation over them.

Propagation is a gather of source rows times the edge weight, summed into
destination rows with `jax.ops.segment_sum`. Edge arrays may be sharded over
the mesh's data axis: each device sums its slice of the edges and XLA adds
the partial sums. Edges are sorted by destination, so the sum runs in order.

On one CPU device, edges marked `on_host` propagate through SciPy's CSR
product instead (a `pure_callback` with its own VJP, A^T g): XLA:CPU writes
the gathered (edges, dim) messages to memory before summing them, which the
CSR product never does.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Edges:
  """Weighted directed edges src -> dst; zero-weight padding edges are inert."""
  src: jax.Array
  dst: jax.Array
  weight: jax.Array
  # Static: propagate with the host CSR product (one CPU device only).
  on_host: bool = dataclasses.field(default=False, metadata=dict(static=True))


def _edges(src, dst, weight, multiple_of: int) -> Edges:
  order = np.lexsort((src, dst))
  src, dst, weight = src[order], dst[order], weight[order]
  pad = -len(src) % multiple_of
  # Padding points at the last node (keeps dst sorted) with weight 0.
  last = int(dst[-1]) if len(dst) else 0
  src = np.concatenate([src, np.full(pad, last)]).astype(np.int32)
  dst = np.concatenate([dst, np.full(pad, last)]).astype(np.int32)
  weight = np.concatenate([weight, np.zeros(pad)]).astype(np.float32)
  return Edges(src, dst, weight)


def sym_normalized(rows, cols, num_nodes: int, multiple_of: int = 1) -> Edges:
  """Edges of D^-1/2 A D^-1/2 for the 0/1 matrix A with A[rows, cols] = 1.

  Degrees are row sums; a node without edges keeps degree 0 (and no edges).
  """
  rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
  deg = np.bincount(rows, minlength=num_nodes).astype(np.float64)
  inv = np.zeros(num_nodes)
  inv[deg > 0] = deg[deg > 0] ** -0.5
  return _edges(cols, rows, inv[rows] * inv[cols], multiple_of)


def user_item_graph(pairs, num_users: int, num_items: int,
                    multiple_of: int = 1) -> Edges:
  """LightGCN's normalized bipartite adjacency over U + N nodes (items after
  users); duplicate pairs count once."""
  pairs = np.unique(np.asarray(pairs, np.int64), axis=0)
  u, i = pairs[:, 0], pairs[:, 1] + num_users
  return sym_normalized(np.concatenate([u, i]), np.concatenate([i, u]),
                        num_users + num_items, multiple_of)


def knn_graph(features, k: int, multiple_of: int = 1,
              chunk: int = 2048) -> Edges:
  """Item-item graph from cosine similarity: each item's k nearest other
  items, D^-1/2 A D^-1/2 normalized (as LATTICE/FREEDOM build it)."""
  x = np.asarray(features, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(x)
  k = min(k, n - 1)
  xt = jnp.asarray(x)
  nbrs = []
  for start in range(0, n, chunk):
    sim = xt[start:start + chunk] @ xt.T
    rows = jnp.arange(sim.shape[0])
    sim = sim.at[rows, rows + start].set(-jnp.inf)  # Not its own neighbour.
    nbrs.append(np.asarray(jax.lax.top_k(sim, k)[1]))
  cols = np.concatenate(nbrs).reshape(-1)
  rows = np.repeat(np.arange(n), k)
  return sym_normalized(rows, cols, n, multiple_of)


def propagate(x: jax.Array, edges: Edges) -> jax.Array:
  """y[d] = sum over edges s -> d of weight * x[s]."""
  if edges.on_host:
    return _host_propagate(x, edges.src, edges.dst, edges.weight)
  msg = x[edges.src] * edges.weight[:, None].astype(x.dtype)
  return jax.ops.segment_sum(msg, edges.dst, num_segments=x.shape[0],
                             indices_are_sorted=True)


def _csr_product(x, src, dst, weight, transpose: bool):
  """A @ x (or A^T @ x) for A[dst, src] = weight, dst sorted; x is (..., n, d)
  (a leading run axis under vmap; the edges then carry size-1 axes)."""
  x = np.asarray(x)
  src, dst, weight = (np.asarray(a).reshape(-1) for a in (src, dst, weight))
  n = x.shape[-2]
  indptr = np.searchsorted(dst, np.arange(n + 1))
  fmt = scipy.sparse.csc_matrix if transpose else scipy.sparse.csr_matrix
  a = fmt((weight, src, indptr), shape=(n, n))
  cols = np.moveaxis(x, -2, 0).reshape(n, -1)      # One product for all runs.
  y = np.asarray(a @ cols, x.dtype).reshape((n,) + x.shape[:-2] + x.shape[-1:])
  return np.moveaxis(y, 0, -2)


def _host_call(x, src, dst, weight, transpose):
  return jax.pure_callback(
      functools.partial(_csr_product, transpose=transpose),
      jax.ShapeDtypeStruct(x.shape, x.dtype), x, src, dst, weight,
      vmap_method="expand_dims")


@jax.custom_vjp
def _host_propagate(x, src, dst, weight):
  return _host_call(x, src, dst, weight, transpose=False)


def _host_propagate_fwd(x, src, dst, weight):
  return _host_call(x, src, dst, weight, transpose=False), (src, dst, weight)


def _host_propagate_bwd(res, g):
  src, dst, weight = res
  int_zero = lambda a: np.zeros(a.shape, jax.dtypes.float0)
  # The weights are constants of the graph: no gradient flows to them.
  return (_host_call(g, src, dst, weight, transpose=True), int_zero(src),
          int_zero(dst), jnp.zeros_like(weight))


_host_propagate.defvjp(_host_propagate_fwd, _host_propagate_bwd)


def layer_mean(x: jax.Array, edges: Edges, layers: int) -> jax.Array:
  """LightGCN: the mean of x, Ax, ..., A^layers x."""
  total, h = x, x
  for _ in range(layers):
    h = propagate(h, edges)
    total = total + h
  return total / (layers + 1)


def stack_edges(edge_sets: list[Edges], weights=None) -> Edges:
  """One edge list for sum_m w_m A_m (e.g. one kNN graph per modality)."""
  weights = weights or [1.0 / len(edge_sets)] * len(edge_sets)
  cat = lambda f: np.concatenate([np.asarray(f(e)) for e in edge_sets])
  w = np.concatenate([np.asarray(e.weight) * wm for e, wm in zip(edge_sets, weights)])
  src, dst = cat(lambda e: e.src), cat(lambda e: e.dst)
  order = np.lexsort((src, dst))
  return Edges(src[order], dst[order], w[order].astype(np.float32))


def topk_mean_graph(features, k: int, multiple_of: int = 1,
                    chunk: int = 2048) -> Edges:
  """MMRec's (FREEDOM's) item-item graph: each item's k most cosine-similar
  items, the item itself included, D^-1/2 A D^-1/2 with out-degrees (= k),
  so every edge weighs 1/k."""
  x = np.asarray(features, np.float32)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(x)
  k = min(k, n)
  xt = jnp.asarray(x)
  nbrs = [np.asarray(jax.lax.top_k(xt[s:s + chunk] @ xt.T, k)[1])
          for s in range(0, n, chunk)]
  cols = np.concatenate(nbrs).reshape(-1)
  rows = np.repeat(np.arange(n), k)
  deg = np.bincount(rows, minlength=n) + 1e-7
  inv = deg ** -0.5
  return _edges(cols, rows, inv[rows] * inv[cols], multiple_of)


def bipartite_edge_weights(pairs, num_users: int, num_items: int) -> jax.Array:
  """1/sqrt(deg_u deg_i) of each (user, item) pair, degrees counted over
  `pairs` (FREEDOM's `_normalize_adj_m`); traceable."""
  u, i = pairs[:, 0], pairs[:, 1]
  ones = jnp.ones(u.shape, jnp.float32)
  du = jax.ops.segment_sum(ones, u, num_segments=num_users) + 1e-7
  di = jax.ops.segment_sum(ones, i, num_segments=num_items) + 1e-7
  return du[u] ** -0.5 * di[i] ** -0.5


def pair_orders(pairs) -> tuple[np.ndarray, np.ndarray]:
  """The (user, item) pairs' indices stably sorted by user and by item:
  `pruned_user_item_graph` reads its kept pairs in these orders, so that
  its edges come out sorted by destination without a sort per draw."""
  pairs = np.asarray(pairs)
  return (np.argsort(pairs[:, 0], kind="stable").astype(np.int32),
          np.argsort(pairs[:, 1], kind="stable").astype(np.int32))


def pruned_user_item_graph(key, pairs, weights, keep: int, num_users: int,
                           num_items: int, orders=None) -> Edges:
  """FREEDOM's degree-sensitive edge pruning, on device: `keep` of the
  (user, item) `pairs` drawn without replacement with probability
  proportional to `weights` (Gumbel top-k, the law of torch.multinomial
  without replacement), renormalized over the kept edges and made
  symmetric over U + N nodes (items after users), sorted by destination.
  `orders`: `pair_orders(pairs)`, computed once for many draws."""
  if orders is None:
    orders = jnp.argsort(pairs[:, 0], stable=True), jnp.argsort(pairs[:, 1], stable=True)
  gumbel = jax.random.gumbel(key, weights.shape)
  top = jax.lax.top_k(jnp.log(weights) + gumbel, keep)[1]
  kept = jnp.zeros(weights.shape, bool).at[top].set(True)
  # The kept pairs in user order, then in item order.
  user_side, item_side = (pairs[o[jnp.nonzero(kept[o], size=keep)[0]]] for o in orders)
  u, i = user_side[:, 0], item_side[:, 1]
  ones = jnp.ones((keep,), jnp.float32)
  du = jax.ops.segment_sum(ones, u, num_users, indices_are_sorted=True) + 1e-7
  di = jax.ops.segment_sum(ones, i, num_items, indices_are_sorted=True) + 1e-7
  weight = lambda p: du[p[:, 0]] ** -0.5 * di[p[:, 1]] ** -0.5
  return Edges(jnp.concatenate([user_side[:, 1] + num_users, item_side[:, 0]]).astype(jnp.int32),
               jnp.concatenate([u, i + num_users]).astype(jnp.int32),
               jnp.concatenate([weight(user_side), weight(item_side)]))
