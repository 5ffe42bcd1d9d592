"""Graph propagation: the edge lists equal their dense matrices, and the host
CSR path gives the values and gradients of the segment_sum path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import graph as graph_lib


def _dense(edges, n):
  a = np.zeros((n, n))
  np.add.at(a, (np.asarray(edges.dst), np.asarray(edges.src)), np.asarray(edges.weight))
  return a


@pytest.fixture(scope="module")
def graphs():
  rng = np.random.default_rng(0)
  ui = graph_lib.user_item_graph(rng.integers(0, [30, 20], (150, 2)), 30, 20,
                                 multiple_of=4)
  # kNN graphs are directed, so A != A^T: the VJP must use the transpose.
  knn = graph_lib.knn_graph(rng.standard_normal((50, 6)), k=3)
  return ui, knn


def test_edges_equal_dense_normalized_adjacency(graphs):
  ui, knn = graphs
  a = _dense(ui, 50)
  np.testing.assert_allclose(a, a.T, atol=1e-7)    # Bipartite, symmetric.
  deg = (a > 0).sum(1)
  inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0)
  np.testing.assert_allclose(a, (a > 0) * inv[:, None] * inv[None, :], atol=1e-6)
  k = _dense(knn, 50)
  assert np.all(np.diag(k) == 0) and not np.allclose(k, k.T)
  x = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
  want = (x + a @ x + a @ a @ x) / 3
  np.testing.assert_allclose(graph_lib.layer_mean(jnp.asarray(x), ui, 2), want, atol=1e-5)


def test_host_csr_path_equals_segment_sum_with_gradients(graphs):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((3, 50, 4)), jnp.float32)   # 3 runs.
  w = jnp.asarray(rng.standard_normal(4), jnp.float32)

  def loss(x, ui, knn):
    h = graph_lib.layer_mean(x, ui, 2) + graph_lib.propagate(x, knn)
    return jnp.sum(jnp.tanh(h) * w)

  run = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None, None)))
  ui, knn = graphs
  on_host = lambda e: dataclasses.replace(e, on_host=True)
  want_v, want_g = run(x, ui, knn)
  got_v, got_g = run(x, on_host(ui), on_host(knn))
  np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-5)
  # And the transpose is needed: with A in place of A^T the gradient differs.
  k = _dense(knn, 50)
  g = np.asarray(jax.grad(lambda x: jnp.sum(graph_lib.propagate(x, on_host(knn)) * w))(x[0]))
  np.testing.assert_allclose(g, k.T @ np.tile(np.asarray(w), (50, 1)), atol=1e-5)
