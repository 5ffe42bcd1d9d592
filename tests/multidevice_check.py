"""Run with 8 simulated CPU devices: one step on 8 devices vs on 1 device.

Prints the max abs differences of loss, gradients and updated params as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scale_setup import grads, setup, train_steps  # noqa: E402
from tiny import tiny_config  # noqa: E402


def run(cfg, data_dir, devices):
  s = setup(cfg, data_dir, devices)
  (loss, (terms, _)), g = grads(s)
  new_state, _ = train_steps(s, 1)
  assert len(s.batch["tokens"].sharding.device_set) == len(devices)
  return loss, terms, g, jax.device_get((new_state["params"], new_state["rest"]))


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
  print(json.dumps(dict(loss=diff(one[0], eight[0]), terms=diff(one[1], eight[1]),
                        grads=diff(one[2], eight[2]), params=diff(one[3], eight[3]),
                        loss_value=float(one[0]), terms_names=sorted(one[1]))))


if __name__ == "__main__":
  main()
