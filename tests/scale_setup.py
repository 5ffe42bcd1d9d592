"""Shared set-up of the scale tests: a tiny model's state and one batch on a
mesh, and its gradients / train steps (importable from subprocesses).

Every process reads the whole global batch stream and keeps its own rows, so
runs with any number of processes see identical global batches.
"""

import functools
import types

import jax
import numpy as np

from mmjax.data import store
from mmjax.data.features import TextTokenizer
from mmjax.data.pipeline import train_dataset
from mmjax.models.model import DataShapes, build_model
from mmjax import mesh as mesh_lib
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.step import (init_state, make_grad_fn, make_train_step,
                              state_shardings)
from tiny import tiny_config


def setup(cfg, data_dir, devices=None):
  """State (sharded by cfg.mesh.rules) and this process's batch, globalised."""
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), cfg.data.max_text_len)
  shapes = DataShapes.of(catalog, tok, cfg.data.max_text_len)
  tx = make_optimizer(cfg.train)
  graphdef, state = init_state(build_model(cfg.model, shapes, seed=0), tx, 0)
  shardings = state_shardings(state, mesh, cfg.mesh.rules)
  sync_processes("built")   # device_put checks across processes that they agree.
  data = iter(train_dataset(data_dir, catalog, cfg.data,
                            batch_size=cfg.train.batch_size, seed=0,
                            co_items=cfg.loss.co_item > 0))
  return types.SimpleNamespace(
      cfg=cfg, mesh=mesh, tx=tx, graphdef=graphdef, shardings=shardings,
      state=jax.device_put(state, shardings), data=data,
      batch=next_batch(data, mesh))


def sync_processes(name: str) -> None:
  """A barrier of all processes (none with one). Gloo gives up on a collective
  after 30 s without its peers, and on a busy machine the processes' model
  building and compiles drift apart by more than that."""
  if jax.process_count() > 1:
    from jax._src import distributed
    distributed.global_state.client.wait_at_barrier(f"scale_setup_{name}", 900_000)


def next_batch(data, mesh):
  """The next global batch, from this process's rows of it."""
  full, n, i = next(data), jax.process_count(), jax.process_index()
  return mesh_lib.global_batch(
      {k: v[i * len(v) // n:(i + 1) * len(v) // n] for k, v in full.items()}, mesh)


def grads(s):
  """((loss, (terms, memory)), grads) of s.batch, host arrays."""
  fn = make_grad_fn(s.graphdef, s.cfg.loss, s.mesh, s.shardings,
                    s.cfg.train.accum_steps)
  rng = jax.random.key_data(jax.random.key(1))
  return jax.device_get(fn(s.state["params"], s.state["buffers"], s.batch, rng,
                           s.state["step"]))


def train_steps(s, n: int):
  """Runs n train steps on the data stream; (new state, per-step metrics)."""
  step = make_train_step(s.graphdef, s.tx, s.cfg.loss, s.mesh, s.shardings,
                         learning_rate(s.cfg.train), s.cfg.train.accum_steps)
  state, metrics = jax.tree.map(lambda x: x.copy(), s.state), []
  step = step.lower(state, s.batch).compile()
  sync_processes("compiled")
  for i in range(n):
    batch = s.batch if i == 0 else next_batch(s.data, s.mesh)
    state, m = step(state, batch)
    metrics.append(m)
  return state, metrics


def tiny_f32_grads(data_dir: str):
  """(a fresh tiny f32 config, its grads(...)): the reference that several
  tests compare against, computed once per test process."""
  cfg = tiny_config()
  cfg.data.dir = data_dir
  return cfg, _cached_grads(data_dir)


@functools.lru_cache(maxsize=None)
def _cached_grads(data_dir: str):
  cfg = tiny_config()
  cfg.data.dir = data_dir
  return grads(setup(cfg, data_dir))


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def max_rel_diff(a, b) -> float:
  """Largest |a - b| / max(1, |a|): float reductions in another order move a large value
  (a gradient norm in the tens) by a few ulps, which an absolute bound would count as a change."""
  return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))
                          / np.maximum(1.0, np.abs(np.asarray(x, np.float32)))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
