"""`x @ kernel + bias` with a hand-written backward pass.

Autodiff of a dense layer gives the bias gradient as a sum of the output
gradient over every token (B*L rows). XLA:CPU's tree-reduction rewrite turns
that sum into a strided reduce-window, which on the base config ran at
~1 GB/s: 30 ms for one (8320, 1024) MLP bias, ~250 ms of the ViT tower's
forward + backward. Here the bias gradient is a matrix-vector product
(ones @ dy) instead, which XLA runs at memory speed; the input and kernel
gradients are the same dots autodiff would emit.

`Dense.matmul_kernel` picks who runs the matmuls: "xla" is `linear` here;
"cpu" the kernels of mmjax/kernels/cpu_dense (f32 on XLA:CPU, widths that
are multiples of 16; other layers stay on XLA); "auto" those kernels where
they apply (CPU backend, f32, built) and XLA elsewhere (GPU/TPU, bf16).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.kernels import cpu_dense
from mmjax.kernels.gate import check_choice


def use_cpu_dense(kernel: str, x: jax.Array, weight: jax.Array) -> bool:
  """Whether x @ weight runs on the CPU dense kernels under `kernel`
  ("auto", "xla" or "cpu": mmjax.kernels.gate); operands the kernels don't
  take (cpu_dense.supports) stay on XLA whatever the choice."""
  return cpu_dense.supports(x, weight) and cpu_dense.gate.wanted(kernel)


def _rows(x: jax.Array) -> jax.Array:
  return x.reshape(-1, x.shape[-1])


@jax.custom_vjp
def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """x (..., K) @ kernel (K, N) + bias (N,), all of one dtype."""
  return _linear_fwd(x, kernel, bias)[0]


def _linear_fwd(x, kernel, bias):
  return jnp.dot(x, kernel) + bias, (x, kernel)


def _linear_bwd(res, dy):
  x, kernel = res
  dy2 = _rows(dy)
  dx = jnp.dot(dy, kernel.T)
  dkernel = jax.lax.dot_general(_rows(x), dy2, (((0,), (0,)), ((), ())))
  dbias = jnp.dot(jnp.ones((dy2.shape[0],), dy2.dtype), dy2,
                  preferred_element_type=jnp.float32)
  return dx, dkernel, dbias.astype(dy.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Linear):
  """nnx.Linear (same parameters, init and dtype promotion) whose biased
  matmul goes through `linear` above or the CPU kernels, as
  `matmul_kernel` says. Whatever those do not model (no bias, an output
  sharding, a precision or accumulation dtype) is left to nnx.Linear."""

  def __init__(self, *args, matmul_kernel: str = 'auto', **kwargs):
    super().__init__(*args, **kwargs)
    self.matmul_kernel = check_choice('dense', matmul_kernel)

  def _operands(self, x):
    """x, kernel and bias in the layer's compute dtype."""
    return self.promote_dtype((x, self.kernel[...], self.bias[...]), dtype=self.dtype)

  def _plain(self, out_sharding) -> bool:
    return (self.bias is None or out_sharding is not None
            or self.precision is not None
            or self.preferred_element_type is not None)

  def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
    if self._plain(out_sharding):
      return super().__call__(x, out_sharding)
    x, kernel, bias = self._operands(x)
    if use_cpu_dense(self.matmul_kernel, x, kernel):
      return cpu_dense.linear(x, kernel, bias)
    return linear(x, kernel, bias)

  def unbiased(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x @ kernel and the bias, apart (in the compute dtype), for a caller
    that adds the bias itself (the fused attention kernel)."""
    x, kernel, bias = self._operands(x)
    if use_cpu_dense(self.matmul_kernel, x, kernel):
      return cpu_dense.linear(x, kernel), bias
    return jnp.dot(x, kernel), bias


def set_dense_kernel(module: nnx.Module, kernel: str) -> None:
  """Sets `matmul_kernel` on every Dense layer in `module`'s tree (the
  config's model.dense_kernel, applied once the model is built)."""
  check_choice('dense', kernel)
  for _, node in nnx.iter_graph(module):
    if isinstance(node, Dense):
      node.matmul_kernel = kernel
