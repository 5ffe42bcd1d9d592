"""Run with 8 simulated CPU devices: two steps on 8 devices vs on 1 device.

Prints the max abs differences of loss, gradients and updated params as JSON.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import xla_env  # noqa: E402

os.environ["XLA_FLAGS"] = xla_env.with_devices(8)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import mesh as mesh_lib  # noqa: E402
from mmjax.train.optimizer import learning_rate  # noqa: E402
from mmjax.train.step import make_multi_step  # noqa: E402
from scale_setup import grads, setup, train_steps  # noqa: E402
from tiny import tiny_config  # noqa: E402


def run(cfg, data_dir, devices, n=2):
  """The first batch's loss, terms and gradients; the params and buffers
  after n steps and the n steps' losses."""
  s = setup(cfg, data_dir, devices)
  (loss, (terms, _)), g = grads(s)
  new_state, metrics = train_steps(s, n)
  assert len(s.batch["tokens"].sharding.device_set) == len(devices)
  return loss, terms, g, jax.device_get(((new_state["params"], new_state["buffers"]),
                                         np.stack([m["loss"] for m in metrics])))


def run_multi(cfg, data_dir, devices, n=2):
  """n steps in one call of the k-step program (train.steps_per_call)."""
  s = setup(cfg, data_dir, devices)
  locals_ = [jax.device_get(s.batch)] + [next(s.data) for _ in range(n - 1)]
  step = make_multi_step(s.graphdef, s.tx, s.cfg.loss, s.mesh, s.shardings,
                         learning_rate(s.cfg.train), s.cfg.train.accum_steps)
  state, metrics = step(s.state, mesh_lib.global_batches(locals_, s.mesh))
  return jax.device_get(((state["params"], state["buffers"]), metrics["loss"]))


def main():
  data_dir = sys.argv[1]
  cfg = tiny_config()
  cfg.data.dir = data_dir
  cfg.train.warmup_steps = 0   # A real update at step 0.
  assert jax.device_count() == 8
  one = run(cfg, data_dir, jax.devices()[:1])
  eight = run(cfg, data_dir, jax.devices())
  diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  # Two steps: two calls on 1 device vs one 2-step call on 8 devices.
  calls, scanned = one[3], run_multi(cfg, data_dir, jax.devices())
  print(json.dumps(dict(loss=diff(one[0], eight[0]), terms=diff(one[1], eight[1]),
                        grads=diff(one[2], eight[2]), params=diff(one[3][0], eight[3][0]),
                        loss_value=float(one[0]), terms_names=sorted(one[1]),
                        multi_step_params=diff(calls[0], scanned[0]),
                        multi_step_losses=diff(calls[1], scanned[1]),
                        multi_step_loss_shape=list(np.shape(scanned[1])))))


if __name__ == "__main__":
  main()
