"""MMRec's BM3 (src/models/bm3.py; Zhou et al., "Bootstrap Latent
Representations for Multi-modal Recommendation").

  (users, items) = LightGCN layer mean (n_layers) over the user-item graph;
                   items += item_emb
  online  = predictor(.) (an nn.Linear), targets = dropout(stop_gradient(.))
  loss    = (1 - cos(online u, target i)) + (1 - cos(online i, target u))
            + reg_weight * EmbLoss(all users, all items)
            + cl_weight * sum_m [(1 - cos(pred(W_m f_m)[i], target i))
                                 + (1 - cos(pred(W_m f_m)[i], dropout(W_m f_m)[i]))]

No negatives (MMRec's `use_neg_sampling: False`); the feature tables f_m
train; scores are predictor(u) . predictor(i).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import common as C


def _dropout(key, x, rate: float):
  """F.dropout in training mode: zero with probability `rate`, scale the rest."""
  if rate <= 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


@dataclasses.dataclass(frozen=True)
class BM3(C.ZooModel):
  name = "bm3"
  negatives = False
  n_layers: int = 1
  reg_weight: float = 0.1
  cl_weight: float = 2.0
  dropout: float = 0.3

  def init(self, key) -> dict:
    ku, ki, kp, kf = jax.random.split(key, 4)
    d = self.embedding_size
    keys = jax.random.split(kf, max(len(self.feature_dims), 1))
    return dict(
        user_emb=C.xavier_uniform(ku, (self.num_users, d)),
        item_emb=C.xavier_uniform(ki, (self.num_items, d)),
        predictor=C.linear_init(kp, d, d, weight="xavier_normal"),
        trs=[C.linear_init(k, dim, d, weight="xavier_normal")
             for k, dim in zip(keys, self.feature_dims)])

  def init_features(self, params: dict, features: tuple) -> dict:
    return dict(params, feat=[jnp.asarray(f) for f in features])

  def _forward(self, params, g):
    x = jnp.concatenate([params["user_emb"], params["item_emb"]])
    users, items = C.split_nodes(graph_lib.layer_mean(x, g.ui, self.n_layers),
                                 self.num_users)
    return users, items + params["item_emb"]

  def vectors(self, params, g):
    users, items = self._forward(params, g)
    pred = params["predictor"]
    return C.linear(pred, users), C.linear(pred, items)

  def loss(self, params, g, batch, key):
    users_all, items_all = self._forward(params, g)
    pred, drop = params["predictor"], self.dropout
    keys = jax.random.split(key, 2 + 2 * len(params["trs"]))
    u_target = _dropout(keys[0], jax.lax.stop_gradient(users_all), drop)[batch.users]
    i_target = _dropout(keys[1], jax.lax.stop_gradient(items_all), drop)[batch.items]
    u_online = C.linear(pred, users_all)[batch.users]
    i_online = C.linear(pred, items_all)[batch.items]
    mean = lambda x: C.masked_mean(x, batch.valid)
    ui = (1 - mean(C.cosine(u_online, i_target))) + (1 - mean(C.cosine(i_online, u_target)))
    reg = C.emb_loss(None, users_all, items_all)
    cl = jnp.zeros((), jnp.float32)
    for m, (table, trs) in enumerate(zip(params["feat"], params["trs"])):
      f_online = C.linear(trs, table)
      f_target = _dropout(keys[2 + m], jax.lax.stop_gradient(f_online), drop)
      f_pred = C.linear(pred, f_online)[batch.items]
      cl = cl + (1 - mean(C.cosine(f_pred, i_target)))
      cl = cl + (1 - mean(C.cosine(f_pred, f_target[batch.items])))
    loss = ui + self.reg_weight * reg + self.cl_weight * cl
    return loss, dict(loss=loss, bootstrap=ui, reg=reg, cl=cl)
