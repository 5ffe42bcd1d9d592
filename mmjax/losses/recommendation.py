"""Recommendation losses on a batch of (user, positive item) pairs.

Every loss takes user embeddings u (B, d), the embeddings v (B, d) of each
user's positive item, and the item ids (B,). The other rows' items serve as
negatives, except copies of the user's own positive item (same id), which are
never treated as negatives. `valid` (B,) bool marks real rows; padding rows
contribute nothing, as anchors or as negatives.

`pointwise` is the exception: one prediction per row against an explicit
label (loss.pointwise), no in-batch negatives.
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


def co_item_infonce(a, b, item_ids, co_item_ids, temperature, valid=None):
  """Symmetric InfoNCE between the content vectors of two items of one user.

  Row i pairs item_ids[i] (content a_i) with co_item_ids[i] (content b_i),
  another train item of the same user; -1 marks a row without one. With
  unit-norm a, b:

    logits[i, j] = a_i . b_j / temperature
    loss = (CE_rows(logits) + CE_cols(logits)) / 2,  target = diagonal,

  averaged over rows with a co-item. Item-to-item co-occurrence is the
  collaborative signal in a form the content towers can learn from on both
  sides (the user tower pools a stop-gradient item memory): items that the
  same users pick come to share their vectors' directions, so the towers
  learn which words and which image features users choose by, e.g. that two
  synonyms mean one material. An off-diagonal pair (i, j) is not a negative
  where b_j shows row i's own item, or b_j's item is b_i's.
  """
  ok = _valid_or_ones(a.shape[0], valid) & (co_item_ids >= 0)
  logits = _scores(a, b) / temperature
  n = a.shape[0]
  off = ~jnp.eye(n, dtype=bool)
  allowed = pair_mask(n, ok) & ~(off & (item_ids[:, None] == co_item_ids[None, :]))
  allowed &= ~(off & (co_item_ids[:, None] == co_item_ids[None, :]))
  return 0.5 * (diag_softmax_xent(logits, allowed, ok)
                + diag_softmax_xent(logits.T, allowed.T, ok))


def pointwise(pred, labels, kind: str, valid=None):
  """Mean over valid rows of BCE with logits (`kind` "binary": 0/1 labels)
  or of the squared error ("rating") of the predictions (B,)."""
  pred, labels = pred.astype(jnp.float32), labels.astype(jnp.float32)
  if kind == "binary":
    per_row = (-labels * jax.nn.log_sigmoid(pred)
               - (1.0 - labels) * jax.nn.log_sigmoid(-pred))
  else:
    per_row = jnp.square(pred - labels)
  return masked_mean(per_row, _valid_or_ones(pred.shape[0], valid))
