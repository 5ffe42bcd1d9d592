"""The sharded (ring, chunked) InfoNCE/SigLIP equal the dense ones."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from mmjax.losses import contrastive
from mmjax.losses.sharded_contrastive import ring_infonce, ring_siglip
from cpu_collectives import retry_on_rendezvous_abort

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pairs():
  k = jax.random.split(jax.random.key(3), 2)
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  rs = np.random.RandomState(1)
  return dict(z_a=unit(jax.random.normal(k[0], (24, 6))),
              z_b=unit(jax.random.normal(k[1], (24, 6))),
              ids=jnp.asarray(rs.randint(0, 12, 24)),   # Many duplicates.
              valid=jnp.asarray(np.arange(24) < 20))    # 4 padding rows.


@pytest.mark.parametrize("masks", ["none", "ids+valid"])
@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_chunked_equals_dense_on_one_device(pairs, loss, masks):
  """One device: the local block alone is chunked (6 keys per tile)."""
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  kw = {k: pairs[k] for k in ("ids", "valid") if k in masks}
  dense, ring, coef = ((contrastive.infonce, ring_infonce, (2.0,)) if loss == "infonce"
                       else (contrastive.siglip, ring_siglip, (1.5, -2.0)))
  args = (pairs["z_a"], pairs["z_b"]) + tuple(jnp.float32(c) for c in coef)
  argnums = tuple(range(len(args)))
  ref_v, ref_g = jax.jit(jax.value_and_grad(lambda *a: dense(*a, **kw), argnums))(*args)
  v, g = jax.jit(jax.value_and_grad(lambda *a: ring(*a, mesh=mesh, chunk=6, **kw),
                                    argnums))(*args)
  np.testing.assert_allclose(v, ref_v, atol=1e-5, rtol=0)
  for x, y in zip(g, ref_g):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


def test_chunk_that_does_not_divide_the_block(pairs):
  """chunk=5 on a block of 24 falls back to gcd(24, 5) = 1 key per tile."""
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  got = jax.jit(lambda a, b: ring_infonce(a, b, 1.0, mesh=mesh, chunk=5))(
      pairs["z_a"], pairs["z_b"])
  np.testing.assert_allclose(got, contrastive.infonce(pairs["z_a"], pairs["z_b"], 1.0),
                             atol=1e-5, rtol=0)


@pytest.mark.xdist_group("simulated_devices")
@pytest.mark.slow
@retry_on_rendezvous_abort
def test_eight_devices_ring_equals_dense(data_dir):
  """8 simulated devices: the loss alone, and the whole train step's
  gradients with the ring loss (with and without GradCache)."""
  proc = subprocess.run([sys.executable, os.path.join(HERE, "scale_check.py"), "ring",
                         data_dir], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert {"infonce", "siglip"} <= set(r["terms"])
  assert r["loss"]["infonce"] <= 1e-5 and r["loss"]["siglip"] <= 1e-5, r
  assert r["step_ring"] <= 1e-5, r
  # Accumulation sums two half-batch gradients: float32 rounding in another
  # order, on values up to the loss's size; a wrong ring or split is far off.
  assert r["step_ring_accum"] <= 3e-5, r
