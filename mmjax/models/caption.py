"""The caption decoder of loss.caption: CoCa's autoregressive objective.

A small pre-LN transformer reads the item's text shifted right and predicts
each next token. Every block attends causally to the text before it, then
(cross-attention) to the image tower's tokens, so the image has to carry
what the text will say. Its input embedding and its output projection are
the text tower's word embedding table (tied, as in CoCa and BERT): the table
is passed in at call time, which keeps the module graph a tree.

Attention goes through `attention.dot_product_attention` (the one place that
picks the implementation); `is_causal` is what keeps position i from seeing
the tokens after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.encoders import attention as attn_lib


class DecoderBlock(nnx.Module):
  """x + causal_self_attn(LN(x)); x + cross_attn(LN(x), LN(image)); x + MLP(LN(x))."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, context_dim: int, *,
               ln_eps: float, dropout: float, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layernorm_self = attn_lib.layer_norm(dim, ln_eps, **kw)
    self.self_attention = attn_lib.MultiHeadAttention(dim, heads, dropout=dropout, **kw)
    self.layernorm_cross = attn_lib.layer_norm(dim, ln_eps, **kw)
    self.layernorm_context = attn_lib.layer_norm(context_dim, ln_eps, **kw)
    self.cross_attention = attn_lib.MultiHeadAttention(
        dim, heads, kv_dim=context_dim, dropout=dropout, **kw)
    self.layernorm_after = attn_lib.layer_norm(dim, ln_eps, **kw)
    self.intermediate = attn_lib.Intermediate(dim, mlp_dim, **kw)
    self.output = attn_lib.DenseOutput(mlp_dim, dim, dropout=dropout, **kw)

  def __call__(self, x: jax.Array, mask: jax.Array, context: jax.Array | None,
               *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    run = dict(deterministic=deterministic, rngs=rngs)
    x = x + self.self_attention(self.layernorm_self(x), mask=mask,
                                is_causal=True, **run)
    if context is not None:   # No image: the text before it is all there is.
      x = x + self.cross_attention(self.layernorm_cross(x),
                                   self.layernorm_context(context), **run)
    h = self.intermediate(self.layernorm_after(x))
    return x + self.output(h, **run)


class CaptionDecoder(nnx.Module):
  """Next-token logits of a text given the image tower's tokens."""

  def __init__(self, *, vocab_size: int, dim: int, heads: int, mlp_dim: int,
               layers: int, max_len: int, context_dim: int,
               ln_eps: float = 1e-6, dropout: float = 0.0, remat: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if layers <= 0 or max_len <= 0 or vocab_size <= 0:
      raise ValueError(f"layers, max_len and vocab_size must be positive, got "
                       f"{layers}, {max_len}, {vocab_size}")
    attn_lib.check_heads(dim, heads)
    attn_lib.check_dropout(dropout)
    self.dtype, self.remat = dtype, remat
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Its own positions: the text tower's are learned for a bidirectional encoder.
    self.position_embeddings = nnx.Embed(max_len, dim, embedding_init=attn_lib.kernel_init,
                                         **kw)
    self.layers = nnx.List([
        DecoderBlock(dim, heads, mlp_dim, context_dim, ln_eps=ln_eps,
                     dropout=dropout, **kw) for _ in range(layers)])
    self.layernorm = attn_lib.layer_norm(dim, ln_eps, **kw)
    self.bias = nnx.Param(jnp.zeros((vocab_size,), param_dtype))

  def __call__(self, tokens: jax.Array, mask: jax.Array,
               word_embeddings: jax.Array, context: jax.Array | None = None, *,
               deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """(B, L) tokens and padding mask, a (V, D) embedding table and (B, N, C)
    image tokens (or None) -> (B, L, V) logits; position i sees tokens <= i."""
    table = word_embeddings.astype(self.dtype)
    positions = jnp.arange(tokens.shape[1])[None, :]
    x = jnp.take(table, tokens, axis=0) + self.position_embeddings(positions)
    x = attn_lib.apply_blocks(self.layers, x, mask, context, remat=self.remat,
                              deterministic=deterministic, rngs=rngs)
    logits = self.layernorm(x) @ table.T
    return logits + self.bias[...].astype(self.dtype)
