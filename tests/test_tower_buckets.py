"""The text tower's length buckets: the widths that minimise padding, the
per-step draws, the sampled softmax's weights and the encoding per bucket."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.text_tower import (
  Bucket,
  TextTower,
  TowerInputs,
  bucket_widths,
  draw,
  log_weights,
  make_plan,
)


def _padded(lengths, widths):
  w = np.asarray(widths)
  return int(sum(w[np.searchsorted(w, n)] for n in lengths))


@pytest.mark.parametrize("seed", range(6))
def test_bucket_widths_are_the_least_padding_of_all_choices(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 14, size=rng.integers(5, 40))
  values = np.unique(lengths)
  for buckets in (1, 2, 3):
    widths = bucket_widths(lengths, buckets)
    assert widths == sorted(widths) and widths[-1] == lengths.max()
    assert len(widths) <= buckets
    best = min(_padded(lengths, list(inner) + [values[-1]])
               for k in range(min(buckets, len(values)))
               for inner in itertools.combinations(values[:-1], k))
    assert _padded(lengths, widths) == best


def test_plan_draws_in_proportion_and_never_leaves_a_bucket_out():
  lengths = np.array([3] * 500 + [6] * 300 + [12] * 195 + [40] * 5)
  plan = make_plan(lengths, 4, 64)
  assert [b.width for b in plan] == [3, 6, 12, 40]
  assert [b.size for b in plan] == [500, 300, 195, 5]
  assert [b.start for b in plan] == [0, 500, 800, 995]
  assert sum(b.draws for b in plan) == 64
  assert [b.draws for b in plan] == [32, 19, 12, 1]   # 64 * size / N, the last raised to one.
  # More buckets than a step's items: as many buckets as items.
  assert len(make_plan(lengths, 4, 2)) == 2
  assert make_plan(lengths, 1, 10) == (Bucket(0, 1000, 40, 10),)


def test_draws_come_from_their_buckets():
  lengths = np.random.default_rng(0).integers(2, 20, size=300)
  by_length = jnp.asarray(np.argsort(lengths, kind="stable"))
  plan = make_plan(lengths, 3, 30)
  rows = np.asarray(draw(jax.random.key(1), by_length, plan))
  start, low = 0, 0
  for b in plan:
    got = lengths[rows[start:start + b.draws]]
    assert ((got > low) & (got <= b.width)).all()
    start, low = start + b.draws, b.width


def test_the_weighted_negatives_estimate_the_sum_over_all_items():
  """The sampled softmax's sum: unbiased with the buckets' weights, biased
  without them (the draws over-represent the small bucket)."""
  rng = np.random.default_rng(0)
  n, negatives = 400, 48
  lengths = np.concatenate([np.full(390, 4), np.full(10, 30)])
  scores = np.where(lengths > 4, 3.0, 0.0) + rng.normal(0, 0.1, n)   # Long texts score high.
  plan = make_plan(lengths, 2, 16)
  assert [b.draws for b in plan] == [15, 1]
  by_length = jnp.asarray(np.argsort(lengths, kind="stable"))
  w = log_weights(plan, n, negatives) + np.log(n / negatives)
  assert np.exp(w).sum() == pytest.approx(n, rel=1e-5)   # Constant scores: exactly N.

  @jax.jit
  def estimate(key):
    a, b = jax.random.split(key)
    neg = jnp.concatenate([draw(a, by_length, plan),
                           jax.random.randint(b, (negatives - 16,), 0, n)])
    s = jnp.asarray(scores)[neg]
    return jnp.exp(s + w).sum(), jnp.exp(s).sum() * n / negatives

  weighted, plain = jax.vmap(estimate)(jax.random.split(jax.random.key(0), 20000))
  true = np.exp(scores).sum()
  assert float(weighted.mean()) == pytest.approx(true, rel=0.02)
  assert float(plain.mean()) > 1.1 * true


def test_encoding_per_bucket_equals_encoding_at_full_width():
  rng = np.random.default_rng(0)
  n, width, hidden = 24, 12, 16
  lengths = rng.integers(1, width + 1, size=n)
  lengths[0] = width
  mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
  inputs = TowerInputs(hidden=jnp.asarray(rng.normal(size=(n, width, hidden)), jnp.float32),
                       mask=jnp.asarray(mask),
                       by_length=jnp.asarray(np.argsort(lengths, kind="stable")))
  layer = dict(hidden=hidden, heads=2, mlp_dim=32, ln_eps=1e-12, activation="gelu")
  tower = TextTower(num_items=n, blocks=1, layer=layer, rngs=nnx.Rngs(0))
  plan = make_plan(lengths, 3, 9)
  assert len(plan) == 3 and plan[0].width < width
  rows = draw(jax.random.key(2), inputs.by_length, plan)
  vectors, fresh = tower(inputs, rows, plan)
  _, full = tower(inputs, rows)
  np.testing.assert_allclose(fresh, full, atol=1e-5)
  np.testing.assert_allclose(vectors[rows], fresh, atol=0)
