"""The CPU dense kernels (mmjax/kernels/cpu_dense) against XLA's dots."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax import config as config_lib
from mmjax.errors import MmjaxError
from mmjax.kernels import cpu_dense
from mmjax.kernels.flops import kernel_flops
from mmjax.models.encoders import linear as linear_lib
from kernel_checks import (assert_kernel_choices_agree, assert_unbuilt_kernels_fall_back,
                           module_hlo)

pytestmark = pytest.mark.skipif(
    not cpu_dense.available(),
    reason=f"CPU dense kernels unavailable: {cpu_dense.unavailable_reason()}")


def _operands(lead, k, n, seed=0):
  r = np.random.default_rng(seed)
  x = r.standard_normal((*lead, k), np.float32)
  w = r.standard_normal((k, n), np.float32) / np.sqrt(k)
  b = r.standard_normal((n,), np.float32)
  cot = r.standard_normal((*lead, n), np.float32)
  return tuple(map(jnp.asarray, (x, w, b, cot)))


def _reference(x, w, b):
  return jnp.dot(x, w, precision="highest") + b


# (leading axes, K, N): row counts that leave partial 6-row tiles and 96-row
# blocks, widths that leave partial 64-column panels, K over one 256-deep
# chunk, and T (rows of the weight gradient) over several 256-row slices.
SHAPES = [((7,), 16, 16), ((4, 25), 48, 80), ((3, 367), 528, 272),
          ((1,), 32, 1024), ((2, 650), 256, 96)]


@pytest.mark.parametrize("lead,k,n", SHAPES)
def test_forward_and_gradients_match_xla(lead, k, n):
  x, w, b, cot = _operands(lead, k, n)
  loss = lambda fn: lambda x, w, b: jnp.sum(fn(x, w, b) * cot)
  np.testing.assert_allclose(jax.jit(cpu_dense.linear)(x, w, b), _reference(x, w, b),
                             atol=2e-5, rtol=1e-5)
  got = jax.jit(jax.grad(loss(cpu_dense.linear), argnums=(0, 1, 2)))(x, w, b)
  want = jax.jit(jax.grad(loss(_reference), argnums=(0, 1, 2)))(x, w, b)
  rows = int(np.prod(lead))
  for name, g, r in zip("x w b".split(), got, want):
    # dW and db sum over every row: their rounding grows with the row count.
    tol = 2e-5 if name == "x" else 2e-6 * np.sqrt(rows) + 1e-5
    np.testing.assert_allclose(g, r, atol=tol, rtol=1e-5, err_msg=name)


def test_no_bias_is_zero_bias():
  x, w, _, _ = _operands((5, 3), 32, 48)
  np.testing.assert_allclose(cpu_dense.linear(x, w), _reference(x, w, 0.0),
                             atol=1e-5, rtol=1e-5)


def _dense(kernel, k=32, n=48, dtype=jnp.float32):
  return linear_lib.Dense(k, n, matmul_kernel=kernel, dtype=dtype, rngs=nnx.Rngs(0))


def test_dense_module_kernels_agree():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 9, 32)), jnp.float32)
  assert_kernel_choices_agree(_dense, x)


def test_auto_uses_kernels_for_f32_and_widths_of_16_only():
  cases = [("auto", 32, 48, jnp.float32, True), ("xla", 32, 48, jnp.float32, False),
           ("auto", 32, 48, jnp.bfloat16, False), ("auto", 20, 48, jnp.float32, False),
           ("cpu", 32, 40, jnp.float32, False)]   # "cpu" leaves unsupported widths to XLA.
  for kernel, k, n, dtype, fused in cases:
    hlo = module_hlo(_dense(kernel, k, n, dtype), jnp.ones((2, 5, k), jnp.float32))
    assert ("mmjax_dense_fwd" in hlo) == fused, (kernel, k, n, dtype)


def test_model_config_sets_every_dense_layer():
  from tiny import tiny_config
  from mmjax.models.model import DataShapes, build_model
  cfg = tiny_config()
  cfg.model.dense_kernel = "xla"
  shapes = DataShapes(vocab_size=64, max_text_len=8, image_size=16, num_users=5,
                      num_items=7)
  model = build_model(cfg.model, shapes, seed=0)
  kinds = {n.matmul_kernel for _, n in nnx.iter_graph(model)
           if isinstance(n, linear_lib.Dense)}
  assert kinds == {"xla"}


def test_bad_choices_are_errors(monkeypatch):
  with pytest.raises(ValueError, match="dense kernel must be one of"):
    _dense("fast")
  with pytest.raises(ValueError, match="multiples of 16"):
    cpu_dense.linear(jnp.ones((2, 20)), jnp.ones((20, 16)))
  with pytest.raises(ValueError, match="multiples of 16"):
    cpu_dense.linear(jnp.ones((2, 16), jnp.bfloat16), jnp.ones((16, 16), jnp.bfloat16))
  cfg = config_lib.default_config()
  cfg.model.dense_kernel = "fast"
  with pytest.raises(MmjaxError, match="dense_kernel"):
    config_lib.validate(cfg)
  # Without the kernels "auto" falls back to XLA and "cpu" says why it can't.
  assert_unbuilt_kernels_fall_back(monkeypatch, cpu_dense.gate, _dense,
                                   jnp.ones((2, 5, 32), jnp.float32), "mmjax_dense")


def test_kernel_flops_are_what_xla_counts_for_its_dots():
  x, w, b, cot = _operands((4, 50), 64, 96)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda x, w, b: jnp.sum(fn(x, w, b) * cot),
                                               argnums=(0, 1, 2)))
  ours = kernel_flops(loss(cpu_dense.linear).lower(x, w, b).compile().as_text())
  xla = loss(linear_lib.linear).lower(x, w, b).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  # Three products of 2 * 200 * 64 * 96 FLOPs, plus the bias add and sum.
  assert ours == 3 * 2 * 200 * 64 * 96 + 2 * 200 * 96
  assert abs(ours - xla["flops"]) / xla["flops"] < 0.05


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mmjax.kernels import cpu_dense
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((8, 9, 32)), jnp.float32)
    w = jnp.asarray(r.standard_normal((32, 48)), jnp.float32)
    b = jnp.asarray(r.standard_normal((48,)), jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    x = jax.device_put(x, rows)
    loss = lambda f: lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))
    grad = lambda f: jax.grad(loss(f), argnums=(0, 1, 2))
    fused = jax.jit(grad(cpu_dense.linear), in_shardings=(rows, rep, rep),
                    out_shardings=(rows, rep, rep))
    xla = jax.jit(grad(lambda x, w, b: jnp.dot(x, w, precision="highest") + b))
    err = max(float(jnp.abs(a - c).max()) for a, c in zip(fused(x, w, b), xla(x, w, b)))
    hlo = fused.lower(x, w, b).compile().as_text()
    calls = [l for l in hlo.splitlines() if "mmjax_dense_" in l]
    local = all("f32[18," in l.split("custom-call")[1] for l in calls)
    print(err, "all-gather" in hlo, "all-reduce" in hlo, local, len(calls))
""")


@pytest.mark.xdist_group("simulated_devices")
def test_row_sharded_calls_run_per_device_and_sum_weight_gradients():
  """On 4 devices with the rows sharded, each device multiplies its own 18
  rows (no gather); the weight and bias gradients are summed across devices
  (all-reduce) and equal XLA's."""
  proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True,
                        text=True, timeout=300, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-3000:]
  err, gathered, reduced, local, calls = proc.stdout.split()
  assert float(err) <= 1e-4 and gathered == "False" and reduced == "True", proc.stdout
  assert local == "True" and int(calls) == 3, proc.stdout
