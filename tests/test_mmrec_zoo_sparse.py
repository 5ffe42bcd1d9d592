"""The zoo's gather layouts (mmjax.models.mmrec_zoo.sparse) compute what the
segment sum computes, values and gradients, including the pruned graph's
fallback when a draw spills past its room; and the epoch's host shuffle and
negatives keep MMRec's laws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import sparse
from mmjax.train.zoo_task import Sampler, Shape, epoch_order


def _random_graph(rng, n, num_edges):
  src, dst = rng.integers(0, n, num_edges), rng.integers(0, n - 3, num_edges)
  dst[:80] = 0   # A row cut in pieces (over MAX_WIDTH); the last rows stay empty.
  e = graph_lib._edges(src, dst, rng.random(num_edges), 1)
  return jax.tree.map(jnp.asarray, e)


def _value_and_grad(prop, x, probe):
  return jax.jit(jax.value_and_grad(lambda x: jnp.sum(prop(x) * probe)))(x)


def test_static_layout_matches_the_segment_sum():
  rng = np.random.default_rng(0)
  n = 50
  e = _random_graph(rng, n, 300)
  g = jax.tree.map(jnp.asarray, sparse.Static.from_edges(e.src, e.dst, e.weight, n))
  assert len(g.a.cols) > 2 and g.a.num_long == 1   # Several widths, and pieces.
  x = jnp.asarray(rng.normal(size=(n, 8)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(n, 8)), jnp.float32)
  want = _value_and_grad(lambda x: graph_lib.propagate(x, e), x, probe)
  got = _value_and_grad(lambda x: sparse.propagate(x, g), x, probe)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(sparse.propagate)(x, g)[-3:], 0.0)


@pytest.mark.parametrize("spill", [512, 8])   # Room for the spill; too little.
def test_pruned_graph_layout_matches_the_segment_sum(spill):
  rng = np.random.default_rng(1)
  users, items = 30, 20
  pairs = np.unique(np.stack([rng.integers(0, users, 400),
                              rng.integers(0, items, 400)], 1), axis=0)
  pairs = jnp.asarray(pairs, jnp.int32)
  w = graph_lib.bipartite_edge_weights(pairs, users, items)
  e = graph_lib.pruned_user_item_graph(jax.random.key(0), pairs, w,
                                       len(pairs) // 2, users, items)
  capped = sparse.Capped.from_edges(e, users + items, 2, spill)
  over = int(np.maximum(np.bincount(np.asarray(e.dst)) - 2, 0).sum())
  assert bool(capped.fits) == (spill == 512) and 8 < over <= 512
  x = jnp.asarray(rng.normal(size=(users + items, 8)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  for layers in (1, 2):
    want = _value_and_grad(lambda x: graph_lib.layer_mean(x, e, layers), x, probe)
    got = _value_and_grad(lambda x: sparse.layer_mean(x, capped, layers), x, probe)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_capped_layout_trades_width_for_spill():
  deg = np.array([1] * 100 + [40])
  width, room = sparse.capped_layout([deg])
  assert width == 1 and room >= 39   # One long row spills; no wide block.
  width, room = sparse.capped_layout([np.full(100, 4)])
  assert width == 4 and room == 8


def test_epoch_order_is_a_seeded_permutation_then_padding():
  s = Shape(num_train=10, batch_size=4)
  a = epoch_order(np.array([1, 2], np.uint32), s)
  assert a.shape == (3, 4) and a.dtype == np.int32
  assert sorted(a.ravel()[:10]) == list(range(10)) and list(a.ravel()[10:]) == [10, 11]
  np.testing.assert_array_equal(a, epoch_order(np.array([1, 2], np.uint32), s))
  assert not np.array_equal(a, epoch_order(np.array([1, 3], np.uint32), s))


def test_negatives_redraw_past_the_room_of_a_round_and_never_hit_train_items():
  # User 0 holds 8 of the 12 items: two of three draws are train items, so
  # more rows stay bad after the spare redraw than one round's room.
  pairs = np.array([[0, i] for i in range(8)] + [[1, i] for i in range(8, 12)])
  s = Sampler.from_pairs(pairs, 2)
  assert s.steps == 4   # 8 items for user 0: 4 halvings.
  users = jnp.asarray(np.repeat([[0], [1]], 500, axis=1), jnp.int32)   # (2, 500)
  out = np.asarray(s.negatives(jax.random.key(0), users, room=32))
  assert out.shape == (2, 500)
  assert np.isin(out[0], np.arange(8, 12)).all() and len(set(out[0].tolist())) == 4
  assert np.isin(out[1], np.arange(8)).all() and len(set(out[1].tolist())) == 8