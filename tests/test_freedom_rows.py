"""FREEDOM's graph products with their hand-written VJP
(mmjax.models.mmrec_zoo.freedom.final_rows) give the values and gradients
of the plain formulation (layer mean over the segment sum, item graph,
rows gathered, autodiff), on every layout of the pruned graph; and the
pruning reads its kept pairs in precomputed orders without changing them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import freedom, sparse

USERS, ITEMS, DIM = 30, 20, 8


@pytest.fixture(scope="module")
def graphs():
  rng = np.random.default_rng(0)
  pairs = np.unique(np.stack([rng.integers(0, USERS, 300),
                              rng.integers(0, ITEMS, 300)], 1), axis=0)
  pairs = jnp.asarray(pairs, jnp.int32)
  w = graph_lib.bipartite_edge_weights(pairs, USERS, ITEMS)
  e = graph_lib.pruned_user_item_graph(jax.random.key(0), pairs, w, len(pairs) // 2,
                                       USERS, ITEMS, graph_lib.pair_orders(pairs))
  feats = rng.normal(size=(ITEMS, 5)).astype(np.float32)
  knn = graph_lib.topk_mean_graph(feats, 4)
  item = jax.tree.map(jnp.asarray, sparse.Static.from_edges(
      knn.src, knn.dst, knn.weight, ITEMS, offset=USERS))
  plain_item = jax.tree.map(jnp.asarray, sparse.Static.from_edges(
      knn.src, knn.dst, knn.weight, ITEMS))
  # Width 2 with room for every spilled edge; a room too small for them.
  return dict(edges=e, item=item, plain_item=plain_item,
              fits=sparse.Capped.from_edges(e, USERS + ITEMS, 2, 512),
              spills=sparse.Capped.from_edges(e, USERS + ITEMS, 2, 8))


def _batch(seed):
  rng = np.random.default_rng(seed)
  users = jnp.asarray(rng.integers(0, USERS, 16), jnp.int32)
  items = tuple(jnp.asarray(rng.integers(0, ITEMS, 16), jnp.int32) for _ in range(2))
  return users, items


def _reference(x, users, items, edges, plain_item, layers, item_layers):
  m = graph_lib.layer_mean(x, edges, layers)
  h = x[USERS:]   # MMRec adds the item rows themselves without a graph.
  for _ in range(item_layers if plain_item is not None else 0):
    h = sparse.propagate(h, plain_item)
  return m[users], tuple(m[USERS + i] + h[i] for i in items)


def _value_and_grad(fn, x, probes):
  def total(x):
    u, its = fn(x)
    return jnp.sum(u * probes[0]) + sum(jnp.sum(a * p) for a, p in zip(its, probes[1:]))
  return jax.jit(jax.value_and_grad(total))(x)


@pytest.mark.parametrize("layout", ["checked", "unchecked", "edges", "spills"])
@pytest.mark.parametrize("layers,item_layers,with_item", [(2, 1, True), (1, 2, True),
                                                          (0, 1, True), (2, 1, False)])
def test_final_rows_match_autodiff_of_the_plain_products(graphs, layout, layers,
                                                         item_layers, with_item):
  ui = {"checked": graphs["fits"], "spills": graphs["spills"], "edges": graphs["edges"],
        "unchecked": dataclasses.replace(graphs["fits"], checked=False)}[layout]
  assert bool(graphs["fits"].fits) and not bool(graphs["spills"].fits)
  item = graphs["item"] if with_item else None
  x = jax.random.normal(jax.random.key(1), (USERS + ITEMS, DIM))
  users, items = _batch(2)
  probes = [jax.random.normal(jax.random.key(3 + k), (16, DIM)) for k in range(3)]
  shape = (USERS, layers, item_layers)
  got = _value_and_grad(
      lambda x: freedom.final_rows(shape, x, users, items, ui, item), x, probes)
  want = _value_and_grad(
      lambda x: _reference(x, users, items, graphs["edges"],
                           graphs["plain_item"] if with_item else None,
                           layers, item_layers), x, probes)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_rows_of_the_capped_product_match_the_full_product(graphs):
  g = dataclasses.replace(graphs["fits"], checked=False)
  x = jax.random.normal(jax.random.key(4), (USERS + ITEMS, DIM))
  rows = jnp.asarray([0, 3, 3, USERS + 1, USERS + ITEMS - 1], jnp.int32)
  full = graph_lib.propagate(x, graphs["edges"])
  np.testing.assert_allclose(sparse.capped_rows(x, g)(rows), full[rows], rtol=1e-5,
                             atol=1e-6)
  assert int(jnp.sum(graphs["fits"].spill.weight > 0)) > 0   # Spilled edges count.


def test_pruning_in_precomputed_orders_keeps_the_same_edges():
  rng = np.random.default_rng(5)
  pairs = jnp.asarray(np.unique(np.stack([rng.integers(0, USERS, 200),
                                          rng.integers(0, ITEMS, 200)], 1), axis=0))
  w = graph_lib.bipartite_edge_weights(pairs, USERS, ITEMS)
  draw = lambda orders: graph_lib.pruned_user_item_graph(
      jax.random.key(6), pairs, w, 40, USERS, ITEMS, orders)
  a, b = draw(graph_lib.pair_orders(pairs)), draw(None)
  assert np.all(np.diff(np.asarray(a.dst)) >= 0)
  edges = lambda e: sorted(zip(*(np.asarray(v).tolist() for v in (e.dst, e.src, e.weight))))
  assert edges(a) == edges(b)
