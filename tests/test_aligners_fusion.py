"""Tests for the Projection aligner and the fusion heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.aligners import Projection
from mmjax.models.encoders.vision import SmallCNN, ViT
from mmjax.models.fusion import CrossAttentionFusion, MLPFusion, build_fusion

B, L, Z, TEXT_DIM, IMG = 2, 6, 8, 12, 8
MASK = jnp.asarray(np.arange(L)[None, :] < np.array([L, 4])[:, None])


def normal(seed, *shape):
  # NumPy inputs avoid compiling a JAX sampler per shape.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def weighted_sum(out):
  """Non-uniform weights so LayerNorm scales get a nonzero gradient too."""
  w = jnp.sin(jnp.arange(out.size, dtype=jnp.float32) + 1.0)
  return jnp.sum(out.astype(jnp.float32).ravel() * w)


def assert_param_grads_ok(model, loss):
  """Checks d loss(model) / d param is finite and nonzero for every leaf."""
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  grads = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p, buffers))))(
      params)
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert leaves
  for path, g in leaves:
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    assert np.any(g != 0), name


# --------------------------------------------------------------- Projection


def test_projection_outputs_unit_norm():
  proj = Projection(TEXT_DIM, Z, rngs=nnx.Rngs(0))
  x = normal(0, B, TEXT_DIM)
  z = proj(x)
  assert z.shape == (B, Z) and z.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-6)
  raw = proj.project(x)
  np.testing.assert_allclose(z, raw / np.linalg.norm(raw, axis=-1,
                                                      keepdims=True),
                             atol=1e-6)
  # The eps floor keeps a zero input finite.
  assert np.all(np.isfinite(proj(jnp.zeros((1, TEXT_DIM)))))
  assert_param_grads_ok(proj, lambda m: weighted_sum(m(x)))


def test_projection_bfloat16():
  proj = Projection(TEXT_DIM, Z, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  z = proj(normal(0, B, TEXT_DIM))
  assert z.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.linalg.norm(np.float32(z), axis=-1), 1.0,
                             atol=1e-2)


@pytest.mark.parametrize('in_dim,out_dim', [(12, 8), (8, 12), (8, 8)])
def test_orthogonality_penalty(in_dim, out_dim):
  proj = Projection(in_dim, out_dim, rngs=nnx.Rngs(0))
  # A semi-orthogonal kernel from QR of a tall random matrix.
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(
      size=(max(in_dim, out_dim), min(in_dim, out_dim))))
  kernel = q if in_dim >= out_dim else q.T
  proj.dense.kernel[...] = jnp.asarray(kernel, jnp.float32)
  assert float(proj.orthogonality_penalty()) < 1e-10
  proj.dense.kernel[...] = 1.5 * proj.dense.kernel[...]
  assert float(proj.orthogonality_penalty()) > 0.1
  proj.dense.kernel[...] = normal(2, in_dim, out_dim)
  assert float(proj.orthogonality_penalty()) > 0.1


def test_projection_initialised_semi_orthogonal():
  assert float(Projection(TEXT_DIM, Z, rngs=nnx.Rngs(3))
               .orthogonality_penalty()) < 1e-8


# ------------------------------------------------------------------- fusion


def z_pair():
  return normal(10, B, Z), normal(11, B, Z)


@functools.cache
def vision_tokens(kind):
  """Real encoder token outputs, so fusion sees the actual contract."""
  rngs = nnx.Rngs(0)
  if kind == 'vit':
    enc = ViT(image_size=IMG, patch_size=4, hidden=16, layers=1, heads=2,
              mlp_dim=32, rngs=rngs)
  else:
    enc = SmallCNN(image_size=IMG, hidden=16, widths=(4, 8), rngs=rngs)
  tokens, _ = enc(normal(12, B, IMG, IMG, 3))
  return tokens


def make_cross(**kw):
  cfg = dict(dim=16, heads=2, text_dim=TEXT_DIM, image_dim=16, out_dim=3,
             z_dim=Z, rngs=nnx.Rngs(0))
  return CrossAttentionFusion(**{**cfg, **kw})


def test_mlp_fusion_shapes_grads_and_dropout():
  head = MLPFusion(Z, 16, 3, dropout=0.5, rngs=nnx.Rngs(0))
  zt, zi = z_pair()
  out = head(zt, zi)
  assert out.shape == (B, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, head(zt, zi, deterministic=True))
  a = head(zt, zi, deterministic=False, rngs=nnx.Rngs(dropout=0))
  b = head(zt, zi, deterministic=False, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, b)
  assert_param_grads_ok(head, lambda m: weighted_sum(m(zt, zi)))


@pytest.mark.parametrize('kind', ['vit', 'cnn'])
def test_cross_attention_fusion_with_encoder_tokens(kind):
  head = make_cross()
  zt, zi = z_pair()
  text = normal(13, B, L, TEXT_DIM)
  image = vision_tokens(kind)
  out = head(zt, zi, text, MASK, image)
  assert out.shape == (B, 3) and out.dtype == jnp.float32
  assert_param_grads_ok(
      head, lambda m: weighted_sum(m(zt, zi, text, MASK, image)))


def test_cross_attention_ignores_padded_text_tokens():
  head = make_cross(layers=2)
  zt, zi = z_pair()
  text = normal(13, B, L, TEXT_DIM)
  noisy = jnp.where(MASK[..., None], text, normal(14, B, L, TEXT_DIM))
  image = vision_tokens('vit')
  np.testing.assert_allclose(head(zt, zi, text, MASK, image),
                             head(zt, zi, noisy, MASK, image), atol=1e-6)


def test_cross_attention_dropout_and_jit():
  head = make_cross(dropout=0.3)
  graphdef, state = nnx.split(head)
  zt, zi = z_pair()
  text, image = normal(13, B, L, TEXT_DIM), vision_tokens('cnn')

  @jax.jit
  def forward(state, key):
    m = nnx.merge(graphdef, state)
    return m(zt, zi, text, MASK, image, deterministic=False,
             rngs=nnx.Rngs(dropout=key))

  a, b = forward(state, jax.random.key(0)), forward(state, jax.random.key(1))
  assert a.shape == (B, 3) and not np.allclose(a, b)
  np.testing.assert_array_equal(head(zt, zi, text, MASK, image),
                                head(zt, zi, text, MASK, image))


def test_build_fusion():
  assert isinstance(build_fusion('mlp', dim=Z, hidden=8, out_dim=1,
                                 rngs=nnx.Rngs(0)), MLPFusion)
  assert isinstance(build_fusion('cross_attention', dim=8, heads=2,
                                 text_dim=4, image_dim=4, out_dim=1,
                                 rngs=nnx.Rngs(0)), CrossAttentionFusion)


def test_fusion_bad_arguments_raise():
  zt, zi = z_pair()
  head = make_cross()
  with pytest.raises(ValueError, match='text_tokens'):
    head(zt, zi)
  with pytest.raises(ValueError, match='token widths'):
    head(zt, zi, normal(0, B, L, 5), MASK, vision_tokens('vit'))
  with pytest.raises(ValueError, match='z_text'):
    MLPFusion(Z, 8, 1, rngs=nnx.Rngs(0))(zt, zi[:, :4])
  for build in (lambda: make_cross(heads=3),
                lambda: make_cross(layers=0),
                lambda: MLPFusion(Z, 8, 1, dropout=-0.1, rngs=nnx.Rngs(0)),
                lambda: Projection(0, Z, rngs=nnx.Rngs(0))):
    with pytest.raises(ValueError):
      build()
