"""Losses against plain NumPy loop implementations, plus gradient/properties."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import alignment
from mmjax.losses import contrastive
from mmjax.losses import mlm
from mmjax.losses import recommendation as rec

B, D = 8, 4
IDS = np.array([0, 1, 2, 1, 3, 0, 4, 5])  # Items 0 and 1 appear twice.
VALID = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)  # Last two rows: padding.
CASES = [(None, None), (VALID, None), (None, IDS), (VALID, IDS)]


def _normed(rng, n=B, d=D):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _allowed(i, j, valid, ids):
  """Reference pair rule: diagonal, or both real and not the same item."""
  if i == j:
    return True
  ok_valid = valid is None or (valid[i] and valid[j])
  return ok_valid and (ids is None or ids[i] != ids[j])


def _real(valid, n=B):
  return [i for i in range(n) if valid is None or valid[i]]


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


def _xent_rows(logits, valid, ids):
  """Mean over real rows of the diagonal-target CE, by loops."""
  vals = []
  for i in _real(valid, len(logits)):
    cand = [logits[i, j] for j in range(len(logits))
            if _allowed(i, j, valid, ids)]
    vals.append(math.log(sum(math.exp(c) for c in cand)) - logits[i, i])
  return float(np.mean(vals))


def _close(actual, expected):
  np.testing.assert_allclose(float(actual), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- contrastive


@pytest.mark.parametrize("valid,ids", CASES)
def test_infonce_matches_numpy(valid, ids):
  rng = np.random.default_rng(0)
  a, b = _normed(rng), _normed(rng)
  log_scale = math.log(5.)
  logits = 5. * a @ b.T
  want = 0.5 * (_xent_rows(logits, valid, ids)
                + _xent_rows(logits.T, valid, ids))
  got = contrastive.infonce(jnp.asarray(a), jnp.asarray(b), log_scale,
                            valid=valid, ids=ids)
  _close(got, want)


def test_infonce_scale_is_clipped_at_100():
  rng = np.random.default_rng(1)
  a, b = jnp.asarray(_normed(rng)), jnp.asarray(_normed(rng))
  _close(contrastive.infonce(a, b, 10.),
         float(contrastive.infonce(a, b, math.log(100.))))


def test_infonce_lower_for_aligned_pairs():
  rng = np.random.default_rng(2)
  a, b = jnp.asarray(_normed(rng)), jnp.asarray(_normed(rng))
  assert contrastive.infonce(a, a, math.log(10.)) < contrastive.infonce(
      a, b, math.log(10.))


@pytest.mark.parametrize("valid,ids", CASES)
def test_siglip_matches_numpy(valid, ids):
  rng = np.random.default_rng(3)
  a, b = _normed(rng), _normed(rng)
  logits = 10. * a @ b.T - 3.
  total = 0.
  for i in _real(valid):
    for j in _real(valid):
      if _allowed(i, j, valid, ids):
        total += _log_sigmoid((1. if i == j else -1.) * logits[i, j])
  want = -total / len(_real(valid))
  got = contrastive.siglip(jnp.asarray(a), jnp.asarray(b), math.log(10.), -3.,
                           valid=valid, ids=ids)
  _close(got, want)


def test_same_item_mask():
  got = np.asarray(contrastive.same_item_mask(jnp.array([7, 3, 7, 7])))
  want = np.array([[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 1, 0]])
  np.testing.assert_array_equal(got, want.astype(bool))


# ------------------------------------------------------------------ alignment


def _mmd_ref(x, y, sigmas=(0.5, 1.0, 2.0, 4.0, 8.0)):
  z = np.concatenate([x, y])
  p = len(z)
  s = sum(np.sum((z[i] - z[j]) ** 2) for i in range(p) for j in range(p)
          if i != j) / (p * (p - 1))
  k = lambda a, c: sum(np.exp(-np.sum((a - c) ** 2) / (2 * sg**2 * s))
                       for sg in sigmas)
  mean_k = lambda u, v: np.mean([[k(a, c) for c in v] for a in u])
  return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_mmd_matches_numpy():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(6, D)), rng.normal(size=(8, D)) + 0.5
  _close(alignment.mmd(jnp.asarray(x), jnp.asarray(y)), _mmd_ref(x, y))


def test_mmd_properties():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(16, D)))
  y = jnp.asarray(rng.normal(size=(16, D)))
  assert abs(float(alignment.mmd(x, x))) < 1e-6
  same = float(alignment.mmd(x, y))
  shifted = float(alignment.mmd(x, y + 2.))
  assert same >= -1e-6
  assert shifted > same and shifted > 0.05


def test_coral_matches_numpy_and_properties():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(7, D)), 2. * rng.normal(size=(9, D))
  diff = np.cov(x, rowvar=False) - np.cov(y, rowvar=False)  # Unbiased.
  _close(alignment.coral(jnp.asarray(x), jnp.asarray(y)),
         np.sum(diff**2) / (4 * D * D))
  assert abs(float(alignment.coral(jnp.asarray(x), jnp.asarray(x)))) < 1e-7


# ------------------------------------------------------------------------ mlm


def test_masked_lm_loss_matches_numpy():
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(2, 5, 6))
  labels = np.array([[-1, 3, -1, 0, -1], [5, -1, -1, -1, 2]])
  labels[0, 3] = np.argmax(logits[0, 3])  # At least one correct guess.
  nll, correct = [], []
  for b in range(2):
    for t in range(5):
      if labels[b, t] >= 0:
        row = logits[b, t]
        nll.append(math.log(np.sum(np.exp(row))) - row[labels[b, t]])
        correct.append(np.argmax(row) == labels[b, t])
  loss, acc = mlm.masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels))
  _close(loss, np.mean(nll))
  _close(acc, np.mean(correct))


def test_masked_lm_loss_nothing_masked():
  logits = jnp.ones((1, 3, 4))
  labels = -jnp.ones((1, 3), jnp.int32)
  loss, acc = mlm.masked_lm_loss(logits, labels)
  assert float(loss) == 0. and float(acc) == 0.
  g = jax.grad(lambda l: mlm.masked_lm_loss(l, labels)[0])(logits)
  assert np.all(np.isfinite(g))


# ------------------------------------------------------------- recommendation


@pytest.mark.parametrize("valid,ids", [(None, IDS), (VALID, IDS)])
def test_sampled_softmax_logq_matches_numpy(valid, ids):
  rng = np.random.default_rng(8)
  u, v = rng.normal(size=(B, D)), rng.normal(size=(B, D))
  log_q = np.log(rng.dirichlet(np.ones(B)))
  logits = u @ v.T / 0.5 - log_q[None, :]
  want = _xent_rows(logits, valid, ids)
  got = rec.sampled_softmax_logq(jnp.asarray(u), jnp.asarray(v), ids,
                                 jnp.asarray(log_q), valid=valid,
                                 temperature=0.5)
  _close(got, want)


@pytest.mark.parametrize("valid", [None, VALID])
def test_bpr_matches_numpy(valid):
  rng = np.random.default_rng(9)
  u, v = rng.normal(size=(B, D)), rng.normal(size=(B, D))
  ids = np.array([0, 1, 1, 2, 3, 0, 4, 0])  # Rows 1->2 and 7->0: same item.
  terms = []
  for i in _real(valid):
    j = (i + 1) % B
    if (valid is None or valid[j]) and ids[i] != ids[j]:
      terms.append(_log_sigmoid(u[i] @ v[i] - u[i] @ v[j]))
  got = rec.bpr(jnp.asarray(u), jnp.asarray(v), jnp.asarray(ids), valid=valid)
  _close(got, -np.mean(terms))


@pytest.mark.parametrize("valid", [None, VALID])
def test_bce_matches_numpy(valid):
  rng = np.random.default_rng(10)
  u, v = rng.normal(size=(B, D)), rng.normal(size=(B, D))
  s = u @ v.T
  pos = [-_log_sigmoid(s[i, i]) for i in _real(valid)]
  neg = [-_log_sigmoid(-s[i, j]) for i in _real(valid) for j in _real(valid)
         if i != j and IDS[i] != IDS[j]]
  got = rec.bce(jnp.asarray(u), jnp.asarray(v), jnp.asarray(IDS), valid=valid)
  _close(got, np.mean(pos) + np.mean(neg))


def test_co_item_infonce_matches_numpy():
  rng = np.random.default_rng(13)
  a, b = _normed(rng), _normed(rng)
  ids = np.array([0, 1, 2, 3, 4, 5, 6, 7])
  # Row 1's co-item is row 0's item (a true pair, not a negative for row 0);
  # rows 2 and 5 share a co-item; row 6 has none (-1: no anchor, no negative).
  co = np.array([1, 0, 9, 10, 11, 9, -1, 12])
  logits = a @ b.T / 0.2

  def allowed(i, j):
    if i == j:
      return True
    return co[i] >= 0 and co[j] >= 0 and ids[i] != co[j] and co[i] != co[j]

  def xent(x, rule):
    vals = [math.log(sum(math.exp(x[i, j]) for j in range(B) if rule(i, j))) - x[i, i]
            for i in range(B) if co[i] >= 0]
    return float(np.mean(vals))

  want = 0.5 * (xent(logits, allowed) + xent(logits.T, lambda i, j: allowed(j, i)))
  got = rec.co_item_infonce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(ids),
                            jnp.asarray(co), 0.2)
  _close(got, want)
  # Aligned pairs score lower than shuffled ones.
  aligned = rec.co_item_infonce(jnp.asarray(a), jnp.asarray(a), jnp.asarray(ids),
                                jnp.asarray(co), 0.2)
  assert float(aligned) < float(got)


# ------------------------------------------------------------------ gradients


def _all_losses(a, b):
  """Every loss, on the padded batch with duplicates, summed."""
  ids, valid = jnp.asarray(IDS), jnp.asarray(VALID)
  log_q = jnp.full((B,), -math.log(B))
  return (contrastive.infonce(a, b, 2., valid, ids)
          + contrastive.siglip(a, b, 2., -5., valid, ids)
          + alignment.mmd(a, b) + alignment.coral(a, b)
          + rec.sampled_softmax_logq(a, b, ids, log_q, valid)
          + rec.bpr(a, b, ids, valid) + rec.bce(a, b, ids, valid))


def test_gradients_finite():
  rng = np.random.default_rng(11)
  a, b = jnp.asarray(_normed(rng)), jnp.asarray(_normed(rng))
  ga, gb = jax.jit(jax.grad(_all_losses, argnums=(0, 1)))(a, b)
  assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
  assert np.any(ga != 0.)
  # Padding rows get no gradient from the masked losses.
  ids, valid = jnp.asarray(IDS), jnp.asarray(VALID)
  g_pad = jax.grad(lambda x: contrastive.infonce(x, b, 2., valid, ids)
                   + rec.bce(x, b, ids, valid))(a)
  np.testing.assert_array_equal(np.asarray(g_pad)[~VALID], 0.)


def test_all_padding_is_zero_not_nan():
  rng = np.random.default_rng(12)
  a, b = jnp.asarray(_normed(rng)), jnp.asarray(_normed(rng))
  none = jnp.zeros((B,), bool)
  ids = jnp.asarray(IDS)
  for loss in (contrastive.infonce(a, b, 2., none),
               contrastive.siglip(a, b, 2., -5., none),
               rec.bpr(a, b, ids, none), rec.bce(a, b, ids, none)):
    assert float(loss) == 0.


def test_mmd_traces_at_batches_past_int32_pair_counts():
  # 2 * 24000 points: the pair count 48000 * 47999 does not fit int32.
  x = jax.ShapeDtypeStruct((24000, 4), jnp.float32)
  out = jax.eval_shape(alignment.mmd, x, x)
  assert out.shape == () and out.dtype == jnp.float32
