"""Run with 8 simulated CPU devices; prints one JSON line of max abs diffs.

  scale_check.py ring DATA_DIR  sharded InfoNCE/SigLIP vs dense (values and
                                grads), and the train gradients with the ring
                                loss + GradCache vs the dense full batch.
  scale_check.py fsdp DATA_DIR  FSDP rules vs replicated: loss, grads and the
                                updated parameters after two steps.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import xla_env  # noqa: E402

os.environ["XLA_FLAGS"] = xla_env.with_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from mmjax.losses import contrastive, sharded_contrastive  # noqa: E402
from scale_setup import grads, max_diff, max_rel_diff, setup, train_steps  # noqa: E402
from tiny import tiny_config  # noqa: E402

FSDP = ((r"(kernel|embedding)$", ("data", None)),)


def loss_diffs() -> dict:
  """Ring vs dense on B=64 with duplicate ids, padding rows and 4-key tiles."""
  mesh = Mesh(np.asarray(jax.devices()).reshape(8, 1), ("data", "model"))
  k = jax.random.split(jax.random.key(0), 2)
  unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  z_a, z_b = (unit(jax.random.normal(key, (64, 8))) for key in k)
  rs = np.random.RandomState(0)
  kw = dict(ids=jnp.asarray(rs.randint(0, 40, 64)), valid=jnp.asarray(rs.rand(64) > 0.2))
  out = {}
  for name, dense, ring, coef in (
      ("infonce", contrastive.infonce, sharded_contrastive.ring_infonce, (2.5,)),
      ("siglip", contrastive.siglip, sharded_contrastive.ring_siglip, (2.0, -3.0))):
    args = (z_a, z_b) + tuple(jnp.float32(c) for c in coef)
    argnums = tuple(range(len(args)))
    ref = jax.value_and_grad(lambda *a: dense(*a, **kw), argnums)(*args)
    got = jax.jit(jax.value_and_grad(
        lambda *a: ring(*a, mesh=mesh, chunk=4, **kw), argnums))(*args)
    out[name] = max_diff(ref, got)
  return out


def ring(data_dir) -> dict:
  cfg = tiny_config()
  cfg.data.dir = data_dir
  dense = grads(setup(cfg, data_dir))
  cfg.loss.contrastive_impl = "ring"
  cfg.loss.contrastive_chunk = 1
  ring_full = grads(setup(cfg, data_dir))
  cfg.train.accum_steps = 2
  ring_accum = grads(setup(cfg, data_dir))
  return dict(loss=loss_diffs(), step_ring=max_diff(dense, ring_full),
              step_ring_accum=max_diff(dense, ring_accum),
              terms=sorted(dense[0][1][0]))


def fsdp(data_dir) -> dict:
  cfg = tiny_config()
  cfg.data.dir = data_dir
  cfg.train.warmup_steps = 0   # Real updates from the first step.
  rep_state, rep_metrics = train_steps(setup(cfg, data_dir), 2)
  cfg.mesh.rules = FSDP
  s = setup(cfg, data_dir)
  kernel = s.state["params"]["text"]["layers"][0]["attention"]["query"]["kernel"]
  mu = s.state["opt_state"][1][0].mu["text"]["layers"][0]["attention"]["query"]["kernel"]
  state, metrics = train_steps(s, 2)
  return dict(
      lr=cfg.train.lr, kernel_spec=str(kernel.sharding.spec), mu_spec=str(mu.sharding.spec),
      kernel_shards=len(kernel.addressable_shards[0].data),
      loss=max_diff([m["loss"] for m in rep_metrics], [m["loss"] for m in metrics]),
      metrics=max_rel_diff(rep_metrics, metrics),
      params=max_diff(rep_state["params"], state["params"]),
      opt_state=max_diff(rep_state["opt_state"], state["opt_state"]))


if __name__ == "__main__":
  assert jax.device_count() == 8
  print(json.dumps(dict(ring=ring, fsdp=fsdp)[sys.argv[1]](sys.argv[2])))
