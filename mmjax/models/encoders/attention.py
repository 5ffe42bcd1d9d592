"""Transformer building blocks shared by the text, vision and fusion modules.

The pieces mirror the HF BERT / ViT sub-module layout so that pretrained
weights map one-to-one onto parameter paths:

  * `MultiHeadAttention`: `query`, `key`, `value` (Linear with bias) followed by
    an `output` (`DenseOutput`) projection. It serves self-attention (BERT,
    ViT) and cross-attention (fusion) alike; `dot_product_attention` below is
    the one place that picks how attention itself runs.
  * `Intermediate`: the first MLP layer, `dense` + GELU.
  * `DenseOutput`: `dense` + dropout, optionally followed by the post-LN
    residual `LayerNorm(x + h)` that BERT uses (ViT is pre-LN and adds the
    residual in its block instead).
  * `PreLNBlock`: the pre-LN (ViT) block, optionally cross-attending to a
    context sequence (fusion). BERT's post-LN block lives in `text.py`.

Normalisation placement (pre-LN vs post-LN) is decided by the caller: these
modules only add a `LayerNorm` when `post_ln_eps` is given.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

# BERT-style initialisation: N(0, 0.02) kernels, zero biases.
INIT_STDDEV = 0.02
kernel_init = nnx.initializers.normal(INIT_STDDEV)


def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch computes it.

  Written with erf because jax.nn.gelu(approximate=False) goes through erfc,
  which XLA:CPU evaluates more slowly.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476))


_ACTIVATIONS = {
    # HF "gelu" is the exact erf form, not the tanh approximation.
    'gelu': gelu_exact,
    # CLIP's activation: x * sigmoid(1.702 x).
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
    # HF names of the tanh approximation (some BERT-family checkpoints).
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
}


def activation_fn(name: str):
  """Returns the activation called `name` (an HF `hidden_act` value)."""
  if name not in _ACTIVATIONS:
    raise ValueError(
        f'activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}')
  return _ACTIVATIONS[name]


def check_dropout(rate: float) -> float:
  """Validates a dropout rate, which must lie in [0, 1)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout must be in [0, 1), got {rate}')
  return rate


def check_heads(dim: int, heads: int) -> int:
  """Validates a head count and returns the per-head width."""
  if heads <= 0 or dim <= 0 or dim % heads:
    raise ValueError(
        f'hidden size {dim} must be a positive multiple of heads={heads}')
  return dim // heads


def dense(in_dim: int, out_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
  """A Linear layer with BERT initialisation."""
  return nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=dtype,
                    param_dtype=param_dtype, kernel_init=kernel_init,
                    rngs=rngs)


def layer_norm(dim: int, eps: float, *, dtype, param_dtype,
               rngs: nnx.Rngs) -> nnx.LayerNorm:
  """A LayerNorm with ones/zeros initialisation."""
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` (B, L, D) over the positions where `mask` (B, L) is set."""
  m = mask.astype(x.dtype)[..., None]
  # Clamp the count so an all-padding row gives zeros rather than NaN.
  count = jnp.maximum(m.sum(axis=1), 1.0)
  return (x * m).sum(axis=1) / count


def apply_blocks(blocks, x: jax.Array, *args, remat: bool = False,
                 deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
  """x = block(x, *args) through `blocks`. With `remat`, each block keeps only
  its input for the backward pass and recomputes the rest (nnx.remat), which
  trades one extra forward pass for the activation memory of a block."""
  def call(block, x, args, rngs):
    return block(x, *args, deterministic=deterministic, rngs=rngs)
  if remat:
    call = nnx.remat(call)
  for block in blocks:
    x = call(block, x, args, rngs)
  return x


class DenseOutput(nnx.Module):
  """`dense` -> dropout, then `LayerNorm(h + residual)` if post-LN."""

  def __init__(self, in_dim: int, out_dim: int, *,
               post_ln_eps: float | None = None, dropout: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dense = dense(in_dim, out_dim, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs)
    self.dropout = nnx.Dropout(check_dropout(dropout))
    # HF capitalises this name; keeping it makes weight import a rename-free
    # copy.
    self.LayerNorm = (  # pylint: disable=invalid-name
        None if post_ln_eps is None else layer_norm(
            out_dim, post_ln_eps, dtype=dtype, param_dtype=param_dtype,
            rngs=rngs))

  def __call__(self, h: jax.Array, residual: jax.Array | None = None, *,
               deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    h = self.dropout(self.dense(h), deterministic=deterministic, rngs=rngs)
    if self.LayerNorm is None:
      return h
    return self.LayerNorm(h + residual)


class Intermediate(nnx.Module):
  """First MLP layer: `dense` (dim -> mlp_dim) followed by the activation."""

  def __init__(self, dim: int, mlp_dim: int, *, activation: str = 'gelu',
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dense = dense(dim, mlp_dim, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs)
    # Stored as a string (static) and resolved per call, which keeps the
    # module free of non-pytree callables in its graph.
    self.activation = activation
    activation_fn(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    return activation_fn(self.activation)(self.dense(x))


def attention_implementation(q: jax.Array, k: jax.Array, masked: bool) -> str:
  """The `implementation` of jax.nn.dot_product_attention for (B, L, H, D)
  queries `q` and keys `k`: "cudnn" (fused flash attention) where cuDNN takes
  them, "xla" elsewhere (CPU, TPU, f32, other shapes).

  JAX's own default (None) is XLA on every backend, so the GPU choice is made
  here. cuDNN's conditions, checked up front because it raises only once the
  backward pass is traced: an NVIDIA GPU of compute capability 8.0 or newer,
  bf16/f16 operands, a head dim that is a multiple of 8 up to 128 and, with a
  mask (passed to cuDNN as a bias), even query and key lengths.
  """
  if jax.default_backend() != 'gpu':
    return 'xla'
  device = jax.devices()[0]
  cuda = 'cuda' in jax.extend.backend.get_backend().platform_version
  head_dim, lq, lk = q.shape[-1], q.shape[1], k.shape[1]
  if (cuda and float(getattr(device, 'compute_capability', 0)) >= 8.0
      and q.dtype in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128
      and not (masked and (lq % 2 or lk % 2))):
    return 'cudnn'
  return 'xla'


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None,
                          is_causal: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v for (B, L, H, D) inputs through
  jax.nn.dot_product_attention, as `attention_implementation` picks; `mask`
  (B, Lk) or None, truthy = attend; `is_causal`: query i also sees keys
  <= i only (a decoder). A query whose keys are all masked
  averages every value (XLA masks with a large negative logit, not -inf).
  """
  impl = attention_implementation(q, k, mask is not None)
  if mask is not None:
    mask = mask.astype(jnp.bool_)[:, None, None, :]   # (B, 1, 1, Lk)
    if impl == 'cudnn':   # cuDNN takes a mask of the full (Lq, Lk) extent.
      mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      implementation=impl)


class MultiHeadAttention(nnx.Module):
  """Multi-head (self- or cross-) attention with an output projection.

  Attention runs in (B, L, H, D) layout through `dot_product_attention`.
  Dropout is applied to the projected output only, as fused attention
  kernels have no attention-probability dropout (HF BERT applies one, which
  matters only when training from scratch).
  """

  def __init__(self, dim: int, heads: int, *, kv_dim: int | None = None,
               post_ln_eps: float | None = None, dropout: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.heads = heads
    self.head_dim = check_heads(dim, heads)
    kv_dim = dim if kv_dim is None else kv_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = dense(dim, dim, **kw)
    self.key = dense(kv_dim, dim, **kw)
    self.value = dense(kv_dim, dim, **kw)
    self.output = DenseOutput(dim, dim, post_ln_eps=post_ln_eps,
                              dropout=dropout, **kw)

  def _split_heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, *, is_causal: bool = False,
               deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Attends from `x` (B, Lq, dim) to `context` (B, Lk, kv_dim).

    Args:
      x: queries; also the residual for the post-LN `LayerNorm`.
      context: keys/values; defaults to `x` (self-attention).
      mask: (B, Lk) padding mask over keys, truthy = attend.
      is_causal: position i attends to keys <= i only.
      deterministic: disables dropout when True.
      rngs: supplies the 'dropout' stream when `deterministic` is False.

    Returns:
      (B, Lq, dim): projected attention output (post-LN'd if configured).
    """
    context = x if context is None else context
    attn = dot_product_attention(self._split_heads(self.query(x)),
                                 self._split_heads(self.key(context)),
                                 self._split_heads(self.value(context)), mask,
                                 is_causal)
    attn = attn.reshape(*attn.shape[:-2], -1)
    return self.output(attn, x, deterministic=deterministic, rngs=rngs)


class PreLNBlock(nnx.Module):
  """Pre-LN transformer block: x + attn(LN(x)), then h + MLP(LN(h)).

  With `cross=True` the block attends to a separate `context` sequence
  (normalised by its own `layernorm_context`) instead of to itself; this is
  the ViT block (HF `ViTLayer` names) reused by the cross-attention fusion.
  BERT is post-LN and builds its own block instead.
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, *,
               cross: bool = False, ln_eps: float = 1e-6,
               activation: str = 'gelu', dropout: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layernorm_before = layer_norm(dim, ln_eps, **kw)
    self.layernorm_context = layer_norm(dim, ln_eps, **kw) if cross else None
    self.attention = MultiHeadAttention(dim, heads, dropout=dropout, **kw)
    self.layernorm_after = layer_norm(dim, ln_eps, **kw)
    self.intermediate = Intermediate(dim, mlp_dim, activation=activation, **kw)
    self.output = DenseOutput(mlp_dim, dim, dropout=dropout, **kw)

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Updates `x` (B, L, dim); `mask` (B, Lk) masks keys of `context`/`x`."""
    if (context is None) != (self.layernorm_context is None):
      raise ValueError('context must be given exactly when cross=True')
    h = self.layernorm_before(x)
    if context is not None:
      context = self.layernorm_context(context)
    x = x + self.attention(h, context, mask, deterministic=deterministic,
                           rngs=rngs)
    h = self.intermediate(self.layernorm_after(x))
    return x + self.output(h, deterministic=deterministic, rngs=rngs)
