"""Checks shared by the CPU kernel tests (test_cpu_attention, test_cpu_dense)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


def module_hlo(module, *inputs) -> str:
  """The lowered HLO text of `module(*inputs)` under jit."""
  graphdef, params = nnx.split(module)
  return jax.jit(lambda p: nnx.merge(graphdef, p)(*inputs)).lower(params).as_text()


def assert_kernel_choices_agree(make, *inputs, atol=1e-5):
  """make("cpu") and make("xla") (the same module, on the kernel and on XLA)
  give the same outputs and parameter gradients on `inputs`."""
  results = []
  for kernel in ("cpu", "xla"):
    graphdef, params = nnx.split(make(kernel))

    def loss(params):
      out = nnx.merge(graphdef, params)(*inputs)
      return jnp.sum(jnp.sin(out)), out

    results.append(jax.jit(jax.grad(loss, has_aux=True))(params))
  (g_cpu, out_cpu), (g_xla, out_xla) = results
  np.testing.assert_allclose(out_cpu, out_xla, atol=atol, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


def assert_unbuilt_kernels_fall_back(monkeypatch, gate, make, x, target: str):
  """With `gate`'s kernels unbuildable (no compiler), make("auto") runs no
  `target` custom call and make("cpu") raises, saying why."""
  monkeypatch.setattr(gate, "unavailable_reason", lambda: "no C++ compiler (c++) on PATH")
  assert target not in module_hlo(make("auto"), x)
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
    make("cpu")(x)
