"""Image encoders: a pre-LN ViT and a small CNN with the same output contract.

Both map images (B, H, W, C) to `(tokens (B, T, D), pooled (B, D))`, so the
cross-attention fusion head can attend over either.

ViT parameter paths follow HF `ViTModel` (and, with `pre_norm=True`,
`activation='quick_gelu'`, `patch_bias=False`, `CLIPVisionModel`):

  HF ViT                                     here
  embeddings.patch_embeddings.projection     patch_embed (Conv, HWIO kernel)
  embeddings.cls_token                       cls_token (1, 1, D)
  embeddings.position_embeddings             position_embeddings (1, T+1, D)
  encoder.layer.{i}.layernorm_before         layers.{i}.layernorm_before
  encoder.layer.{i}.attention.attention.{query,key,value}
                                             layers.{i}.attention.{query,...}
  encoder.layer.{i}.attention.output.dense   layers.{i}.attention.output.dense
  encoder.layer.{i}.layernorm_after          layers.{i}.layernorm_after
  encoder.layer.{i}.intermediate.dense       layers.{i}.intermediate.dense
  encoder.layer.{i}.output.dense             layers.{i}.output.dense
  layernorm                                  layernorm
  pooler.dense (ViTModel's tanh pooler)      pooler (`pooler=True`)
  (CLIP pre_layrnorm)                        pre_layernorm
  (CLIP post_layernorm)                      layernorm (`norm_tokens=False`)

`mmjax.models.encoders.hf_import` holds the exact per-tensor mappings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.encoders import attention as attn_lib

POOLINGS = ('cls', 'mean')
# He init for the GELU convs; untruncated because the truncated-normal
# sampler (erfinv) is slow to compile on CPU, once per kernel shape.
he_normal = nnx.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _check_images(images: jax.Array, image_size: int, channels: int):
  expected = (image_size, image_size, channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != expected:
    raise ValueError(
        f'expected images of shape (B, {image_size}, {image_size}, '
        f'{channels}), got {tuple(images.shape)}')


class ViT(nnx.Module):
  """Vision Transformer returning patch tokens and a pooled embedding.

  `pooling='cls'` pools the final-LN'd CLS token; `pooling='mean'` averages
  the patch tokens. The returned tokens never include CLS. `norm_tokens=False`
  applies the final LayerNorm to the pooled vector only (CLIP's
  post_layernorm); `pooler=True` adds HF ViTModel's tanh(dense(.)) pooler.
  """

  def __init__(self, *, image_size: int, patch_size: int, hidden: int,
               layers: int, heads: int, mlp_dim: int, channels: int = 3,
               pooling: str = 'cls', ln_eps: float = 1e-6,
               activation: str = 'gelu', pre_norm: bool = False,
               patch_bias: bool = True, norm_tokens: bool = True,
               pooler: bool = False, dropout: float = 0.0, remat: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f'pooling must be one of {POOLINGS}, got {pooling!r}')
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size:
      raise ValueError(f'image_size={image_size} must be a positive multiple '
                       f'of patch_size={patch_size}')
    for name, value in (('layers', layers), ('mlp_dim', mlp_dim),
                        ('channels', channels)):
      if value <= 0:
        raise ValueError(f'{name} must be positive, got {value}')
    attn_lib.check_heads(hidden, heads)
    attn_lib.check_dropout(dropout)
    attn_lib.activation_fn(activation)
    self.image_size, self.channels, self.pooling = image_size, channels, pooling
    self.patch_size = patch_size
    self.norm_tokens, self.remat = norm_tokens, remat
    num_patches = (image_size // patch_size)**2
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    init = attn_lib.kernel_init
    self.patch_embed = nnx.Conv(
        channels, hidden, kernel_size=(patch_size, patch_size),
        strides=(patch_size, patch_size), padding='VALID',
        use_bias=patch_bias, kernel_init=init, **kw)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, hidden),
                                    param_dtype))
    self.position_embeddings = nnx.Param(
        init(rngs.params(), (1, num_patches + 1, hidden), param_dtype))
    self.dropout = nnx.Dropout(dropout)
    self.pre_layernorm = (attn_lib.layer_norm(hidden, ln_eps, **kw)
                          if pre_norm else None)
    self.layers = nnx.List([
        attn_lib.PreLNBlock(hidden, heads, mlp_dim, ln_eps=ln_eps,
                            activation=activation, dropout=dropout, **kw)
        for _ in range(layers)
    ])
    self.layernorm = attn_lib.layer_norm(hidden, ln_eps, **kw)
    self.pooler = (attn_lib.dense(hidden, hidden, **kw) if pooler else None)

  def __call__(self, images: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes (B, H, W, C) images to patch tokens (B, T, D) and (B, D)."""
    _check_images(images, self.image_size, self.channels)
    x = self._embed_patches(images)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype),
                           (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    x = x + self.position_embeddings[...].astype(x.dtype)
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    if self.pre_layernorm is not None:
      x = self.pre_layernorm(x)
    x = attn_lib.apply_blocks(self.layers, x, remat=self.remat,
                              deterministic=deterministic, rngs=rngs)
    if self.norm_tokens:
      x = self.layernorm(x)
    tokens = x[:, 1:]
    pooled = x[:, 0] if self.pooling == 'cls' else tokens.mean(axis=1)
    if not self.norm_tokens:
      pooled = self.layernorm(pooled)
    if self.pooler is not None:
      pooled = jnp.tanh(self.pooler(pooled))
    return tokens, pooled

  def _embed_patches(self, images: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, T, D): the stride-p, p x p `patch_embed` conv as
    one matmul over flattened patches (same kernel, same result). XLA:CPU
    runs a strided conv far below its matmul rate; as a plain dot it runs
    like the encoder's other matmuls."""
    conv, p = self.patch_embed, self.patch_size
    b, h, w, c = images.shape
    kernel = conv.kernel[...]
    dtype = conv.dtype or jnp.result_type(images, kernel)
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(dtype)
    x = x @ kernel.reshape(p * p * c, -1).astype(dtype)
    if conv.bias is not None:
      x = x + conv.bias[...].astype(dtype)
    return x


class ConvStage(nnx.Module):
  """3x3 stride-2 conv -> GroupNorm -> GELU: halves resolution."""

  def __init__(self, in_dim: int, out_dim: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_dim, out_dim, kernel_size=(3, 3), strides=(2, 2),
                         padding='SAME', kernel_init=he_normal, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
    # Up to 8 groups that divide the width; batch-independent, unlike BN.
    self.norm = nnx.GroupNorm(out_dim, num_groups=math.gcd(out_dim, 8),
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return attn_lib.gelu_exact(self.norm(self.conv(x)))


class SmallCNN(nnx.Module):
  """A light CNN baseline with the ViT output contract.

  Each of the `len(widths)` stages halves the resolution, so the final
  feature map has T = (image_size / 2**len(widths))**2 positions; each is
  projected to `hidden` and returned as a token. `pooled` is their mean.
  """

  def __init__(self, *, image_size: int, hidden: int, channels: int = 3,
               widths: Sequence[int] = (32, 64, 128), dropout: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    widths = tuple(widths)
    if not widths or any(w <= 0 for w in widths):
      raise ValueError(f'widths must be non-empty and positive, got {widths}')
    stride = 2**len(widths)
    if image_size <= 0 or image_size % stride:
      raise ValueError(f'image_size={image_size} must be a positive multiple '
                       f'of 2**len(widths)={stride}')
    if hidden <= 0 or channels <= 0:
      raise ValueError(
          f'hidden and channels must be positive, got {hidden}, {channels}')
    attn_lib.check_dropout(dropout)
    self.image_size, self.channels = image_size, channels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dims = (channels,) + widths
    self.stages = nnx.List(
        [ConvStage(a, b, **kw) for a, b in zip(dims[:-1], dims[1:])])
    self.dropout = nnx.Dropout(dropout)
    self.proj = attn_lib.dense(widths[-1], hidden, **kw)

  def __call__(self, images: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes (B, H, W, C) images to tokens (B, T, hidden) and (B, hidden)."""
    _check_images(images, self.image_size, self.channels)
    x = images
    for stage in self.stages:
      x = stage(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    tokens = self.proj(x)
    return tokens, tokens.mean(axis=1)
