"""Two-tower recommender head: item vectors from fused content, user vectors
from a user-ID embedding plus the user's pooled history; score = dot product.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.aligners import l2_normalize


def _embed(num: int, dim: int, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(num, dim, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


class ItemMemory(nnx.Variable):
  """Last computed vector of every item; state, not a trained parameter."""


class PointwiseHead(nnx.Module):
  """The explicit-label head of loss.pointwise on the scoring vectors:

    prediction = bias + sum_k weight_k u'_k v'_k

  a logit for 0/1 clicks (`kind` "binary"), a rating for "rating". With
  weight = temperature it starts as cos(u, v) (+ the item bias, scaled) and
  bias as the train labels' mean (or its logit), so the first steps fit the
  spread, not the offset. The ranking scores never read it.
  """

  def __init__(self, dim: int, *, kind: str, offset: float, scale: float):
    self.kind = kind
    self.weight = nnx.Param(jnp.full((dim,), scale, jnp.float32))
    self.bias = nnx.Param(jnp.asarray(offset, jnp.float32))

  def __call__(self, u: jax.Array, v: jax.Array) -> jax.Array:
    """Predictions (B,) of scoring-vector pairs u, v (B, d)."""
    uv = u.astype(jnp.float32) * v.astype(jnp.float32)
    return uv @ self.weight[...] + self.bias[...]


class Recommender(nnx.Module):
  """Scores users against items.

  item = normalize(fused content [+ item-ID embedding])
  user = normalize([user-ID embedding +] p + MLP(p)),
         p = normalize(masked mean of history vectors)

  Running the encoders on every history item would multiply a step's encoder
  cost by the history length, so the history is pooled over a table:
  - `history="memory"`: a memory bank of each item's latest item vector (as
    in MoCo), refreshed with the batch's items every step and treated as a
    constant by the gradient. The user tower then sees item *content* from
    the first step. Evaluation pools freshly encoded item vectors instead.
  - `history="embedding"`: a separately learned per-item table.
  """

  def __init__(self, *, num_users: int, num_items: int, dim: int,
               item_id_embedding: bool, user_id_embedding: bool,
               history: str, item_bias: bool, temperature: float,
               rngs: nnx.Rngs, label_kind: str = "", label_offset: float = 0.0):
    self.item_id_embed = _embed(num_items, dim, rngs) if item_id_embedding else None
    self.user_embed = _embed(num_users, dim, rngs) if user_id_embedding else None
    self.item_bias = (nnx.Embed(num_items, 1, embedding_init=nnx.initializers.zeros,
                                rngs=rngs) if item_bias else None)
    self.temperature = temperature
    if history == "memory":
      self.history_embed = None
      self.item_memory = ItemMemory(jnp.zeros((num_items, dim), jnp.float32))
    else:
      self.history_embed = _embed(num_items, dim, rngs)
      self.item_memory = None
    self.history_mlp = nnx.Sequential(
        nnx.Linear(dim, 2 * dim, rngs=rngs), nnx.gelu,
        nnx.Linear(2 * dim, dim, rngs=rngs))
    # Only for labelled data (loss.pointwise): others keep their tree.
    self.pointwise = PointwiseHead(
        dim + int(item_bias), kind=label_kind, offset=label_offset,
        scale=temperature) if label_kind else None

  def item_vectors(self, fused: jax.Array, item_ids: jax.Array) -> jax.Array:
    v = fused
    if self.item_id_embed is not None:
      v = v + self.item_id_embed(item_ids)
    return l2_normalize(v)

  def scoring_vectors(self, users: jax.Array, items: jax.Array,
                      item_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(u', v') with u'.v' = cos(u, v) / temperature + bias(item).

    Both towers are unit vectors, so the temperature sets the score range;
    the bias frees that range from having to encode popularity. Appending
    [1] and [bias] keeps the score a plain dot product, for in-batch losses
    and for full-ranking top-k alike.
    """
    u = users.astype(jnp.float32) / self.temperature
    v = items.astype(jnp.float32)
    if self.item_bias is None:
      return u, v
    ones = jnp.ones(u.shape[:-1] + (1,), u.dtype)
    return (jnp.concatenate([u, ones], -1),
            jnp.concatenate([v, self.item_bias(item_ids).astype(v.dtype)], -1))

  def history_table(self) -> jax.Array:
    """The (N, dim) table the user tower pools during training."""
    if self.item_memory is not None:
      return jax.lax.stop_gradient(self.item_memory[...])
    return self.history_embed.embedding[...]

  def refreshed_memory(self, item_ids: jax.Array, vectors: jax.Array):
    """The memory with the batch's item vectors written in (duplicates
    averaged), or None without a memory. Returned, not assigned: the caller
    stores it outside the differentiated function."""
    if self.item_memory is None:
      return None
    n = self.item_memory.shape[0]
    v = jax.lax.stop_gradient(vectors).astype(jnp.float32)
    total = jax.ops.segment_sum(v, item_ids, num_segments=n)
    count = jax.ops.segment_sum(jnp.ones_like(item_ids, jnp.float32), item_ids,
                                num_segments=n)[:, None]
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0),
                     self.item_memory[...])

  def user_vectors(self, user_ids: jax.Array, history: jax.Array,
                   table: jax.Array | None = None) -> jax.Array:
    """history: (B, H) item ids, -1 marks padding; table defaults to history_table()."""
    table = self.history_table() if table is None else table
    valid = (history >= 0)[..., None].astype(jnp.float32)
    h = table[jnp.maximum(history, 0)] * valid
    # Normalized mean: a mean of unit vectors shrinks with the history's
    # spread, which would leave every user near the MLP's bias. The residual
    # makes the tower start as item-to-item similarity to the history.
    pooled = l2_normalize(h.sum(1) / jnp.maximum(valid.sum(1), 1.0))
    u = pooled + self.history_mlp(pooled)
    if self.user_embed is not None:
      u = u + self.user_embed(user_ids)
    return l2_normalize(u)
