"""The tiny config every trainer test uses (importable from subprocesses)."""

from mmjax.config import default_config


def tiny_config():
  c = default_config()
  c.data.synthetic.num_items = 96
  c.data.synthetic.num_users = 48
  c.data.synthetic.image_size = 16
  c.data.synthetic.interactions_per_user = 12
  c.data.max_text_len = 16
  c.data.history_len = 4
  c.data.eval_history_len = 8
  c.data.num_threads = 1
  c.model.dim = 16
  c.model.text.update(hidden=16, layers=1, heads=2, mlp_dim=32)
  c.model.image.update(hidden=16, layers=1, heads=2, mlp_dim=32, patch_size=8,
                       cnn_widths=(8, 16))
  c.model.fusion.update(hidden=32, heads=2)
  c.loss.siglip = 0.1
  c.loss.bpr = 0.1
  c.loss.bce = 0.1
  c.loss.co_item = 0.1
  c.postprocess.item_id_scales = (0.5,)
  c.postprocess.item_id_clusters = (3,)
  c.postprocess.user_refit_penalties = (0.3, 3.0)
  c.postprocess.user_refit_steps = 20
  c.train.steps = 6
  c.train.batch_size = 16
  c.train.warmup_steps = 2
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.train.eval_batch_size = 32
  return c


def shapes_and_batch(config):
  """The model's DataShapes and the first train batch (numpy) of the catalog
  at config.data.dir."""
  import numpy as np
  from mmjax.data import store
  from mmjax.data.features import TextTokenizer
  from mmjax.data.pipeline import train_dataset
  from mmjax.models.model import DataShapes
  catalog = store.load_catalog(config.data.dir)
  tok = TextTokenizer(store.tokenizer_path(config.data.dir), config.data.max_text_len)
  shapes = DataShapes.of(catalog, tok, config.data.max_text_len)
  batch = next(iter(train_dataset(config.data.dir, catalog, config.data,
                                  batch_size=config.train.batch_size, seed=0,
                                  co_items=config.loss.co_item > 0)))
  return shapes, {k: np.asarray(v) for k, v in batch.items()}


def compiled_step(cfg, split, batch):
  """(graphdef, the jitted train step, its sharded state, the sharded batch)
  for cfg.loss and cfg.train, from a copy of the initial model `split`
  (graphdef, params, buffers): the step donates its state."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from mmjax import mesh as mesh_lib
  from mmjax.train.optimizer import learning_rate, make_optimizer
  from mmjax.train.step import init_state, make_train_step, state_shardings
  graphdef, params, buffers = split
  mesh, tx = mesh_lib.make_mesh(cfg.mesh), make_optimizer(cfg.train)
  model = nnx.merge(graphdef, *jax.tree.map(jnp.copy, (params, buffers)))
  graphdef, state = init_state(model, tx, 0)
  sh = state_shardings(state, mesh)
  step = make_train_step(graphdef, tx, cfg.loss, mesh, sh, learning_rate(cfg.train))
  return graphdef, step, jax.device_put(state, sh), mesh_lib.global_batch(batch, mesh)


def loss_grads(loss_cfg, split, batch):
  """{parameter path: its gradient} of the loss that `loss_cfg` weighs, at
  the initial model `split` (graphdef, params, buffers), one batch."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from mmjax.train.step import make_loss_fn
  graphdef, params, buffers = split
  loss_fn = make_loss_fn(graphdef, loss_cfg)
  grads, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(
      params, buffers, batch, None, jnp.int32(0))
  return {path: np.asarray(g[...]) for path, g in nnx.to_flat_state(grads)}
