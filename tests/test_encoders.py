"""Tests for the BERT text encoder, MLM head, ViT and SmallCNN."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.encoders.attention import gelu_exact
from mmjax.models.encoders.text import BertEncoder, MaskedLMHead
from mmjax.models.encoders.vision import SmallCNN, ViT

VOCAB, HIDDEN, MLP, MAX_LEN, B, L = 40, 16, 32, 12, 2, 8
IMG, PATCH = 8, 4


def _config(defaults, overrides):
  """Merges overrides into defaults, adding rngs unless given."""
  return {'rngs': nnx.Rngs(0), **defaults, **overrides}


def make_bert(**kw):
  return BertEncoder(**_config(dict(
      vocab_size=VOCAB, hidden=HIDDEN, layers=1, heads=2, mlp_dim=MLP,
      max_len=MAX_LEN), kw))


def make_vit(**kw):
  return ViT(**_config(dict(
      image_size=IMG, patch_size=PATCH, hidden=HIDDEN, layers=1, heads=2,
      mlp_dim=MLP), kw))


def make_cnn(**kw):
  return SmallCNN(**_config(dict(image_size=IMG, hidden=HIDDEN,
                                 widths=(4, 8)), kw))


# Read-only tests share models: building one costs ~1 s of per-op compiles.
bert, vit, cnn = (functools.cache(f) for f in (make_bert, make_vit, make_cnn))


def text_batch(seed=0):
  """Token ids and a padding mask (row 1 has 3 padded positions)."""
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (B, L))
  mask = np.arange(L)[None, :] < np.array([L, 5])[:, None]
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


def images(seed=0, size=IMG):
  # NumPy inputs avoid compiling a JAX sampler per shape.
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(B, size, size, 3)), jnp.float32)


def weighted_sum(outputs):
  """A loss whose gradient reaches every output element (incl. LN scales).

  Fixed non-uniform weights: a plain sum would give LayerNorm scales a zero
  gradient, since normalised rows sum to zero.
  """
  total = 0.0
  for out in jax.tree.leaves(outputs):
    w = jnp.sin(jnp.arange(out.size, dtype=jnp.float32) + 1.0)
    total = total + jnp.sum(out.astype(jnp.float32).ravel() * w)
  return total


def assert_param_grads_ok(model, forward):
  """Checks d weighted_sum(forward(model)) / d param is finite and nonzero."""
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def grad_fn(params):
    return jax.grad(
        lambda p: weighted_sum(forward(nnx.merge(graphdef, p, buffers))))(params)

  leaves = jax.tree_util.tree_leaves_with_path(grad_fn(params))
  assert leaves
  for path, g in leaves:
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    assert np.any(g != 0), name


# --------------------------------------------------------------------- BERT


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_shapes_and_dtypes(pooling):
  tokens, mask = text_batch()
  hidden, pooled = bert(pooling=pooling)(tokens, mask)
  assert hidden.shape == (B, L, HIDDEN) and pooled.shape == (B, HIDDEN)
  assert hidden.dtype == pooled.dtype == jnp.float32


def test_bert_bfloat16_compute_keeps_float32_params():
  model = bert(dtype=jnp.bfloat16)
  hidden, pooled = model(*text_batch())
  assert hidden.dtype == pooled.dtype == jnp.bfloat16
  dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.float32)}


def _np_ln(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np_gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _np_bert_forward(p, tokens, mask, types, heads, eps):
  """HF BertModel forward in float64 NumPy (HF's math, our param names)."""
  lin = lambda x, d: x @ d['kernel'] + d['bias']
  e = p['embeddings']
  x = (e['word_embeddings']['embedding'][tokens] +
       e['position_embeddings']['embedding'][np.arange(tokens.shape[1])] +
       e['token_type_embeddings']['embedding'][types])
  x = _np_ln(x, e['LayerNorm']['scale'], e['LayerNorm']['bias'], eps)
  # HF's additive extended attention mask.
  add_mask = (1.0 - mask[:, None, None, :]) * np.finfo(np.float64).min
  for _, layer in sorted(p['layers'].items()):
    a = layer['attention']
    b, n, d = x.shape
    split = lambda t: t.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)
    q, k, v = (split(lin(x, a[name])) for name in ('query', 'key', 'value'))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads) + add_mask
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    out = a['output']
    x = _np_ln(lin(ctx, out['dense']) + x, out['LayerNorm']['scale'],
               out['LayerNorm']['bias'], eps)
    h = _np_gelu(lin(x, layer['intermediate']['dense']))
    out = layer['output']
    x = _np_ln(lin(h, out['dense']) + x, out['LayerNorm']['scale'],
               out['LayerNorm']['bias'], eps)
  pooled = np.tanh(lin(x[:, 0], p['pooler']['dense']))
  return x, pooled


def test_bert_matches_numpy_hf_reference():
  model = bert(ln_eps=1e-12)
  tokens, mask = text_batch()
  types = (jnp.arange(L)[None, :] >= 3).astype(jnp.int32).repeat(B, axis=0)
  hidden, pooled = model(tokens, mask, types)

  params = jax.tree.map(lambda a: np.asarray(a, np.float64),
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  ref_hidden, ref_pooled = _np_bert_forward(
      params, np.asarray(tokens), np.asarray(mask, np.float64),
      np.asarray(types), heads=2, eps=1e-12)
  # Padded positions still attend to real keys, so they match too.
  np.testing.assert_allclose(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(pooled, ref_pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_bert_padding_mask_invariance(pooling):
  model = bert(pooling=pooling)
  tokens, mask = text_batch()
  noise = np.random.default_rng(7).integers(0, VOCAB, tokens.shape)
  changed = jnp.where(mask, tokens, jnp.asarray(noise, jnp.int32))
  assert not np.array_equal(changed, tokens)
  h1, p1 = model(tokens, mask)
  h2, p2 = model(changed, mask)
  np.testing.assert_allclose(np.where(mask[..., None], h1, 0),
                             np.where(mask[..., None], h2, 0), atol=1e-6)
  np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_bert_param_grads():
  tokens, mask = text_batch()
  types = jnp.ones_like(tokens).at[:, :4].set(0)
  assert_param_grads_ok(bert(), lambda m: m(tokens, mask, types))


def test_mlm_head_ties_embeddings():
  encoder = bert()
  head = MaskedLMHead(hidden=HIDDEN, vocab_size=VOCAB, rngs=nnx.Rngs(1))
  table = encoder.embeddings.word_embeddings.embedding[...]
  hidden, _ = encoder(*text_batch())
  logits = head(hidden, table)
  assert logits.shape == (B, L, VOCAB) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, head.transform(hidden) @ table.T,
                             atol=1e-5)
  assert_param_grads_ok(head, lambda m: m(hidden, table))


# ------------------------------------------------------------------ vision


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_vit_shapes_and_grads(pooling):
  model = vit(pooling=pooling)
  tokens, pooled = model(images())
  num_patches = (IMG // PATCH)**2
  assert tokens.shape == (B, num_patches, HIDDEN)
  assert pooled.shape == (B, HIDDEN) and pooled.dtype == jnp.float32
  if pooling == 'mean':
    np.testing.assert_allclose(pooled, tokens.mean(1), atol=1e-6)
  assert_param_grads_ok(model, lambda m: m(images()))


@pytest.mark.parametrize('patch_bias', [True, False])
def test_vit_patch_matmul_equals_the_strided_conv(patch_bias):
  # The patch embedding runs as a matmul over flattened patches; it must be
  # the stride-p conv of the same kernel (the HF layout), pixel for pixel.
  model = vit(patch_bias=patch_bias)
  if patch_bias:
    model.patch_embed.bias[...] = jnp.arange(HIDDEN, dtype=jnp.float32) / 7
  x = jnp.asarray(np.random.default_rng(3).normal(size=(B, IMG, IMG, 3)), jnp.float32)
  conv = model.patch_embed(x)
  np.testing.assert_allclose(model._embed_patches(x),
                             conv.reshape(B, -1, HIDDEN), atol=1e-5)


def test_gelu_exact_is_the_erf_gelu():
  z = jnp.linspace(-8, 8, 161)
  np.testing.assert_allclose(gelu_exact(z), jax.nn.gelu(z, approximate=False), atol=1e-6)
  assert gelu_exact(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_vit_clip_style_options():
  model = vit(pre_norm=True, activation='quick_gelu', patch_bias=False,
                   ln_eps=1e-5)
  names = {'.'.join(map(str, k))
           for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert 'pre_layernorm.scale' in names and 'patch_embed.bias' not in names
  tokens, pooled = model(images())
  assert tokens.shape == (B, 4, HIDDEN) and pooled.shape == (B, HIDDEN)


def test_small_cnn_shapes_and_grads():
  model = cnn()
  tokens, pooled = model(images())
  assert tokens.shape == (B, (IMG // 4)**2, HIDDEN)
  np.testing.assert_allclose(pooled, tokens.mean(1), atol=1e-6)
  assert_param_grads_ok(model, lambda m: m(images()))


def test_vision_bfloat16_outputs():
  for model in (vit(dtype=jnp.bfloat16), cnn(dtype=jnp.bfloat16)):
    tokens, pooled = model(images())
    assert tokens.dtype == pooled.dtype == jnp.bfloat16


# ------------------------------------------------- dropout / jit / errors


@pytest.mark.parametrize('make,inputs', [
    (bert, text_batch),
    (vit, lambda: (images(),)),
    (cnn, lambda: (images(),)),
], ids=['bert', 'vit', 'cnn'])
def test_dropout_is_keyed_and_deterministic_is_stable(make, inputs):
  model = make(dropout=0.3)
  args = inputs()
  run = lambda **kw: jax.tree.leaves(model(*args, **kw))[0]
  a = run(deterministic=False, rngs=nnx.Rngs(dropout=0))
  b = run(deterministic=False, rngs=nnx.Rngs(dropout=1))
  a2 = run(deterministic=False, rngs=nnx.Rngs(dropout=0))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  np.testing.assert_array_equal(run(), run(deterministic=True))


def test_jit_over_split_state_with_dropout():
  model = bert(dropout=0.1)
  graphdef, state = nnx.split(model)
  tokens, mask = text_batch()

  @jax.jit
  def forward(state, tokens, mask, key):
    m = nnx.merge(graphdef, state)
    return m(tokens, mask, deterministic=False, rngs=nnx.Rngs(dropout=key))

  h1, _ = forward(state, tokens, mask, jax.random.key(0))
  h2, _ = forward(state, tokens, mask, jax.random.key(1))
  assert h1.shape == (B, L, HIDDEN) and not np.allclose(h1, h2)


@pytest.mark.parametrize('build', [
    lambda: make_bert(pooling='max'),
    lambda: make_bert(hidden=18, heads=4),
    lambda: make_bert(dropout=1.0),
    lambda: make_bert(layers=0),
    lambda: make_vit(image_size=10),
    lambda: make_vit(pooling='avg'),
    lambda: make_vit(activation='relu6'),
    lambda: make_cnn(image_size=6),
    lambda: make_cnn(widths=()),
])
def test_bad_constructor_arguments_raise(build):
  with pytest.raises(ValueError):
    build()


def test_bad_call_arguments_raise():
  with pytest.raises(ValueError, match='max_len'):
    bert()(jnp.zeros((1, MAX_LEN + 1), jnp.int32),
                jnp.ones((1, MAX_LEN + 1)))
  with pytest.raises(ValueError, match='images'):
    vit()(images(size=2 * IMG))
  with pytest.raises(ValueError, match='images'):
    cnn()(images()[..., :1])


def test_pooling_error_names_choices():
  with pytest.raises(ValueError, match="'cls', 'mean'"):
    make_bert(pooling='max')
