"""Two-tower recommender head: item vectors from fused content, user vectors
from a user-ID embedding plus the user's pooled history; score = dot product.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps)).astype(x.dtype)


def _embed(num: int, dim: int, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(num, dim, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)


class Recommender(nnx.Module):
  """Scores users against items.

  item = normalize(fused content [+ item-ID embedding])
  user = normalize([user-ID embedding +] MLP(masked mean of history embeddings))

  The history is pooled over a learned per-item table rather than by running
  the encoders on every history item: that would multiply the encoder cost of
  a step by the history length. Item content still reaches the user tower
  through the gradients of the score against content-based item vectors.
  """

  def __init__(self, *, num_users: int, num_items: int, dim: int,
               item_id_embedding: bool, user_id_embedding: bool,
               rngs: nnx.Rngs):
    self.item_id_embed = _embed(num_items, dim, rngs) if item_id_embedding else None
    self.user_embed = _embed(num_users, dim, rngs) if user_id_embedding else None
    self.history_embed = _embed(num_items, dim, rngs)
    self.history_mlp = nnx.Sequential(
        nnx.Linear(dim, 2 * dim, rngs=rngs), nnx.gelu,
        nnx.Linear(2 * dim, dim, rngs=rngs))

  def item_vectors(self, fused: jax.Array, item_ids: jax.Array) -> jax.Array:
    v = fused
    if self.item_id_embed is not None:
      v = v + self.item_id_embed(item_ids)
    return l2_normalize(v)

  def user_vectors(self, user_ids: jax.Array, history: jax.Array) -> jax.Array:
    """history: (B, H) item ids, -1 marks padding."""
    valid = (history >= 0)[..., None].astype(jnp.float32)
    h = self.history_embed(jnp.maximum(history, 0)) * valid
    pooled = h.sum(1) / jnp.maximum(valid.sum(1), 1.0)
    u = self.history_mlp(pooled)
    if self.user_embed is not None:
      u = u + self.user_embed(user_ids)
    return l2_normalize(u)
