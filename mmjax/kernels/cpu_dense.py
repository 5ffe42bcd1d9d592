"""The dense layer's matmuls on XLA:CPU through XLA FFI custom calls.

`cpu_dense.cc` (with `gemm.h`) holds y = x W + b, dx = dy W^T and
dW = x^T dy with db = sum(dy) in one pass, built with the attention kernel
by `mmjax.kernels.build`. XLA:CPU runs f32 dots through Eigen's tensor
contraction, which repacks both operands on every call; these kernels pack
only the weight and read the activation in place (gemm.h). On the base
config the whole train step ran 7-13% faster with them (docs/benchmarking.md).

`linear(x, kernel, bias)` is `x @ kernel + bias` with that forward and
backward, for f32 and widths (kernel's rows and columns) that are multiples
of 16: `supports()` says whether a call qualifies. Leading axes of x are
flattened into rows; under jit over several devices the rows split over the
batch's mesh axes, and the weight gradients are summed across them.
`MMJAX_CPU_DENSE=0` turns the kernels off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.kernels.gate import Gate
from mmjax.kernels.partition import batch_partitioned

_WIDTH = 16   # The kernels' vector width: K and N must be multiples of it.

gate = Gate('CPU dense', 'MMJAX_CPU_DENSE', "XLA's dots")
available = gate.available
unavailable_reason = gate.unavailable_reason


def supports(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether `linear` takes these operands: f32, 2-D kernel, x's last axis
  the kernel's rows, both widths multiples of 16."""
  return (x.dtype == jnp.float32 and kernel.dtype == jnp.float32
          and kernel.ndim == 2 and x.ndim >= 1 and x.shape[-1] == kernel.shape[0]
          and kernel.shape[0] % _WIDTH == 0 and kernel.shape[1] % _WIDTH == 0)


def _f32(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward_call(x, kernel, bias):
  return jax.ffi.ffi_call('mmjax_dense_fwd', _f32(x.shape[0], kernel.shape[1]))(
      x, kernel, bias)


def _input_grad_call(dy, kernel):
  return jax.ffi.ffi_call('mmjax_dense_dx', _f32(dy.shape[0], kernel.shape[0]))(
      dy, kernel)


def _weight_grad_call(x, dy):
  return jax.ffi.ffi_call(
      'mmjax_dense_dw', (_f32(x.shape[1], dy.shape[1]), _f32(dy.shape[1])))(x, dy)


# Rows ('b') split over devices; the weights are replicated. The weight
# gradient reduces over rows: a partial sum per device, then psum.
_replicated = ('k', 'n')
_forward = batch_partitioned(_forward_call, 'b k, k n, n -> b n', _replicated)
_input_grad = batch_partitioned(_input_grad_call, 'b n, k n -> b k', _replicated)
_weight_grad = batch_partitioned(_weight_grad_call, 'b k, b n -> k n, n',
                                 _replicated)


def _rows(x):
  return x.reshape(-1, x.shape[-1])


@jax.custom_vjp
def _linear(x, kernel, bias):
  return _forward(_rows(x), kernel, bias).reshape(*x.shape[:-1], kernel.shape[1])


def _linear_fwd(x, kernel, bias):
  return _linear(x, kernel, bias), (x, kernel)


def _linear_bwd(res, dy):
  x, kernel = res
  dy2 = _rows(dy)
  dkernel, dbias = _weight_grad(_rows(x), dy2)
  return _input_grad(dy2, kernel).reshape(x.shape), dkernel, dbias


_linear.defvjp(_linear_fwd, _linear_bwd)


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None):
  """x (..., K) @ kernel (K, N) + bias (N,) on the kernels; bias None is
  zeros. Raises if the kernels could not be built or `supports` is False."""
  reason = gate.unavailable_reason()
  if reason is not None:
    raise RuntimeError(reason)
  if not supports(x, kernel):
    raise ValueError(
        f'CPU dense kernels take f32 x (..., K) and kernel (K, N) with K and N '
        f'multiples of {_WIDTH}; got {x.dtype}{list(x.shape)}, '
        f'{kernel.dtype}{list(kernel.shape)}')
  if bias is None:
    bias = jnp.zeros((kernel.shape[1],), jnp.float32)
  return _linear(x, kernel, jnp.asarray(bias, jnp.float32).reshape(-1))
