"""The one fused train step: every loss term under a single value_and_grad.

The train state is a plain dict pytree {params, buffers, opt_state, step,
skipped, rng}. `buffers` are the model's variables that are not parameters
(the recommender's item-memory bank, RNG counts): carried from step to step,
never differentiated. The model's graphdef is split off once and merged
inside the jitted function (the Flax NNX performance recipe), so the step is
a pure function.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmjax.losses.alignment import coral, decorrelation, linear_align, mmd
from mmjax.losses.caption import caption_mean, caption_sums
from mmjax.losses.contrastive import infonce, siglip
from mmjax.losses.mlm import masked_lm_mean, masked_lm_sums
from mmjax.losses.sharded_contrastive import ring_infonce, ring_siglip
from mmjax.losses.recommendation import (bce, bpr, co_item_infonce, pointwise,
                                        sampled_softmax_logq)
from mmjax.models.aligners import l2_normalize
from mmjax.train import accumulate, guard
from mmjax import mesh as mesh_lib
from mmjax.errors import MmjaxError

CONTRASTIVE_TERMS = ("infonce", "siglip", "mmd", "coral", "mlm", "orthogonality")
USER_TERMS = ("softmax", "bpr", "bce")   # Score users against items.
# The interaction-driven terms; they wait for the pretrain phase to end.
REC_TERMS = USER_TERMS + ("co_item",)
TERMS = CONTRASTIVE_TERMS + REC_TERMS
# Off by default (so not among the TERMS a default config logs); they read
# the projections before L2 normalization.
RAW_ALIGN_TERMS = ("linear_align", "decorrelation")
SELF_SUPERVISED_TERMS = ("caption",) + RAW_ALIGN_TERMS
# Off by default too: explicit labels (loss.pointwise), on the user vectors,
# waiting for the pretrain phase like the REC_TERMS.
LABEL_TERMS = ("pointwise",)


def loss_terms(model, batch: dict, rngs: nnx.Rngs | None, loss_cfg,
               mesh=None) -> dict:
  """Every loss term (unweighted) for one batch; terms with weight 0 are skipped."""
  out = encode_batch(model, batch, rngs, loss_cfg)
  return batch_terms(model, out, batch, loss_cfg, train=rngs is not None, mesh=mesh)


def encode_batch(model, batch: dict, rngs: nnx.Rngs | None, loss_cfg) -> dict:
  """The encoders' per-example outputs: row i depends on example i only, so
  micro-batches of it can be computed apart (GradCache, accumulate.py)."""
  train = rngs is not None
  raw = any(loss_cfg[t] for t in RAW_ALIGN_TERMS)
  hidden = bool(raw or loss_cfg.caption)
  out = model.encode_items(batch["tokens"], batch["mask"], batch["image"],
                           batch["item_id"], deterministic=not train, rngs=rngs,
                           hidden=hidden)
  image_tokens = out.pop("image_tokens", None)
  if hidden and not raw:   # Only the decoder wanted the image tokens.
    del out["p_text"], out["p_image"]
  if loss_cfg.caption:
    if model.caption is None:
      raise MmjaxError(f"config.loss.caption={loss_cfg.caption} needs the caption "
                       "decoder: build the model with build_model(..., caption=True)")
    logits = model.caption_logits(batch["tokens"], batch["mask"], image_tokens,
                                  deterministic=not train, rngs=rngs)
    out["caption_nll"], out["caption_correct"] = caption_sums(
        logits, batch["tokens"], batch["mask"])
  if loss_cfg.mlm:
    logits = model.mlm_logits(batch["mlm_tokens"], batch["mask"],
                              batch["mlm_positions"], deterministic=not train,
                              rngs=rngs)
    out["mlm_nll"], out["mlm_correct"] = masked_lm_sums(logits, batch["mlm_labels"])
  if any(loss_cfg[t] for t in USER_TERMS + LABEL_TERMS):
    out["user"] = model.encode_users(batch["user_id"], batch["history"])
  if loss_cfg.co_item:
    out["co_content"] = model.encode_content(
        batch["co_tokens"], batch["co_mask"], batch["co_image"],
        deterministic=not train, rngs=rngs)["content"]
  return out


def _contrastive_fns(loss_cfg, mesh):
  """(infonce, siglip): dense, or sharded over `mesh` (config.loss.contrastive_impl)."""
  if loss_cfg.contrastive_impl == "dense" or mesh is None:
    return infonce, siglip
  kw = dict(mesh=mesh, chunk=loss_cfg.contrastive_chunk)
  return (functools.partial(ring_infonce, **kw), functools.partial(ring_siglip, **kw))


def batch_terms(model, out: dict, batch: dict, loss_cfg, *, train: bool,
                mesh=None) -> tuple[dict, dict]:
  """The loss terms from `encode_batch`'s outputs for the whole batch."""
  z_t, z_i, ids = out["z_text"], out["z_image"], batch["item_id"]
  c = model.contrastive
  infonce_fn, siglip_fn = _contrastive_fns(loss_cfg, mesh)
  terms, extras = {}, {}
  if loss_cfg.infonce:
    terms["infonce"] = infonce_fn(z_t, z_i, c.infonce_log_scale[...], ids=ids)
  if loss_cfg.siglip:
    terms["siglip"] = siglip_fn(z_t, z_i, c.siglip_log_t[...], c.siglip_bias[...],
                                ids=ids)
  if loss_cfg.mmd:
    terms["mmd"] = mmd(z_t, z_i)
  if loss_cfg.coral:
    terms["coral"] = coral(z_t, z_i)
  if loss_cfg.orthogonality:
    terms["orthogonality"] = model.orthogonality_penalty()
  # Batch statistics: on the global batch, as this runs inside the jitted step.
  if loss_cfg.linear_align:
    terms["linear_align"] = linear_align(out["p_text"], out["p_image"])
  if loss_cfg.decorrelation:
    terms["decorrelation"] = (decorrelation(out["p_text"])
                              + decorrelation(out["p_image"]))
  if loss_cfg.caption:
    terms["caption"], extras["caption_accuracy"] = caption_mean(
        out["caption_nll"], out["caption_correct"], batch["tokens"], batch["mask"])
  if loss_cfg.mlm:
    terms["mlm"], extras["mlm_accuracy"] = masked_lm_mean(
        out["mlm_nll"], out["mlm_correct"], batch["mlm_labels"])
  # Item-only rows (data.item_ssl_fraction) have no user: the recommendation
  # terms drop them, as anchors and as negatives. Absent, every row counts.
  rec_rows = batch.get("is_interaction")
  if loss_cfg.co_item:
    terms["co_item"] = co_item_infonce(
        l2_normalize(out["content"]), l2_normalize(out["co_content"]), ids,
        batch["co_item_id"], loss_cfg.co_item_temperature, valid=rec_rows)
  if any(loss_cfg[t] for t in USER_TERMS + LABEL_TERMS):
    u = out["user"]
    if train:   # Every row's item vector is a fresh memory entry, users or not.
      extras["item_memory"] = model.rec.refreshed_memory(ids, out["item"])
    u, v = model.rec.scoring_vectors(u, out["item"], ids)
    if loss_cfg.softmax:
      terms["softmax"] = sampled_softmax_logq(u, v, ids, batch["log_q"],
                                              valid=rec_rows)
    if loss_cfg.bpr:
      terms["bpr"] = bpr(u, v, ids, valid=rec_rows)
    if loss_cfg.bce:
      terms["bce"] = bce(u, v, ids, valid=rec_rows)
    if loss_cfg.pointwise:
      terms["pointwise"] = _pointwise(model, u, v, batch, loss_cfg)
  return terms, extras


def _pointwise(model, u, v, batch: dict, loss_cfg) -> jax.Array:
  """loss.pointwise on the labelled rows (impressions in, item-only rows out)."""
  head = model.rec.pointwise
  if head is None or "label" not in batch:
    raise MmjaxError(f"config.loss.pointwise={loss_cfg.pointwise} needs labelled "
                     "data: a label column (data.raw.columns.label) or the "
                     "synthetic catalog's impressions (data.synthetic.impressions)")
  return pointwise(head(u, v), batch["label"], head.kind, valid=batch["is_labelled"])


def weighted_total(terms: dict, loss_cfg, step) -> jax.Array:
  """Weighted sum; the recommendation terms wait for the pretrain phase."""
  joint = (step >= loss_cfg.pretrain_steps).astype(jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for name, value in terms.items():
    w = loss_cfg[name] * (joint if name in REC_TERMS + LABEL_TERMS else 1.0)
    total = total + w * value.astype(jnp.float32)
  return total


def make_encode_and_head(graphdef, loss_cfg, mesh=None):
  """The objective in two parts, for GradCache (accumulate.py):
  encode(params, buffers, batch, rng) -> per-example outputs, and
  head(params, buffers, outputs, batch, rng, step) -> (loss, (metrics, memory))."""
  def encode(params, buffers, batch, rng):
    rngs = nnx.Rngs(dropout=rng) if rng is not None else None
    return encode_batch(nnx.merge(graphdef, params, buffers), batch, rngs, loss_cfg)

  def head(params, buffers, out, batch, rng, step):
    terms, extras = batch_terms(nnx.merge(graphdef, params, buffers), out, batch,
                                loss_cfg, train=rng is not None, mesh=mesh)
    memory = extras.pop("item_memory", None)
    return weighted_total(terms, loss_cfg, step), ({**terms, **extras}, memory)
  return encode, head


def make_loss_fn(graphdef, loss_cfg, mesh=None):
  encode, head = make_encode_and_head(graphdef, loss_cfg, mesh)
  def loss_fn(params, buffers, batch, rng, step):
    out = encode(params, buffers, batch, rng)
    return head(params, buffers, out, batch, rng, step)
  return loss_fn


def make_value_and_grad(graphdef, loss_cfg, mesh=None, accum_steps: int = 1):
  """(params, buffers, batch, rng, step) -> ((loss, (metrics, memory)), grads);
  with accum_steps > 1 the encoders run in micro-batches (GradCache)."""
  if accum_steps == 1:
    return jax.value_and_grad(make_loss_fn(graphdef, loss_cfg, mesh), has_aux=True)
  encode, head = make_encode_and_head(graphdef, loss_cfg, mesh)
  return accumulate.gradcache_value_and_grad(encode, head, accum_steps, mesh)


def with_item_memory(graphdef, params, buffers, memory):
  """`buffers` with the recommender's item memory replaced (if it has one)."""
  if memory is None:
    return buffers
  model = nnx.merge(graphdef, params, buffers)
  model.rec.item_memory[...] = memory
  return nnx.split(model, nnx.Param, ...)[2]


def init_state(model, tx, seed: int) -> tuple:
  """Splits the model once; returns (graphdef, state)."""
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  state = dict(params=params, buffers=buffers, opt_state=tx.init(params),
               step=jnp.zeros((), jnp.int32),
               skipped=jnp.zeros((), jnp.int32),  # Non-finite steps (guard.py).
               rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def state_shardings(state, mesh, rules=()):
  """Parameters and optimizer state by `rules` (config.mesh.rules; the
  optimizer's moments share their parameter's path, so they follow it); the
  everything else replicated."""
  shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
  for key in ("params", "opt_state"):
    shardings[key] = mesh_lib.rule_shardings(state[key], mesh, rules)
  return shardings


def _guarded_step(graphdef, tx, loss_cfg, mesh, lr_schedule, accum_steps):
  """The pure step(state, batch) -> (state, metrics), non-finite steps skipped."""
  grad_fn = make_value_and_grad(graphdef, loss_cfg, mesh, accum_steps)

  def step_fn(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    (loss, (terms, memory)), grads = grad_fn(
        state["params"], state["buffers"], batch, rng, step)
    buffers = with_item_memory(graphdef, state["params"], state["buffers"], memory)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedule(step))
    new_state = dict(state, params=params, buffers=buffers, opt_state=opt_state,
                     step=step + 1)
    return new_state, metrics

  return guard.skip_nonfinite(step_fn)


def make_train_step(graphdef, tx, loss_cfg, mesh, state_sharding, lr_schedule,
                    accum_steps: int = 1):
  """Returns the jitted step(state, batch) -> (state, metrics); state donated."""
  return jax.jit(
      _guarded_step(graphdef, tx, loss_cfg, mesh, lr_schedule, accum_steps),
      in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh)),
      out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
      donate_argnums=(0,))


def make_multi_step(graphdef, tx, loss_cfg, mesh, state_sharding, lr_schedule,
                    accum_steps: int = 1):
  """Returns the jitted steps(state, batches) -> (state, metrics): the train
  step run over k batches stacked on a leading axis (`lax.scan`), in one
  call; each metric comes back stacked, (k,). The same updates as k calls
  of `make_train_step` (config.train.steps_per_call).

  Why: every call of a compiled program is a dispatch and a host sync, and
  on CPU it also maps, faults in and unmaps the program's temporary buffer;
  one call per k steps does that once.
  """
  body = _guarded_step(graphdef, tx, loss_cfg, mesh, lr_schedule, accum_steps)
  return jax.jit(
      lambda state, batches: jax.lax.scan(body, state, batches),
      in_shardings=(state_sharding, mesh_lib.stacked_batch_sharding(mesh)),
      out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
      donate_argnums=(0,))


def make_grad_fn(graphdef, loss_cfg, mesh, state_sharding, accum_steps: int = 1):
  """jitted (params, buffers, batch, rng, step) -> ((loss, (terms, memory)), grads)."""
  rep = mesh_lib.replicated(mesh)
  return jax.jit(
      make_value_and_grad(graphdef, loss_cfg, mesh, accum_steps),
      in_shardings=(state_sharding["params"], state_sharding["buffers"],
                    mesh_lib.batch_sharding(mesh), rep, rep),
      out_shardings=rep)
