"""Compiled programs of the feature-graph trainer: init, one whole epoch and
the evaluation embeddings.

Every program handles R independent runs at once (seeds x grid values):
the train state carries a leading run axis and the programs are `jax.vmap`s
of the single-run functions. The hyper-parameters a grid may vary (`HPARAMS`)
are traced per-run arrays, not constants, so one compile serves them all.

An epoch is one `lax.scan` over the batches of an on-device permutation of
the train pairs; negatives are drawn on device.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.losses.contrastive import infonce, masked_mean
from mmjax.models import graph as graph_lib
from mmjax.models import text_tower
from mmjax.models.aligners import l2_normalize
from mmjax.models.feature_graph import FeatureGraphRecommender
from mmjax.models.text_tower import TowerInputs

# Config key -> name of a per-run (vmappable) hyper-parameter.
HPARAMS = {
    "train.lr": "lr",
    "train.weight_decay": "weight_decay",
    "model.rec.temperature": "temperature",
    "loss.softmax": "softmax",
    "loss.bpr": "bpr",
    "loss.infonce": "align",
    "feature_graph.content_weight": "content_weight",
    "feature_graph.tower_lr": "tower_lr",
}


def hparams(config) -> dict[str, float]:
  from mmjax.config import get
  return {name: float(get(config, key)) for key, name in HPARAMS.items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Constants:
  """Device arrays every run shares (not vmapped)."""
  features: tuple
  ui_graph: graph_lib.Edges | None
  item_graph: graph_lib.Edges | None
  train_pairs: jax.Array      # (M, 2) int32.
  eval_users: jax.Array       # (E,) users ranked at evaluation.
  tower: TowerInputs | None = None   # The text tower's frozen token states.


@dataclasses.dataclass(frozen=True)
class Shape:
  """Static choices: they change the program, so they cannot be vmapped."""
  num_users: int
  num_items: int
  num_train: int
  batch_size: int
  negatives: int
  layers: int
  item_layers: int
  tower_plan: tuple = ()  # text_tower.Bucket per length group (): no tower.

  @property
  def num_batches(self) -> int:
    return -(-self.num_train // self.batch_size)

  @property
  def tower_items(self) -> int:
    """Items the text tower encodes per step: the first of the negatives."""
    return sum(b.draws for b in self.tower_plan)


def build_model(fcfg, dim: int, num_users: int, num_items: int, feature_dims,
                key, tower=None) -> FeatureGraphRecommender:
  """`tower`: a `text_tower.Prepared` (its pretrained weights and memory are
  loaded), or None."""
  model = FeatureGraphRecommender(
      num_users=num_users, num_items=num_items, feature_dims=tuple(feature_dims),
      dim=dim, encoder=fcfg.encoder, fusion=fcfg.fusion, init_std=fcfg.init_std,
      tower=dict(blocks=tower.blocks, layer=tower.layer) if tower else None,
      rngs=nnx.Rngs(key))
  if tower is not None:
    nnx.update(model.text_tower, jax.tree.map(jnp.asarray, tower.state))
  return model


def _loss(model, c: Constants, hp, s: Shape, pairs, valid, neg):
  """Sampled softmax (and/or BPR) over S uniform negatives shared by the
  batch, plus modality <-> ID alignment.

  The negatives' part of a softmax depends on the user only, so it is
  computed once per user, U x S instead of B x S scores: full-batch-sized
  batches stay cheap. log(N / S) makes the S-sample sum an estimate of the
  sum over all N items (uniform proposal).
  """
  tower_vectors = fresh = None
  if model.text_tower is not None:
    # The first negatives: the alignment below sees the same rows fresh.
    tower_vectors, fresh = model.text_tower(c.tower, neg[:s.tower_items], s.tower_plan)
  users, items, zs = model(c.features, c.ui_graph, c.item_graph, layers=s.layers,
                           item_layers=s.item_layers,
                           content_weight=hp["content_weight"],
                           tower_vectors=tower_vectors)
  uid, iid = pairs[:, 0], pairs[:, 1]
  t = hp["temperature"]
  users = l2_normalize(users)
  neg_logits = users @ l2_normalize(items[neg]).T / t                # (U, S)
  pos = jnp.sum(users[uid] * l2_normalize(items[iid]), -1) / t       # (B,)
  weighted = neg_logits
  if s.tower_plan:   # The tower's rows are drawn per length bucket.
    weighted = neg_logits + text_tower.log_weights(s.tower_plan, s.num_items, s.negatives)
  neg_lse = jax.nn.logsumexp(weighted, axis=1) + jnp.log(s.num_items / s.negatives)
  softmax = masked_mean(jnp.logaddexp(pos, neg_lse[uid]) - pos, valid)
  # BPR with one uniform negative per row (MMRec's sampling).
  one = neg_logits[uid, jnp.arange(len(uid)) % s.negatives]
  bpr = -masked_mean(jax.nn.log_sigmoid(pos - one), valid)
  # Alignment of each modality with the item-ID embedding, on the uniformly
  # drawn items: unbiased by popularity, and S x S logits instead of B x B.
  align = jnp.zeros((), jnp.float32)
  ids = l2_normalize(model.item_embed(neg))
  for z in zs:
    align += infonce(l2_normalize(z[neg]), ids, model.align_log_scale[...], ids=neg)
  total = hp["softmax"] * softmax + hp["bpr"] * bpr + hp["align"] * align
  return total, (dict(loss=total, softmax=softmax, bpr=bpr, align=align), fresh)


def _init(graphdef_holder, fcfg, dim, s: Shape, feature_dims, tower, key):
  model = build_model(fcfg, dim, s.num_users, s.num_items, feature_dims, key, tower)
  graphdef, params = nnx.split(model)
  graphdef_holder.append(graphdef)
  # Raw key data, not a typed key: the state is checkpointed as plain arrays.
  return dict(params=params, opt=optax.scale_by_adam().init(params),
              rng=jax.random.key_data(jax.random.fold_in(key, 1)))


def epoch_order(key, s: Shape) -> jax.Array:
  """(num_batches, batch_size) train-pair indices: a permutation of the
  padded range, so every pair is seen once; indices >= num_train are padding.

  One batch per epoch needs no shuffle (its loss is a mean over all pairs).
  Otherwise one argsort of random bits: `jax.random.permutation` sorts
  twice, and the sort is a large part of a short epoch.
  """
  n = s.num_batches * s.batch_size
  if s.num_batches == 1:
    return jnp.arange(n, dtype=jnp.int32)[None]
  order = jnp.argsort(jax.random.bits(key, (n,), jnp.uint32)).astype(jnp.int32)
  return order.reshape(s.num_batches, s.batch_size)


def negatives(key, s: Shape, c: Constants) -> jax.Array:
  """(S,) a step's negatives: uniform over the items; with a text tower, its
  rows first, drawn per length bucket (`text_tower.draw`)."""
  if not s.tower_plan:
    return jax.random.randint(key, (s.negatives,), 0, s.num_items)
  tower_key, key = jax.random.split(key)
  rest = jax.random.randint(key, (s.negatives - s.tower_items,), 0, s.num_items)
  return jnp.concatenate([text_tower.draw(tower_key, c.tower.by_length, s.tower_plan),
                          rest])


def _epoch(graphdef, s: Shape, c: Constants, state, hp):
  rng, perm_key, neg_key = jax.random.split(jax.random.wrap_key_data(state["rng"]), 3)
  order = epoch_order(perm_key, s)
  neg_keys = jax.random.split(neg_key, s.num_batches)
  adam = optax.scale_by_adam()

  def step(carry, xs):
    params, opt = carry
    idx, key = xs
    valid = idx < s.num_train
    pairs = c.train_pairs[jnp.minimum(idx, s.num_train - 1)]
    neg = negatives(key, s, c)
    grad_fn = jax.grad(lambda p: _loss(nnx.merge(graphdef, p), c, hp, s, pairs,
                                       valid, neg), has_aux=True)
    grads, (metrics, fresh) = grad_fn(params)
    updates, opt = adam.update(grads, opt, params)
    rows = neg[:s.tower_items]

    # AdamW with a traced (per-run) learning rate and decay; the pretrained
    # tower's own rate. The tower's memory takes the rows encoded this step.
    def update(path, p, u):
      name = jax.tree_util.keystr(path)
      if "'text_tower'" in name and "'memory'" in name:
        return p.at[rows].set(jax.lax.stop_gradient(fresh))
      lr = hp["tower_lr"] if "'text_tower'" in name else hp["lr"]
      return p - lr * (u + hp["weight_decay"] * p)
    params = jax.tree_util.tree_map_with_path(update, params, updates)
    return (params, opt), metrics

  (params, opt), metrics = jax.lax.scan(step, (state["params"], state["opt"]),
                                        (order, neg_keys))
  return (dict(params=params, opt=opt, rng=jax.random.key_data(rng)),
          jax.tree.map(jnp.mean, metrics))


def _embed(graphdef, s: Shape, c: Constants, params, hp):
  """Unit user vectors of the evaluated users (E, dim), unit items (N, dim)."""
  users, items = _embed_all(graphdef, s, c, params, hp)
  return users[c.eval_users], items


def _embed_all(graphdef, s: Shape, c: Constants, params, hp):
  """Unit vectors of every user (U, dim) and item (N, dim): the served scores."""
  model = nnx.merge(graphdef, params)
  users, items, _ = model(c.features, c.ui_graph, c.item_graph, layers=s.layers,
                          item_layers=s.item_layers,
                          content_weight=hp["content_weight"])
  return l2_normalize(users), l2_normalize(items)


def cpu_compiler_options() -> dict | None:
  """XLA:CPU options for these programs, None elsewhere.

  XLA:CPU hands reductions to YNNPACK fusions; for the per-pair row dots
  over gathered embeddings (B x dim -> B) that path is several times slower
  than XLA's own loops (docs/experiments.md). Dot fusions stay with YNNPACK.
  """
  if jax.default_backend() != "cpu":
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


class Programs:
  """init / epoch / evaluation embeddings for R runs, each one jitted program."""

  def __init__(self, fcfg, dim: int, shape: Shape, feature_dims, mesh, tower=None):
    opts = cpu_compiler_options()
    holder = []
    init_one = functools.partial(_init, holder, fcfg, dim, shape, tuple(feature_dims),
                                 tower)
    # Run states are replicated; init and epoch agree on it, so the epoch
    # program compiles once.
    rep = NamedSharding(mesh, P())
    self.init = jax.jit(jax.vmap(init_one), out_shardings=rep, compiler_options=opts)
    jax.eval_shape(init_one, jax.random.key(0))   # Fills holder.
    graphdef = holder[0]
    epoch = functools.partial(_epoch, graphdef, shape)
    self.epoch = jax.jit(jax.vmap(epoch, in_axes=(None, 0, 0)), donate_argnums=1,
                         out_shardings=rep, compiler_options=opts)
    self.embed = jax.jit(jax.vmap(functools.partial(_embed, graphdef, shape),
                                  in_axes=(None, 0, 0)), compiler_options=opts)
    self.embed_all = jax.jit(jax.vmap(functools.partial(_embed_all, graphdef, shape),
                                      in_axes=(None, 0, 0)), compiler_options=opts)
    self.shape = shape


def stack_hparams(runs: list[dict]) -> dict:
  return {k: jnp.asarray(np.array([r[k] for r in runs], np.float32)) for k in runs[0]}
