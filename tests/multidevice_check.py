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

from mmjax.data import store  # noqa: E402
from mmjax.data.features import TextTokenizer  # noqa: E402
from mmjax.data.pipeline import train_dataset  # noqa: E402
from mmjax.models.model import DataShapes, build_model  # noqa: E402
from mmjax.train import mesh as mesh_lib  # noqa: E402
from mmjax.train.optimizer import learning_rate, make_optimizer  # noqa: E402
from mmjax.train.step import (init_state, make_grad_fn, make_train_step,  # noqa: E402
                              state_shardings)
from tiny import tiny_config  # noqa: E402


def run(cfg, data_dir, devices):
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), cfg.data.max_text_len)
  shapes = DataShapes.of(catalog, tok, cfg.data.max_text_len)
  tx = make_optimizer(cfg.train)
  graphdef, state = init_state(build_model(cfg.model, shapes, seed=0), tx, 0)
  sh = state_shardings(state, mesh)
  state = jax.device_put(state, sh)
  local = next(iter(train_dataset(data_dir, catalog, cfg.data,
                                  batch_size=cfg.train.batch_size, seed=0)))
  batch = mesh_lib.global_batch(local, mesh)
  grad_fn = make_grad_fn(graphdef, cfg.loss, mesh, sh)
  rng = jax.random.key_data(jax.random.key(1))
  (loss, (terms, _)), grads = grad_fn(state["params"], state["rest"], batch, rng, state["step"])
  step = make_train_step(graphdef, tx, cfg.loss, mesh, sh, learning_rate(cfg.train))
  new_state, _ = step(state, batch)
  assert len(batch["tokens"].sharding.device_set) == len(devices)
  return jax.device_get((loss, terms, grads, (new_state["params"], new_state["rest"])))


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
