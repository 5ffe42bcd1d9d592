"""Fused attention on XLA:CPU through an XLA FFI custom call.

`cpu_attention.cc` (with `tiles.h`) holds the forward and backward kernels.
They are compiled on first use with the machine's C++ compiler (`$CXX`, else
`c++`) for this CPU (`-march=native`), into a cache keyed by the sources, the
jaxlib headers, the flags and the CPU's features (`cache_dir()`), the way
torch.compile's CPU backend builds its C++; then they are registered as FFI
targets. Where that fails (no compiler, say), `available()` is False, the
reason is logged once and is in `unavailable_reason()`, and the model uses
XLA's attention. `MMJAX_CPU_ATTENTION=0` turns the kernel off.

`attention(q, k, v, mask, bias)` has the semantics of
`mmjax.models.encoders.attention.dot_product_attention` for f32 inputs, with
the q/k/v projections' biases added inside the kernel. Under jit over several
devices the calls are partitioned along the batch axis
(`custom_partitioning`), so each device runs its own rows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import cache as cache_lib

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name('cpu_attention.cc')
HEADERS = (Path(__file__).with_name('tiles.h'),)
FLAGS = ('-O3', '-march=native', '-std=gnu++17', '-shared', '-fPIC', '-w')
_TARGETS = {'mmjax_attention_fwd': 'MmjaxAttentionForward',
            'mmjax_attention_bwd': 'MmjaxAttentionBackward'}


def cache_dir() -> Path:
  """Where compiled kernels live: $MMJAX_KERNEL_CACHE, else the kernels/
  folder of mmjax's cache ($MMJAX_CACHE or ~/.cache/mmjax)."""
  return Path(os.environ.get('MMJAX_KERNEL_CACHE')
              or os.path.join(cache_lib.cache_root(), 'kernels'))


def _cpu_features() -> str:
  """What -march=native compiles for: a library built on one CPU may not run
  on another that shares the cache (a network home)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      return next((line for line in f if line.startswith('flags')), '')
  except OSError:
    return platform.processor()


def _compiler() -> str | None:
  return shutil.which(os.environ.get('CXX', 'c++'))


def _build(cxx: str) -> Path:
  include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for path in (SOURCE, *HEADERS):
    key.update(path.read_bytes())
  key.update(' '.join((cxx, include, jax.__version__, platform.machine(),
                       _cpu_features()) + FLAGS).encode())
  lib = cache_dir() / f'cpu_attention-{key.hexdigest()[:16]}.so'
  if lib.exists():
    return lib
  lib.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target, then rename: concurrent builders (pytest
  # workers, hosts on a shared home) never see a partial library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=lib.parent)
  os.close(fd)
  try:
    cmd = [cxx, *FLAGS, '-I', include, str(SOURCE), '-o', tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels once; returns why not, or None."""
  if os.environ.get('MMJAX_CPU_ATTENTION', '1') == '0':
    return 'disabled by MMJAX_CPU_ATTENTION=0'
  cxx = _compiler()
  if cxx is None:
    return f'no C++ compiler ({os.environ.get("CXX", "c++")}) on PATH'
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(
          name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
  except (OSError, RuntimeError, AttributeError) as e:
    return f'building the CPU attention kernel failed: {e}'
  return None


@functools.cache
def _warn(reason: str) -> None:
  log.warning('fused CPU attention unavailable, using XLA attention: %s',
              reason)


def available() -> bool:
  """True when the kernels are built and registered (builds on first call)."""
  reason = _load()
  if reason is not None:
    _warn(reason)
  return reason is None


def unavailable_reason() -> str | None:
  return _load()


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


def _specs(rule: str):
  """A sharding rule's factor names, per operand and per result."""
  ins, outs = rule.split('->')
  parse = lambda side: tuple(x.split() for x in side.split(','))
  return parse(ins), parse(outs)


def _batch_partitioned(fn, rule):
  """`fn` as a custom_partitioning op split along the batch axis."""
  ins, outs = _specs(rule)

  def shardings(mesh, batch_axes, operands):
    return tuple(NamedSharding(mesh, P(*[batch_axes if f == 'b' else None
                                          for f in dims]))
                 for dims in operands)

  def batch_axes_of(arg_shapes):
    spec = getattr(arg_shapes[0].sharding, 'spec', None)
    return spec[0] if spec else None

  def infer(mesh, arg_shapes, result_shape):
    del result_shape
    return shardings(mesh, batch_axes_of(arg_shapes), outs)

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    axes = batch_axes_of(arg_shapes)
    return mesh, fn, shardings(mesh, axes, outs), shardings(mesh, axes, ins)

  wrapped = custom_partitioning(fn)
  wrapped.def_partition(
      infer_sharding_from_operands=infer, partition=partition,
      sharding_rule=rule, need_replication_factors=('q', 'h', 'd', 'k'))
  return wrapped


_forward = _batch_partitioned(_forward_call, _FWD)
_backward = _batch_partitioned(_backward_call, _BWD)


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
  reason = _load()
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
