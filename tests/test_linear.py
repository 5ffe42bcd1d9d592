"""The dense layer's hand-written backward (models/encoders/linear.py) and
the train step's XLA:CPU options (train/step.py compiler_options)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.config import default_config, ynn_fusion_kinds
from mmjax.errors import MmjaxError
from mmjax.models.encoders.linear import Dense, linear
from mmjax.train.step import compiler_options


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
def test_linear_gradients_match_autodiff(shape):
  kx, kk, kb, ky = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (5, 7))
  bias = jax.random.normal(kb, (7,))
  target = jax.random.normal(ky, shape[:-1] + (7,))

  def loss(f, *args):
    return jnp.sum(jnp.sin(f(*args)) * target)

  reference = lambda x, k, b: x @ k + b
  ours = jax.grad(lambda *a: loss(linear, *a), argnums=(0, 1, 2))(x, kernel, bias)
  theirs = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(x, kernel, bias)
  np.testing.assert_allclose(linear(x, kernel, bias), reference(x, kernel, bias), rtol=1e-6)
  for a, b in zip(ours, theirs):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_is_nnx_linear_with_the_same_parameters():
  ours = Dense(5, 7, rngs=nnx.Rngs(1))
  theirs = nnx.Linear(5, 7, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (2, 3, 5))
  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6)
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))
  unbiased = Dense(5, 7, use_bias=False, rngs=nnx.Rngs(1))
  assert unbiased(x).shape == (2, 3, 7)


def test_ynn_fusion_kinds():
  assert ynn_fusion_kinds("reduce") == ("reduce",)
  assert ynn_fusion_kinds("") == ()
  assert ynn_fusion_kinds("xla") is None
  assert ynn_fusion_kinds("dot, reduce") == ("dot", "reduce")
  with pytest.raises(MmjaxError, match="cpu_ynn_fusions"):
    ynn_fusion_kinds("matmul")


def test_compiler_options_keep_dots_out_of_ynnpack():
  """With "reduce", XLA:CPU runs a matmul itself, not in a YNNPACK fusion;
  with XLA's default it hands the matmul to YNNPACK (so this can fail)."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU option")
  train = default_config().train
  x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
  def hlo(options):
    return jax.jit(lambda x, w: x @ w, compiler_options=options).lower(x, w).compile().as_text()
  train.cpu_ynn_fusions = "reduce"
  assert "__ynn_fusion" not in hlo(compiler_options(train))
  train.cpu_ynn_fusions = "xla"
  assert compiler_options(train) == {}
  assert "__ynn_fusion" in hlo(compiler_options(train))
