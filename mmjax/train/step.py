"""The one fused train step: every loss term under a single value_and_grad.

The train state is a plain dict pytree {params, rest, opt_state, step, rng};
the model's graphdef is split off once and merged inside the jitted function
(the Flax NNX performance recipe), so the step is a pure function.
"""


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmjax.losses.alignment import coral, mmd
from mmjax.losses.contrastive import infonce, siglip
from mmjax.losses.mlm import masked_lm_loss
from mmjax.losses.recommendation import bce, bpr, sampled_softmax_logq
from mmjax.train import mesh as mesh_lib

CONTRASTIVE_TERMS = ("infonce", "siglip", "mmd", "coral", "mlm", "orthogonality")
REC_TERMS = ("softmax", "bpr", "bce")
TERMS = CONTRASTIVE_TERMS + REC_TERMS


def loss_terms(model, batch: dict, rngs: nnx.Rngs | None, loss_cfg) -> dict:
  """Every loss term (unweighted) for one batch; terms with weight 0 are skipped."""
  train = rngs is not None
  out = model.encode_items(batch["tokens"], batch["mask"], batch["image"],
                           batch["item_id"], deterministic=not train, rngs=rngs)
  z_t, z_i, ids = out["z_text"], out["z_image"], batch["item_id"]
  c = model.contrastive
  terms, extras = {}, {}
  if loss_cfg.infonce:
    terms["infonce"] = infonce(z_t, z_i, c.infonce_log_scale[...], ids=ids)
  if loss_cfg.siglip:
    terms["siglip"] = siglip(z_t, z_i, c.siglip_log_t[...], c.siglip_bias[...], ids=ids)
  if loss_cfg.mmd:
    terms["mmd"] = mmd(z_t, z_i)
  if loss_cfg.coral:
    terms["coral"] = coral(z_t, z_i)
  if loss_cfg.orthogonality:
    terms["orthogonality"] = model.orthogonality_penalty()
  if loss_cfg.mlm:
    logits = model.mlm_logits(batch["mlm_tokens"], batch["mask"],
                              batch["mlm_positions"], deterministic=not train,
                              rngs=rngs)
    terms["mlm"], extras["mlm_accuracy"] = masked_lm_loss(logits, batch["mlm_labels"])
  if any(loss_cfg[t] for t in REC_TERMS):
    u = model.encode_users(batch["user_id"], batch["history"])
    if train:
      extras["item_memory"] = model.rec.refreshed_memory(ids, out["item"])
    u, v = model.rec.scoring_vectors(u, out["item"], ids)
    if loss_cfg.softmax:
      terms["softmax"] = sampled_softmax_logq(u, v, ids, batch["log_q"])
    if loss_cfg.bpr:
      terms["bpr"] = bpr(u, v, ids)
    if loss_cfg.bce:
      terms["bce"] = bce(u, v, ids)
  return terms, extras


def weighted_total(terms: dict, loss_cfg, step) -> jax.Array:
  """Weighted sum; the recommendation terms wait for the pretrain phase."""
  joint = (step >= loss_cfg.pretrain_steps).astype(jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for name, value in terms.items():
    w = loss_cfg[name] * (joint if name in REC_TERMS else 1.0)
    total = total + w * value.astype(jnp.float32)
  return total


def make_loss_fn(graphdef, loss_cfg):
  def loss_fn(params, rest, batch, rng, step):
    model = nnx.merge(graphdef, params, rest)
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    terms, extras = loss_terms(model, batch, rngs, loss_cfg)
    memory = extras.pop("item_memory", None)
    return weighted_total(terms, loss_cfg, step), ({**terms, **extras}, memory)
  return loss_fn


def _with_memory(graphdef, params, rest, memory):
  """`rest` with the recommender's item memory replaced (if it has one)."""
  if memory is None:
    return rest
  model = nnx.merge(graphdef, params, rest)
  model.rec.item_memory[...] = memory
  return nnx.split(model, nnx.Param, ...)[2]


def init_state(model, tx, seed: int) -> tuple:
  """Splits the model once; returns (graphdef, state)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = dict(params=params, rest=rest, opt_state=tx.init(params),
               step=jnp.zeros((), jnp.int32),
               rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def state_shardings(state, mesh):
  """Parameters and optimizer state replicated (the default rule)."""
  return jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)


def make_train_step(graphdef, tx, loss_cfg, mesh, state_sharding, lr_schedule):
  """Returns the jitted step(state, batch) -> (state, metrics); state donated."""
  loss_fn = make_loss_fn(graphdef, loss_cfg)

  def step_fn(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    (loss, (terms, memory)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["rest"], batch, rng, step)
    rest = _with_memory(graphdef, state["params"], state["rest"], memory)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedule(step))
    new_state = dict(state, params=params, rest=rest, opt_state=opt_state,
                     step=step + 1)
    return new_state, metrics

  return jax.jit(
      step_fn,
      in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
      out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
      donate_argnums=(0,))


def make_grad_fn(graphdef, loss_cfg, mesh, state_sharding):
  """jitted (params, rest, batch, rng, step) -> ((loss, (terms, memory)), grads)."""
  loss_fn = make_loss_fn(graphdef, loss_cfg)
  rep = mesh_lib.replicated(mesh)
  return jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True),
      in_shardings=(state_sharding["params"], state_sharding["rest"],
                    mesh_lib.batch_sharding(mesh), rep, rep),
      out_shardings=rep)
