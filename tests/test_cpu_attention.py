"""The fused CPU attention kernel (mmjax/kernels) against XLA's attention."""

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
from mmjax.kernels import build, cpu_attention
from mmjax.models.encoders import attention as attn_lib
from kernel_checks import (assert_kernel_choices_agree, assert_unbuilt_kernels_fall_back,
                           module_hlo)

pytestmark = pytest.mark.skipif(
    not cpu_attention.available(),
    reason=f"CPU attention kernel unavailable: {cpu_attention.unavailable_reason()}")


def _inputs(b, tq, tk, h, d, seed=0):
  r = np.random.default_rng(seed)
  q = r.standard_normal((b, tq, h, d), np.float32)
  k, v = (r.standard_normal((b, tk, h, d), np.float32) for _ in range(2))
  biases = tuple(r.standard_normal((h, d), np.float32) for _ in range(3))
  mask = r.random((b, tk)) > 0.3
  mask[0] = False        # A row with every key masked: uniform, like XLA's.
  mask[-1, 0] = True
  return (*map(jnp.asarray, (q, k, v)), tuple(map(jnp.asarray, biases)),
          jnp.asarray(mask))


def _reference(q, k, v, mask, biases):
  bq, bk, bv = biases
  m = None if mask is None else mask[:, None, None, :]
  return attn_lib.dot_product_attention(q + bq, k + bk, v + bv, m)


# (B, Tq, Tk, H, D): the image and text layers' head size, cross-attention
# (Tq != Tk), and sizes that are no multiple of the kernel's 16-float tiles.
SHAPES = [(2, 65, 65, 4, 64), (3, 32, 32, 2, 64), (2, 17, 33, 3, 20),
          (3, 5, 7, 2, 8), (1, 1, 1, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_gradients_match_xla(shape, masked):
  q, k, v, biases, mask = _inputs(*shape)
  mask = mask if masked else None
  cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)

  def loss(fn):
    return lambda q, k, v, biases: jnp.sum(fn(q, k, v, mask, biases) * cot)

  kernel = lambda q, k, v, mask, biases: cpu_attention.attention(q, k, v, mask, biases)
  out = jax.jit(kernel)(q, k, v, mask, biases)
  np.testing.assert_allclose(out, _reference(q, k, v, mask, biases), atol=1e-5, rtol=1e-5)
  got = jax.jit(jax.grad(loss(kernel), argnums=(0, 1, 2, 3)))(q, k, v, biases)
  want = jax.jit(jax.grad(loss(_reference), argnums=(0, 1, 2, 3)))(q, k, v, biases)
  for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    # The bias gradients are sums over B * T rows of O(1) terms (the key
    # bias's is 0 up to that rounding: softmax ignores a per-row shift).
    np.testing.assert_allclose(g, w, atol=1e-5 if i < 3 else 1e-4, rtol=1e-5)


def test_masked_keys_get_no_weight():
  q, k, v, _, _ = _inputs(2, 4, 6, 1, 16)
  mask = jnp.array([[1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]], bool)
  noisy_v = v.at[:, 3:].set(1e6)      # Values at keys masked in both rows.
  a = cpu_attention.attention(q, k, v, mask)
  b = cpu_attention.attention(q, k, noisy_v.at[1, 4].set(v[1, 4]), mask)
  np.testing.assert_allclose(a, b, atol=1e-6)


def _mha(kernel, cross):
  return attn_lib.MultiHeadAttention(32, 4, kv_dim=24 if cross else None,
                                     attention_kernel=kernel, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cross", [False, True])
def test_module_kernels_agree(cross):
  """MultiHeadAttention with the fused kernel (biases inside it) and with
  XLA's attention: same outputs and parameter gradients."""
  r = np.random.default_rng(0)
  x = jnp.asarray(r.standard_normal((3, 9, 32)), jnp.float32)
  ctx = jnp.asarray(r.standard_normal((3, 7, 24)), jnp.float32) if cross else None
  mask = jnp.asarray(r.random((3, 7 if cross else 9)) > 0.2)
  assert_kernel_choices_agree(lambda kernel: _mha(kernel, cross), x, ctx, mask)


def test_auto_uses_kernel_on_cpu_f32_only():
  x = jnp.ones((2, 5, 32), jnp.float32)
  for kernel, dtype, fused in (("auto", jnp.float32, True), ("xla", jnp.float32, False),
                               ("auto", jnp.bfloat16, False)):
    hlo = module_hlo(attn_lib.MultiHeadAttention(32, 4, attention_kernel=kernel,
                                                 dtype=dtype, rngs=nnx.Rngs(0)), x)
    assert ("mmjax_attention_fwd" in hlo) == fused, (kernel, dtype)


def test_bad_choices_are_errors(monkeypatch):
  with pytest.raises(ValueError, match="attention kernel must be one of"):
    _mha("fast", False)
  m = attn_lib.MultiHeadAttention(32, 4, attention_kernel="cpu", dtype=jnp.bfloat16,
                                  rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="f32 only"):
    m(jnp.ones((1, 3, 32)))
  with pytest.raises(ValueError, match=r"\(B, L, H, D\)"):
    cpu_attention.attention(*(jnp.ones((3, 2, 4)),) * 3)
  cfg = config_lib.default_config()
  cfg.model.attention_kernel = "fast"
  with pytest.raises(MmjaxError, match="attention_kernel"):
    config_lib.validate(cfg)
  # Without the kernel "auto" falls back to XLA and "cpu" says why it can't.
  assert_unbuilt_kernels_fall_back(monkeypatch, cpu_attention.gate,
                                   lambda kernel: _mha(kernel, False),
                                   jnp.ones((2, 5, 32), jnp.float32), "mmjax_attention")


def test_build_is_cached_and_failures_are_reported(tmp_path, monkeypatch):
  monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path))
  lib = build.build(build.compiler())
  assert lib.parent == tmp_path and lib.exists()
  mtime = lib.stat().st_mtime_ns
  assert build.build(build.compiler()) == lib
  assert lib.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [lib.name]   # No temp left.
  fake = tmp_path / "cxx"
  fake.write_text("#!/bin/sh\necho 'fatal: no such compiler' >&2\nexit 1\n")
  fake.chmod(0o755)
  monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path / "other"))
  with pytest.raises(RuntimeError, match="fatal: no such compiler"):
    build.build(str(fake))
  assert not list((tmp_path / "other").iterdir())


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mmjax.kernels import build, cpu_attention
    from mmjax.models.encoders.attention import dot_product_attention
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.standard_normal((8, 9, 2, 16)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(r.random((8, 9)) > 0.3)
    rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    q, k, v, mask = (jax.device_put(x, rows) for x in (q, k, v, mask))
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) ** 2)
    fused = jax.jit(jax.grad(loss(lambda q, k, v: cpu_attention.attention(q, k, v, mask)),
                             argnums=(0, 1, 2)), in_shardings=rows, out_shardings=rows)
    xla = jax.jit(jax.grad(loss(lambda q, k, v: dot_product_attention(
        q, k, v, mask[:, None, None, :])), argnums=(0, 1, 2)))
    err = max(float(jnp.abs(a - b).max()) for a, b in zip(fused(q, k, v), xla(q, k, v)))
    hlo = fused.lower(q, k, v).compile().as_text()
    calls = [l for l in hlo.splitlines() if "mmjax_attention_" in l]
    print(err, "all-gather" in hlo, all("f32[2,9,2,16]" in l for l in calls), len(calls))
""")


@pytest.mark.xdist_group("simulated_devices")
def test_batch_sharded_calls_run_per_device():
  """On 4 devices with the batch sharded, each device runs the kernel on its
  own 2 rows (no gather), and the gradients are XLA's."""
  proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True,
                        text=True, timeout=300, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-3000:]
  err, gathered, local, calls = proc.stdout.split()
  assert float(err) <= 1e-5 and gathered == "False" and local == "True", proc.stdout
  assert int(calls) == 2
