"""MMRec's LightGCN (src/models/lightgcn.py), IDs only.

  (users, items) = mean of E, A E, ..., A^n_layers E over the normalized
                   user-item graph A, E = [user_emb; item_emb] (Xavier-uniform)
  loss = BPR(u.i+, u.i-) + reg_weight * EmbLoss(ego rows of u, i+, i-)

BPRLoss is -log(1e-10 + sigmoid(.)), as MMRec's. Scores are dot products.
"""

from __future__ import annotations

import dataclasses

import jax

from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import common as C


@dataclasses.dataclass(frozen=True)
class LightGCN(C.ZooModel):
  name = "lightgcn"
  n_layers: int = 2
  reg_weight: float = 1e-4

  def init(self, key) -> dict:
    ku, ki = jax.random.split(key)
    d = self.embedding_size
    return dict(user_emb=C.xavier_uniform(ku, (self.num_users, d)),
                item_emb=C.xavier_uniform(ki, (self.num_items, d)))

  def vectors(self, params, g):
    x = jax.numpy.concatenate([params["user_emb"], params["item_emb"]])
    return C.split_nodes(graph_lib.layer_mean(x, g.ui, self.n_layers), self.num_users)

  def loss(self, params, g, batch, key):
    del key
    users, items = self.vectors(params, g)
    u, p, n = users[batch.users], items[batch.items], items[batch.negatives]
    mf = C.bpr(C.row_dot(u, p), C.row_dot(u, n), batch.valid, gamma=1e-10)
    reg = C.emb_loss(batch.valid, params["user_emb"][batch.users],
                     params["item_emb"][batch.items],
                     params["item_emb"][batch.negatives])
    loss = mf + self.reg_weight * reg
    return loss, dict(loss=loss, bpr=mf, reg=reg)
