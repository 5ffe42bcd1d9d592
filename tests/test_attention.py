"""Attention runs through jax.nn.dot_product_attention, chosen in one place
(models/encoders/attention.py), with the math of softmax(q k^T / sqrt(D)) v."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.encoders import attention as attn_lib

B, LQ, LK, H, D = 3, 5, 6, 2, 8
# Row 0 attends to 3 keys, row 1 to all, row 2 to none.
MASK = np.array([[1, 1, 1, 0, 0, 0], [1] * LK, [0] * LK], bool)


def _reference(q, k, v, mask):
  """float64 softmax(q k^T / sqrt(D)) v; a fully masked row averages v."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(D)
  logits = np.where(mask[:, None, None, :], logits, -1e30)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum('bhts,bshd->bthd', probs, v)


@pytest.mark.parametrize('dtype, tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_matches_the_softmax_reference_with_a_padding_mask(dtype, tol):
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, shape).astype(dtype) for key, shape in
             ((kq, (B, LQ, H, D)), (kk, (B, LK, H, D)), (kv, (B, LK, H, D))))
  got = jax.jit(attn_lib.dot_product_attention)(q, k, v, jnp.asarray(MASK))
  assert got.shape == (B, LQ, H, D) and got.dtype == dtype
  want = _reference(q.astype(jnp.float32), k.astype(jnp.float32),
                    v.astype(jnp.float32), MASK)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=tol, rtol=tol)
  unmasked = attn_lib.dot_product_attention(q, k, v)
  np.testing.assert_allclose(np.asarray(unmasked, np.float32),
                             _reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                        v.astype(jnp.float32), np.ones_like(MASK)),
                             atol=tol, rtol=tol)


def test_multi_head_attention_calls_jax_dot_product_attention(monkeypatch):
  calls = []
  real = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs.get('implementation'))
    return real(*args, **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', spy)
  layer = attn_lib.MultiHeadAttention(H * D, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jnp.ones((B, LK, H * D))
  out = layer(x, mask=jnp.asarray(MASK))
  assert out.shape == x.shape and out.dtype == jnp.bfloat16
  assert len(calls) == 1
  if jax.default_backend() == 'cpu':   # Plain XLA on CPU, bf16 included.
    assert calls == ['xla']
