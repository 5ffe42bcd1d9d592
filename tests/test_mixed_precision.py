"""bf16 compute with f32 master weights, f32 loss and optional bf16 Adam
first moment; per-block remat changes memory, not gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scale_setup import grads, max_diff, setup, tiny_f32_grads, train_steps


@pytest.mark.slow
def test_bf16_compute_keeps_f32_master_weights_and_loss(data_dir):
  cfg, ((loss32, _), _) = tiny_f32_grads(data_dir)
  cfg.model.dtype = "bfloat16"
  cfg.train.mu_dtype = "bfloat16"
  cfg.train.warmup_steps = 0
  state, metrics = train_steps(setup(cfg, data_dir), 1)
  adam = state["opt_state"][1][0]
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
  loss = metrics[0]["loss"]
  assert loss.dtype == jnp.float32 and metrics[0]["infonce"].dtype == jnp.float32
  # bf16 activations: the same loss to ~2 significant digits, not bit-equal.
  assert abs(float(loss) - float(loss32)) < 0.02 * abs(float(loss32))
  assert float(loss) != float(loss32)


@pytest.mark.slow
def test_remat_gives_the_same_gradients(data_dir):
  cfg, ref = tiny_f32_grads(data_dir)
  cfg.model.remat = True
  assert max_diff(ref, grads(setup(cfg, data_dir))) <= 1e-6


def test_remat_checkpoints_each_block():
  from flax import nnx
  from mmjax.models.encoders.text import BertEncoder
  enc = BertEncoder(vocab_size=11, hidden=8, layers=2, heads=2, mlp_dim=16,
                    max_len=4, remat=True, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(enc)
  loss = lambda p: nnx.merge(graphdef, p)(jnp.ones((1, 4), jnp.int32),
                                          jnp.ones((1, 4)))[1].sum()
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert jaxpr.count("checkpoint") + jaxpr.count("remat") >= 2, "one per block"
  assert np.isfinite(float(loss(params)))
