"""In-batch contrastive losses: symmetric InfoNCE (CLIP) and SigLIP.

Both take two (B, d) embedding batches whose row i is a positive pair. The
embeddings are used as given: L2-normalise them beforehand (as CLIP/SigLIP do).

Shared pieces (also used by `recommendation.py`):
  * `pair_mask` says which (i, j) entries of the B x B logit matrix exist:
    padding rows/columns are dropped, and so are off-diagonal pairs showing the
    same item twice (they are duplicates of the positive, not negatives).
  * `diag_softmax_xent` is the masked softmax cross-entropy with the diagonal
    as target, averaged over the real rows.
"""
import jax
import jax.numpy as jnp

_MAX_SCALE = 100.  # CLIP clips its learned temperature at 100.


def same_item_mask(ids):
  """(B, B) bool: True at (i, j), i != j, where ids[i] == ids[j]."""
  same = ids[:, None] == ids[None, :]
  return same & ~jnp.eye(ids.shape[0], dtype=bool)


def pair_mask(batch_size, valid=None, ids=None):
  """(B, B) bool mask of logit entries that take part in the loss.

  allowed[i, j] = i == j  or  (valid[i] & valid[j] & ids[i] != ids[j]).

  The diagonal is always kept so that every softmax row has at least one entry
  (a padding row then has a finite, zero loss and is weighted out later).
  """
  allowed = jnp.ones((batch_size, batch_size), bool)
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    allowed &= valid[:, None] & valid[None, :]
  if ids is not None:
    allowed &= ~same_item_mask(ids)
  return allowed | jnp.eye(batch_size, dtype=bool)


def masked_mean(values, weights):
  """sum(values * w) / max(sum(w), 1): a mean that is 0 (not NaN) if empty."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.)


def _row_weights(batch_size, valid):
  if valid is None:
    return jnp.ones((batch_size,), jnp.float32)
  return jnp.asarray(valid, jnp.float32)


def diag_softmax_xent(logits, allowed, valid=None):
  """Mean over real rows i of logsumexp_{j allowed} logits[i, j] - logits[i, i].

  Masked entries are left out of the logsumexp (same as setting them to -inf).
  """
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=1, where=allowed)
  xent = lse - jnp.diagonal(logits)
  return masked_mean(xent, _row_weights(logits.shape[0], valid))


def infonce(z_a, z_b, log_scale, valid=None, ids=None):
  """Symmetric InfoNCE / CLIP loss (Radford et al. 2021).

    logits = min(exp(log_scale), 100) * z_a @ z_b.T
    loss = (CE_rows(logits) + CE_cols(logits)) / 2,  target = diagonal.

  Args:
    z_a, z_b: (B, d) embeddings; row i of each forms a positive pair.
    log_scale: scalar, log of the inverse temperature.
    valid: optional (B,) bool; False rows are padding, excluded as anchors
      and as negatives.
    ids: optional (B,) int item ids; pairs i != j with ids[i] == ids[j] are
      not used as negatives.
  Returns:
    float32 scalar.
  """
  scale = jnp.minimum(jnp.exp(jnp.asarray(log_scale, jnp.float32)), _MAX_SCALE)
  logits = scale * (z_a.astype(jnp.float32) @ z_b.astype(jnp.float32).T)
  allowed = pair_mask(logits.shape[0], valid, ids)  # Symmetric, so .T is same.
  return 0.5 * (diag_softmax_xent(logits, allowed, valid)
                + diag_softmax_xent(logits.T, allowed.T, valid))


def siglip(z_a, z_b, log_t, bias, valid=None, ids=None):
  """Pairwise sigmoid loss (Zhai et al. 2023, SigLIP).

    logits = exp(log_t) * z_a @ z_b.T + bias
    labels = +1 on the diagonal, -1 elsewhere
    loss = -sum_{i,j} log sigmoid(labels * logits) / B

  With `valid`, only pairs of real rows are summed and B is the number of real
  rows; with `ids`, same-item off-diagonal pairs are dropped (see `infonce`).
  """
  t = jnp.exp(jnp.asarray(log_t, jnp.float32))
  logits = t * (z_a.astype(jnp.float32) @ z_b.astype(jnp.float32).T) + bias
  b = logits.shape[0]
  labels = 2. * jnp.eye(b, dtype=jnp.float32) - 1.
  rows = _row_weights(b, valid)
  # The diagonal of a padding row must go too (pair_mask always keeps it).
  weights = pair_mask(b, valid, ids) * rows[:, None] * rows[None, :]
  loglik = jax.nn.log_sigmoid(labels * logits)
  return -jnp.sum(loglik * weights) / jnp.maximum(jnp.sum(rows), 1.)
