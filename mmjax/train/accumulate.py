"""GradCache gradient accumulation (Gao et al. 2021): big contrastive batches
with the encoder memory of a micro-batch.

Accumulating per-micro-batch gradients would shrink each contrastive loss to
the micro-batch's negatives. GradCache keeps every negative and is exact:

  1. encode every micro-batch without gradients (per-example outputs),
  2. the loss on the whole batch's outputs: its value, its gradient w.r.t.
     those outputs, and w.r.t. the parameters the loss itself uses
     (temperatures, biases),
  3. encode each micro-batch again and pull its slice of the output gradient
     back through the encoders (`jax.vjp`), summing parameter gradients.

Micro-batch m takes rows m*b .. (m+1)*b of every device's local shard, so
every micro-batch is spread over the whole `data` axis; each micro-batch gets
its own dropout key, the same in passes 1 and 3. The encoders run twice:
about one extra forward pass.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax.errors import MmjaxError


def _to_micro(x, accum: int, shards: int):
  """(B, ...) -> (accum, B // accum, ...), micro-batch m from every shard."""
  b = x.shape[0]
  if b % (accum * shards):
    raise MmjaxError(f"config.train.accum_steps={accum}: the batch of {b} does not "
                     f"split into {accum} micro-batches on each of {shards} devices")
  x = x.reshape(shards, accum, b // (accum * shards), *x.shape[1:])
  return x.swapaxes(0, 1).reshape(accum, b // accum, *x.shape[3:])


def _from_micro(x, shards: int):
  """Inverse of `_to_micro`."""
  accum, mb = x.shape[:2]
  x = x.reshape(accum, shards, mb // shards, *x.shape[2:])
  return x.swapaxes(0, 1).reshape(accum * mb, *x.shape[3:])


def gradcache_value_and_grad(encode, head, accum_steps: int, mesh):
  """Like `jax.value_and_grad(loss, has_aux=True)` for
  loss(params, buffers, batch, rng, step) = head(params, buffers,
  encode(params, buffers, batch, rng), batch, rng, step), with `encode` run in
  `accum_steps` micro-batches. `encode` must be per-example (row i of its
  outputs depends on example i alone)."""
  shards = 1 if mesh is None else mesh.shape["data"]
  spread = (None if mesh is None
            else NamedSharding(mesh, P(None, "data")))   # (accum, micro, ...)

  def micro(tree):
    tree = jax.tree.map(lambda x: _to_micro(x, accum_steps, shards), tree)
    if spread is None:
      return tree
    return jax.tree.map(lambda x: lax.with_sharding_constraint(x, spread), tree)

  def micro_rng(rng, m):
    return None if rng is None else jax.random.fold_in(rng, m)

  def value_and_grad(params, buffers, batch, rng, step):
    micro_batches, index = micro(batch), jnp.arange(accum_steps)
    # 1. Per-example outputs of the whole batch, one micro-batch at a time.
    outs = lax.map(lambda xs: encode(lax.stop_gradient(params), buffers, xs[0],
                                     micro_rng(rng, xs[1])),
                   (micro_batches, index))
    outs = jax.tree.map(lambda x: _from_micro(x, shards), outs)
    # 2. The loss on all of them, and its gradient w.r.t. them.
    (loss, aux), (grads, d_outs) = jax.value_and_grad(
        head, argnums=(0, 2), has_aux=True)(params, buffers, outs, batch, rng, step)

    # 3. Back through the encoders, one micro-batch at a time.
    def backward(grads, xs):
      mb, m, d_out = xs
      _, pull = jax.vjp(lambda p: encode(p, buffers, mb, micro_rng(rng, m)), params)
      return jax.tree.map(jnp.add, grads, pull(d_out)[0]), None

    grads, _ = lax.scan(backward, grads, (micro_batches, index, micro(d_outs)))
    return (loss, aux), grads

  return value_and_grad
