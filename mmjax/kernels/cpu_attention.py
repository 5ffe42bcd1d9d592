"""Fused attention on XLA:CPU through an XLA FFI custom call.

`cpu_attention.cc` (with `tiles.h`) holds the forward and backward kernels,
built and registered on first use by `mmjax.kernels.build`. Where that fails
(no compiler, say), `available()` is False, the reason is logged once and is
in `unavailable_reason()`, and the model uses XLA's attention.
`MMJAX_CPU_ATTENTION=0` turns the kernel off.

`attention(q, k, v, mask, bias)` has the semantics of
`mmjax.models.encoders.attention.dot_product_attention` for f32 inputs, with
the q/k/v projections' biases added inside the kernel. Under jit over several
devices the calls are partitioned along the batch axis
(`custom_partitioning`), so each device runs its own rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels.gate import Gate
from mmjax.kernels.partition import batch_partitioned

gate = Gate('fused CPU attention', 'MMJAX_CPU_ATTENTION', "XLA's attention")
available = gate.available
unavailable_reason = gate.unavailable_reason


def _stats_shape(q):
  *batch, tq, heads, _ = q.shape
  return jax.ShapeDtypeStruct((*batch, heads, tq), jnp.float32)


def _like(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _forward_call(q, k, v, bq, bk, bv, mask):
  return jax.ffi.ffi_call(
      'mmjax_attention_fwd', (_like(q), _stats_shape(q), _stats_shape(q)),
      vmap_method='sequential')(q, k, v, bq, bk, bv, mask)


def _backward_call(q, k, v, bq, bk, bv, mask, out, row_max, row_sum, d_out):
  # The bias gradients come back per batch row, (B, H, D), for the caller
  # to sum: under batch partitioning that sum is the cross-device reduction.
  part = jax.ShapeDtypeStruct((q.shape[0], *q.shape[2:]), q.dtype)
  return jax.ffi.ffi_call(
      'mmjax_attention_bwd', (_like(q), _like(k), _like(v), part, part, part),
      vmap_method='sequential')(q, k, v, bq, bk, bv, mask, out, row_max,
                                row_sum, d_out)


# Operand and result layouts: (B, T, H, D) tensors, (H, D) biases, the
# (B, Tk) mask, the (B, H, Tq) row statistics and the (B, H, D) bias-gradient
# parts. Each batch row is independent, so the calls are partitioned along B:
# every device runs its own rows, and whatever else is sharded is gathered.
_FWD = ('b q h d, b k h d, b k h d, h d, h d, h d, b k'
        ' -> b q h d, b h q, b h q')
_BWD = ('b q h d, b k h d, b k h d, h d, h d, h d, b k, b q h d, b h q, b h q,'
        ' b q h d -> b q h d, b k h d, b k h d, b h d, b h d, b h d')


_REPLICATED = ('q', 'h', 'd', 'k')
_forward = batch_partitioned(_forward_call, _FWD, _REPLICATED)
_backward = batch_partitioned(_backward_call, _BWD, _REPLICATED)


@jax.custom_vjp
def _attention(q, k, v, bq, bk, bv, mask):
  return _forward(q, k, v, bq, bk, bv, mask)[0]


def _attention_fwd(q, k, v, bq, bk, bv, mask):
  out, row_max, row_sum = _forward(q, k, v, bq, bk, bv, mask)
  return out, (q, k, v, bq, bk, bv, mask, out, row_max, row_sum)


def _attention_bwd(res, d_out):
  *operands, mask, out, row_max, row_sum = res
  dq, dk, dv, dbq, dbk, dbv = _backward(*operands, mask, out, row_max, row_sum,
                                        d_out)
  return (dq, dk, dv, dbq.sum(0), dbk.sum(0), dbv.sum(0),
          np.zeros(mask.shape, jax.dtypes.float0))


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, mask=None, bias=None):
  """softmax(q' k'^T / sqrt(D)) v' for f32 (B, L, H, D) inputs on the CPU,
  where x' = x + bias_x: `bias` is None or the projections' biases
  (bq, bk, bv), each (H, D), added inside the kernel.

  `mask` is (B, Lk) or (B, 1, 1, Lk), truthy = attend. Call `available()`
  first; this raises if the kernel could not be built.
  """
  reason = gate.unavailable_reason()
  if reason is not None:
    raise RuntimeError(reason)
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f'fused CPU attention takes (B, L, H, D) q, k, v; got '
                     f'{q.shape}, {k.shape}, {v.shape}')
  if not all(x.dtype == jnp.float32 for x in (q, k, v)):
    raise TypeError(f'fused CPU attention is f32 only, got {q.dtype}, '
                    f'{k.dtype}, {v.dtype}')
  (b, tk), heads_dims = (k.shape[0], k.shape[1]), q.shape[2:]
  if mask is None:
    mask = jnp.ones((b, tk), jnp.uint8)
  else:
    mask = jnp.broadcast_to(mask, (b, 1, 1, tk) if mask.ndim == 4
                            else (b, tk)).reshape(b, tk).astype(jnp.uint8)
  if bias is None:
    bias = (jnp.zeros(heads_dims, jnp.float32),) * 3
  bias = tuple(jnp.asarray(x, jnp.float32).reshape(heads_dims) for x in bias)
  return _attention(q, k, v, *bias, mask)
