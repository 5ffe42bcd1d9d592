"""BERT text encoder and masked-LM head in the HF `BertModel` layout.

Parameter paths follow HF names so that a checkpoint (BERT, all-MiniLM-L6-v2)
maps onto this module by a fixed rename plus a kernel transpose:

  HF                                         here
  embeddings.{word,position,token_type}_embeddings
                                             embeddings.*.embedding
  embeddings.LayerNorm.{weight,bias}         embeddings.LayerNorm.{scale,bias}
  encoder.layer.{i}.attention.self.{query,key,value}
                                             layers.{i}.attention.{query,...}
  encoder.layer.{i}.attention.output.{dense,LayerNorm}
                                             layers.{i}.attention.output.*
  encoder.layer.{i}.intermediate.dense       layers.{i}.intermediate.dense
  encoder.layer.{i}.output.{dense,LayerNorm} layers.{i}.output.*
  pooler.dense                               pooler.dense (pooling='cls' only)
  cls.predictions.transform.*, .bias         MaskedLMHead.transform.*, .bias

The math is HF's: embeddings sum -> LN -> post-LN blocks
(LN(x + attn(x)), LN(h + MLP(h))) with exact-erf GELU, pooler tanh(W h_CLS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.encoders import attention as attn_lib

POOLINGS = ('cls', 'mean')


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  def __init__(self, *, vocab_size: int, hidden: int, max_len: int,
               type_vocab: int, ln_eps: float, dropout: float, dtype,
               param_dtype, rngs: nnx.Rngs):
    self.max_len = max_len
    kw = dict(dtype=dtype, param_dtype=param_dtype,
              embedding_init=attn_lib.kernel_init, rngs=rngs)
    self.word_embeddings = nnx.Embed(vocab_size, hidden, **kw)
    self.position_embeddings = nnx.Embed(max_len, hidden, **kw)
    self.token_type_embeddings = nnx.Embed(type_vocab, hidden, **kw)
    self.LayerNorm = attn_lib.layer_norm(  # pylint: disable=invalid-name
        hidden, ln_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, tokens: jax.Array, token_types: jax.Array, *,
               deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(
          f'sequence length {length} exceeds max_len={self.max_len}')
    positions = jnp.arange(length)[None, :]
    x = (self.word_embeddings(tokens) + self.position_embeddings(positions) +
         self.token_type_embeddings(token_types))
    return self.dropout(self.LayerNorm(x), deterministic=deterministic,
                        rngs=rngs)


class BertLayer(nnx.Module):
  """One post-LN BERT block: LN(x + attn(x)), then LN(h + MLP(h))."""

  def __init__(self, *, hidden: int, heads: int, mlp_dim: int, ln_eps: float,
               activation: str, dropout: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = attn_lib.MultiHeadAttention(
        hidden, heads, post_ln_eps=ln_eps, dropout=dropout, **kw)
    self.intermediate = attn_lib.Intermediate(hidden, mlp_dim,
                                              activation=activation, **kw)
    self.output = attn_lib.DenseOutput(mlp_dim, hidden, post_ln_eps=ln_eps,
                                       dropout=dropout, **kw)

  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool,
               rngs: nnx.Rngs | None) -> jax.Array:
    h = self.attention(x, mask=mask, deterministic=deterministic, rngs=rngs)
    return self.output(self.intermediate(h), h, deterministic=deterministic,
                       rngs=rngs)


class BertPooler(nnx.Module):
  """HF pooler: tanh(dense(h_CLS))."""

  def __init__(self, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dense = attn_lib.dense(hidden, hidden, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden_states: jax.Array) -> jax.Array:
    return jnp.tanh(self.dense(hidden_states[:, 0]))


class BertEncoder(nnx.Module):
  """BERT text encoder returning token states and a pooled embedding.

  `pooling='cls'` returns HF's pooler output; `pooling='mean'` returns the
  masked mean of the last hidden states (sentence-transformers style) and
  builds no pooler, so every parameter receives a gradient.
  """

  def __init__(self, *, vocab_size: int, hidden: int, layers: int, heads: int,
               mlp_dim: int, max_len: int, type_vocab: int = 2,
               pooling: str = 'cls', ln_eps: float = 1e-12,
               activation: str = 'gelu', dropout: float = 0.0,
               remat: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    for name, value in (('vocab_size', vocab_size), ('layers', layers),
                        ('mlp_dim', mlp_dim), ('max_len', max_len),
                        ('type_vocab', type_vocab)):
      if value <= 0:
        raise ValueError(f'{name} must be positive, got {value}')
    attn_lib.check_heads(hidden, heads)
    attn_lib.check_dropout(dropout)
    self.pooling, self.remat = pooling, remat
    kw = dict(ln_eps=ln_eps, dropout=dropout, dtype=dtype,
              param_dtype=param_dtype, rngs=rngs)
    self.embeddings = BertEmbeddings(vocab_size=vocab_size, hidden=hidden,
                                     max_len=max_len, type_vocab=type_vocab,
                                     **kw)
    self.layers = nnx.List([
        BertLayer(hidden=hidden, heads=heads, mlp_dim=mlp_dim,
                  activation=activation, **kw)
        for _ in range(layers)
    ])
    self.pooler = (BertPooler(hidden, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs) if pooling == 'cls' else None)

  def __call__(self, tokens: jax.Array, mask: jax.Array,
               token_types: jax.Array | None = None, *,
               deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch of token ids.

    Args:
      tokens: (B, L) int token ids.
      mask: (B, L) bool/int padding mask, 1 = real token.
      token_types: (B, L) segment ids; zeros if omitted.
      deterministic: disables dropout when True.
      rngs: supplies the 'dropout' stream when `deterministic` is False.

    Returns:
      hidden_states (B, L, D) and pooled (B, D).
    """
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    x = self.embeddings(tokens, token_types, deterministic=deterministic,
                        rngs=rngs)
    x = attn_lib.apply_blocks(self.layers, x, mask, remat=self.remat,
                              deterministic=deterministic, rngs=rngs)
    if self.pooler is not None:
      return x, self.pooler(x)
    return x, attn_lib.masked_mean(x, mask)


class MaskedLMTransform(nnx.Module):
  """HF `cls.predictions.transform`: dense -> GELU -> LayerNorm."""

  def __init__(self, hidden: int, *, ln_eps: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.dense = attn_lib.dense(hidden, hidden, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)
    self.LayerNorm = attn_lib.layer_norm(  # pylint: disable=invalid-name
        hidden, ln_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.LayerNorm(attn_lib.activation_fn('gelu')(self.dense(x)))


class MaskedLMHead(nnx.Module):
  """HF `cls.predictions`: transform, then logits tied to word embeddings.

  The embedding table is passed at call time rather than shared as a
  submodule, which keeps the module graph a tree (simple to split, save and
  import) while still tying the decoder to `embeddings.word_embeddings`.
  """

  def __init__(self, hidden: int, vocab_size: int, *, ln_eps: float = 1e-12,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.transform = MaskedLMTransform(hidden, ln_eps=ln_eps, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((vocab_size,), param_dtype))

  def __call__(self, hidden: jax.Array,
               word_embeddings: jax.Array) -> jax.Array:
    """Maps (B, L, D) states and a (V, D) table to (B, L, V) logits."""
    h = self.transform(hidden).astype(self.dtype)
    logits = h @ word_embeddings.astype(self.dtype).T
    return logits + self.bias[...].astype(self.dtype)
