"""The composed model: shapes, gradients of the one objective, item memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.data import store
from mmjax.data.features import TextTokenizer
from mmjax.data.pipeline import train_dataset
from mmjax.models.model import DataShapes, build_model
from mmjax import mesh as mesh_lib
from mmjax.train.optimizer import learning_rate, make_optimizer
from mmjax.train.step import (TERMS, init_state, make_loss_fn, make_train_step,
                              state_shardings)


@pytest.fixture(scope="module")
def setup(data_dir):
  from tiny import tiny_config
  cfg = tiny_config()
  cfg.model.image.kind = "cnn"
  cfg.model.fusion.kind = "cross_attention"
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), cfg.data.max_text_len)
  shapes = DataShapes.of(catalog, tok, cfg.data.max_text_len)
  batch = next(iter(train_dataset(data_dir, catalog, cfg.data, batch_size=16, seed=0,
                                   co_items=cfg.loss.co_item > 0)))
  return cfg, shapes, {k: jnp.asarray(v) for k, v in batch.items()}


def test_shapes(setup):
  cfg, shapes, b = setup
  model = build_model(cfg.model, shapes, seed=0)
  out = model.encode_items(b["tokens"], b["mask"], b["image"], b["item_id"])
  for k in ("z_text", "z_image", "item"):
    assert out[k].shape == (16, cfg.model.dim)
    np.testing.assert_allclose(jnp.linalg.norm(out[k], axis=-1), 1.0, atol=1e-4)
  assert model.encode_users(b["user_id"], b["history"]).shape == (16, cfg.model.dim)
  logits = model.mlm_logits(b["mlm_tokens"], b["mask"], b["mlm_positions"])
  assert logits.shape == (16, cfg.data.mlm_max_predictions, shapes.vocab_size)


def test_every_parameter_gets_a_gradient(setup):
  cfg, shapes, b = setup
  model = build_model(cfg.model, shapes, seed=0)
  # A filled memory (it starts empty), so the history MLP sees real input.
  memory = jax.random.normal(jax.random.key(1), model.rec.item_memory.shape)
  model.rec.item_memory[...] = memory / jnp.linalg.norm(memory, axis=-1, keepdims=True)
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  loss_fn = make_loss_fn(graphdef, cfg.loss)
  grad = jax.jit(jax.grad(loss_fn, has_aux=True))
  grads, (terms, memory) = grad(params, buffers, b, jax.random.key(0), jnp.int32(0))
  assert set(terms) >= set(TERMS)
  assert memory.shape == (shapes.num_items, cfg.model.dim)
  flat = nnx.to_flat_state(grads)
  for path, g in flat:
    g = np.asarray(g[...] if hasattr(g, "__getitem__") and not isinstance(g, jax.Array) else g)
    assert np.isfinite(g).all(), path
    assert np.abs(g).max() > 0, f"no gradient reaches {'.'.join(map(str, path))}"


def test_step_refreshes_the_item_memory(setup):
  cfg, shapes, b = setup
  mesh = mesh_lib.make_mesh(cfg.mesh)
  tx = make_optimizer(cfg.train)
  model = build_model(cfg.model, shapes, seed=0)
  expected = model.encode_items(b["tokens"], b["mask"], b["image"], b["item_id"])["item"]
  graphdef, state = init_state(model, tx, 0)
  sh = state_shardings(state, mesh)
  step = make_train_step(graphdef, tx, cfg.loss, mesh, sh, learning_rate(cfg.train))
  state, _ = step(jax.device_put(state, sh), mesh_lib.global_batch(
      {k: np.asarray(v) for k, v in b.items()}, mesh))
  memory = np.asarray(nnx.merge(graphdef, state["params"], state["buffers"]).rec.item_memory[...])
  ids = np.asarray(b["item_id"])
  _, first = np.unique(ids, return_index=True)
  dup = np.bincount(ids)[ids[first]] > 1
  np.testing.assert_allclose(memory[ids[first][~dup]], np.asarray(expected)[first][~dup],
                             atol=1e-5)
  untouched = np.setdiff1d(np.arange(shapes.num_items), ids)
  assert np.all(memory[untouched] == 0)
