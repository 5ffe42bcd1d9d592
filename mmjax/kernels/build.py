"""Builds and registers mmjax's XLA:CPU kernels (one shared library).

The C++ sources here (`cpu_attention.cc`, `cpu_dense.cc` and their headers)
are compiled on first use with the machine's C++ compiler (`$CXX`, else
`c++`) for this CPU (`-march=native`), into a cache keyed by the sources, the
jaxlib headers, the flags and the CPU's features (`cache_dir()`), the way
torch.compile's CPU backend builds its C++; then every handler is registered
as an FFI target. `load()` returns why that failed (no compiler, say), or
None; the kernels' modules fall back to XLA's ops when it fails.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

from mmjax import cache as cache_lib

_HERE = Path(__file__).parent
SOURCES = (_HERE / 'cpu_attention.cc', _HERE / 'cpu_dense.cc')
HEADERS = (_HERE / 'tiles.h', _HERE / 'gemm.h', _HERE / 'parallel.h')
FLAGS = ('-O3', '-march=native', '-std=gnu++17', '-shared', '-fPIC', '-w')
# FFI target name -> the handler's symbol.
TARGETS = {'mmjax_attention_fwd': 'MmjaxAttentionForward',
           'mmjax_attention_bwd': 'MmjaxAttentionBackward',
           'mmjax_dense_fwd': 'MmjaxDenseForward',
           'mmjax_dense_dx': 'MmjaxDenseInputGrad',
           'mmjax_dense_dw': 'MmjaxDenseWeightGrad'}


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


def compiler() -> str | None:
  return shutil.which(os.environ.get('CXX', 'c++'))


def build(cxx: str) -> Path:
  """The library for these sources and this CPU: from the cache, or built."""
  include = jax.ffi.include_dir()
  key = hashlib.sha256()
  for path in (*SOURCES, *HEADERS):
    key.update(path.read_bytes())
  key.update(' '.join((cxx, include, jax.__version__, platform.machine(),
                       _cpu_features()) + FLAGS).encode())
  lib = cache_dir() / f'mmjax_kernels-{key.hexdigest()[:16]}.so'
  if lib.exists():
    return lib
  lib.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target, then rename: concurrent builders (pytest
  # workers, hosts on a shared home) never see a partial library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=lib.parent)
  os.close(fd)
  try:
    cmd = [cxx, *FLAGS, '-I', include, *map(str, SOURCES), '-o', tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
    os.replace(tmp, lib)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return lib


@functools.cache
def load() -> str | None:
  """Builds and registers the kernels once; returns why not, or None."""
  cxx = compiler()
  if cxx is None:
    return f'no C++ compiler ({os.environ.get("CXX", "c++")}) on PATH'
  try:
    lib = ctypes.cdll.LoadLibrary(str(build(cxx)))
    for name, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(
          name, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
  except (OSError, RuntimeError, AttributeError) as e:
    return f'building the CPU kernels failed: {e}'
  return None
