"""Embedder: a model snapshot's jitted, batched item/user/text/image vectors.

Each function is compiled once per shape: inputs go through in fixed-size
batches sharded on the mesh's `data` axis, outputs come back replicated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax import mesh as mesh_lib
from mmjax.eval.metrics import batched_apply


class Embedder:
  """Jitted item/user embeddings over a (graphdef, params, buffers) snapshot."""

  def __init__(self, graphdef, mesh, batch_size: int):
    self.batch, self.devices = batch_size, mesh.shape["data"]
    data, rep = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)

    @functools.partial(jax.jit, out_shardings=rep)
    def items(params, buffers, tokens, mask, images, ids):
      model = nnx.merge(graphdef, params, buffers)
      return model.encode_items(tokens, mask, images, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def item_vectors(params, buffers, content, ids):
      return nnx.merge(graphdef, params, buffers).rec.item_vectors(content, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def users(params, buffers, user_ids, history, item_table):
      model = nnx.merge(graphdef, params, buffers)
      return model.encode_users(user_ids, history, item_table)

    @functools.partial(jax.jit, out_shardings=rep)
    def scoring(params, buffers, users, items):
      model = nnx.merge(graphdef, params, buffers)
      ids = jnp.arange(items.shape[0])
      return model.rec.scoring_vectors(users, items, ids)

    @functools.partial(jax.jit, out_shardings=rep)
    def texts(params, buffers, tokens, mask):
      return nnx.merge(graphdef, params, buffers).encode_text(tokens, mask)

    @functools.partial(jax.jit, out_shardings=rep)
    def images(params, buffers, images):
      return nnx.merge(graphdef, params, buffers).encode_images(images)

    self.scoring = scoring
    self._items, self._users, self._data = items, users, data
    self._texts, self._images, self._item_vectors = texts, images, item_vectors

  def _apply(self, jitted, params, buffers, arrays, *replicated_args):
    """jitted over batches of `arrays`, each batch sharded on `data`."""
    fn = lambda *xs: jitted(params, buffers,
                            *(jax.device_put(x, self._data) for x in xs),
                            *replicated_args)
    return batched_apply(fn, arrays, self.batch, self.devices)

  def items(self, params, buffers, tokens, mask, images):
    ids = np.arange(len(tokens), dtype=np.int32)
    return self._apply(self._items, params, buffers, (tokens, mask, images, ids))

  def item_vectors(self, params, buffers, content):
    """Item vectors of already embedded content (N, dim), e.g. to re-weigh
    the item-ID table without running the encoders again."""
    ids = np.arange(len(content), dtype=np.int32)
    return self._apply(self._item_vectors, params, buffers, (np.asarray(content), ids))

  def users(self, params, buffers, histories: np.ndarray, item_table: np.ndarray):
    ids = np.arange(len(histories), dtype=np.int32)
    return self._apply(self._users, params, buffers, (ids, histories), item_table)

  def texts(self, params, buffers, tokens, mask):
    """Aligned text vectors of tokenized texts (e.g. queries)."""
    return self._apply(self._texts, params, buffers, (tokens, mask))

  def images(self, params, buffers, images):
    """Aligned image vectors of normalized images."""
    return self._apply(self._images, params, buffers, (images,))
