"""Recommendation losses on a batch of (user, positive item) pairs.

Every loss takes user embeddings u (B, d), the embeddings v (B, d) of each
user's positive item, and the item ids (B,). The other rows' items serve as
negatives, except copies of the user's own positive item (same id), which are
never treated as negatives. `valid` (B,) bool marks real rows; padding rows
contribute nothing, as anchors or as negatives.
"""
import jax
import jax.numpy as jnp

from mmjax.losses.contrastive import diag_softmax_xent
from mmjax.losses.contrastive import masked_mean
from mmjax.losses.contrastive import pair_mask


def _scores(u, v):
  return u.astype(jnp.float32) @ v.astype(jnp.float32).T


def _valid_or_ones(batch_size, valid):
  if valid is None:
    return jnp.ones((batch_size,), bool)
  return jnp.asarray(valid, bool)


def sampled_softmax_logq(u, v, item_ids, log_q, valid=None, temperature=1.0):
  """In-batch sampled softmax with logQ correction (Yi et al. 2019).

    logits[i, j] = u_i . v_j / temperature - log_q[j]
    loss = mean_i [ logsumexp_{j allowed} logits[i, j] - logits[i, i] ]

  Subtracting log_q (log sampling probability of the in-batch item, e.g. the
  log of its share of training interactions) removes the popularity bias of
  in-batch negatives. Entries j != i with item_ids[j] == item_ids[i] are
  masked out (-inf).
  """
  b = u.shape[0]
  log_q = jnp.asarray(log_q, jnp.float32)
  logits = _scores(u, v) / temperature - log_q[None, :]
  return diag_softmax_xent(logits, pair_mask(b, valid, item_ids), valid)


def bpr(u, v, item_ids, valid=None):
  """Bayesian personalised ranking (Rendle et al. 2009), in-batch negatives.

  User i's negative is the item of row i + 1 (cyclically):
    loss = -mean_i log sigmoid(u_i . v_i - u_i . v_{i+1})
  over pairs where both rows are real and item_ids[i + 1] != item_ids[i].
  """
  v_neg = jnp.roll(v, -1, axis=0)  # Row i gets v[i + 1].
  u = u.astype(jnp.float32)
  s_pos = jnp.sum(u * v.astype(jnp.float32), axis=-1)
  s_neg = jnp.sum(u * v_neg.astype(jnp.float32), axis=-1)
  ok = _valid_or_ones(u.shape[0], valid)
  ok = ok & jnp.roll(ok, -1) & (jnp.roll(item_ids, -1) != item_ids)
  return -masked_mean(jax.nn.log_sigmoid(s_pos - s_neg), ok)


def bce(u, v, item_ids, valid=None):
  """Binary cross-entropy on in-batch scores s = u @ v.T.

    loss = mean_i -log sigmoid(s_ii) + mean_{(i,j) neg} -log sigmoid(-s_ij)

  The negatives (i, j) are j != i, both rows real, item_ids[j] != item_ids[i].
  Each term is averaged on its own, so positives and negatives weigh the same
  in total however many negatives the batch holds (~B per positive).
  """
  s = _scores(u, v)
  b = s.shape[0]
  ok = _valid_or_ones(b, valid)
  pos = masked_mean(-jax.nn.log_sigmoid(jnp.diagonal(s)), ok)
  neg_mask = pair_mask(b, ok, item_ids) & ~jnp.eye(b, dtype=bool)
  neg = masked_mean(-jax.nn.log_sigmoid(-s), neg_mask)
  return pos + neg
