"""The embedded default data set: a deterministic synthetic product catalog.

Every item has five latent attributes; the two modalities show complementary
subsets of them, so a recommender must use both to model users well:

  attribute  values                                              image  text
  category   shirt dress shoe hat bag scarf                        yes   yes
  colour     red orange yellow green blue purple pink black        yes   yes
  pattern    solid striped dotted checkered gradient               yes   no
  material   cotton wool leather silk denim linen                  no    yes
  style      casual formal sporty vintage modern                   no    yes

Images (render.py) draw the category as a silhouette filled with the colour
and pattern; descriptions (text.py) name category, colour, material and style
through synonyms and never mention the pattern.

Users have latent preferences over the values of every attribute type (a few
strongly liked values, the rest near zero) plus a shared taste for popular
items. The true logit is

  logit(u, i) = sum_a pref[u, a, value_a(i)] + beta * logpop(i) + quality(i)

with Zipf-like log-popularity and small item-specific noise. Each user's
interactions are a sample without replacement from softmax(logit / T)
(Gumbel-top-k), shuffled, then split: last 10% test, previous 10% valid (at
least one each), the rest train. `Catalog.oracle_scores` holds the logits.

With `impressions` > 0 the catalog is labelled (loss.pointwise): each
interaction is a click (label 1), and each user is also shown `impressions`
other items, drawn from softmax(logit / (2 T)) (a recommender that half
follows the user's taste), each clicked with probability
sigmoid(logit - the logits' 90th percentile). A clicked impression is one
more positive; an unclicked one a label-0 row that no implicit term sees.
Impressions are split per user like the interactions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.data import catalog as catalog_lib
from mmjax.data import render
from mmjax.data import text
from mmjax.errors import MmjaxError

# Attribute type -> value names; item_attrs hold indices into these tuples.
VOCAB: dict[str, tuple[str, ...]] = {
    "category": tuple(render.SHAPES),
    "colour": tuple(render.PALETTE),
    "pattern": tuple(render.PATTERNS),
    "material": tuple(text.SYNONYMS["material"]),
    "style": tuple(text.SYNONYMS["style"]),
}
IMAGE_ATTRS = ("category", "colour", "pattern")
TEXT_ATTRS = text.TEXT_ATTRS

# Preference model scales, chosen so the oracle ranking clearly beats
# popularity while popularity still beats random (see tests).
_LIKE_WEIGHT = 1.6      # logit bonus of a liked attribute value
_PREF_NOISE = 0.3       # std of the other values' weights
_POP_BETA = 0.4         # weight of Zipf log-popularity
_QUALITY_NOISE = 0.3    # std of the item-specific logit offset
_TEMPERATURE = 0.7      # sampling temperature over logits
_MIN_PER_USER = 10      # fewest interactions of a user (if the mean allows)
_CLICK_QUANTILE = 90    # impressions above this logit percentile mostly clicked


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Size and seed of a synthetic catalog; equal specs give equal data."""
  num_items: int = 2000
  num_users: int = 1000
  image_size: int = 32
  interactions_per_user: int = 30  # mean; min 10 (or the mean if smaller)
  seed: int = 0
  impressions: int = 0   # labelled impressions per user; 0: an unlabelled catalog


def generate(spec: SyntheticSpec) -> catalog_lib.Catalog:
  """Builds the catalog for `spec`, deterministically from `spec.seed`."""
  _check_spec(spec)
  # One independent stream per concern, so e.g. changing num_users leaves
  # item images and texts unchanged.
  rng = {name: np.random.default_rng([spec.seed, i]) for i, name in
         enumerate(("items", "images", "text", "users", "sample", "impressions"))}
  n = spec.num_items
  attrs = {a: rng["items"].integers(0, len(v), n).astype(np.int32)
           for a, v in VOCAB.items()}
  images = render.render_items(
      attrs["category"], attrs["colour"], attrs["pattern"], spec.image_size,
      rng["images"])
  texts = text.describe_all(attrs, rng["text"])
  logits = _true_logits(attrs, spec.num_users, rng["items"], rng["users"])
  interactions, split = _sample_interactions(
      logits, spec.interactions_per_user, rng["sample"])
  labels = None
  if spec.impressions:
    interactions, split, labels = _with_impressions(
        logits, interactions, split, spec.impressions, rng["impressions"])
  return catalog_lib.Catalog(
      item_text=texts,
      item_images=images,
      interactions=interactions,
      split=split,
      num_users=spec.num_users,
      num_items=n,
      item_attrs=attrs,
      oracle_scores=logits,
      labels=labels,
  ).validate()


def _check_spec(spec):
  for field in ("num_items", "num_users", "image_size",
                "interactions_per_user", "seed", "impressions"):
    value = getattr(spec, field)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise MmjaxError(f"SyntheticSpec.{field} must be an int, got {value!r}")
  if spec.num_users < 1:
    raise MmjaxError(f"SyntheticSpec.num_users must be >= 1, "
                     f"got {spec.num_users}")
  if spec.image_size < 8:
    raise MmjaxError(f"SyntheticSpec.image_size must be >= 8, "
                     f"got {spec.image_size}")
  # Each user needs >= 3 interactions (train/valid/test), and sampling without
  # replacement needs room: counts are capped at half the catalog.
  if not 3 <= spec.interactions_per_user <= spec.num_items // 2:
    raise MmjaxError(
        f"SyntheticSpec.interactions_per_user must be in [3, num_items // 2 = "
        f"{spec.num_items // 2}], got {spec.interactions_per_user}")
  # Impressions avoid the user's interactions (at most half the catalog),
  # and each user needs one train, valid and test impression.
  if spec.impressions and not 3 <= spec.impressions <= spec.num_items // 2:
    raise MmjaxError(
        f"SyntheticSpec.impressions must be 0 or in [3, num_items // 2 = "
        f"{spec.num_items // 2}], got {spec.impressions}")


def _true_logits(attrs, num_users, item_rng, user_rng):
  """(U, N) float32 true preference logits."""
  n = len(attrs["category"])
  # Zipf-like popularity over a random item order, centred.
  rank = item_rng.permutation(n)
  logpop = -np.log1p(rank)
  logpop -= logpop.mean()
  quality = item_rng.normal(0, _QUALITY_NOISE, n)
  logits = np.broadcast_to(_POP_BETA * logpop + quality, (num_users, n)).copy()
  for a, values in VOCAB.items():
    k = len(values)
    pref = user_rng.normal(0, _PREF_NOISE, (num_users, k))
    # Every user strongly likes one value of each type, some a second one;
    # per-type importance varies so users weigh modalities differently.
    importance = user_rng.uniform(0.4, 1.4, (num_users, 1))
    liked = user_rng.integers(0, k, (num_users, 2))
    has_second = user_rng.random(num_users) < 0.35
    rows = np.arange(num_users)
    pref[rows, liked[:, 0]] += _LIKE_WEIGHT * importance[:, 0]
    pref[rows[has_second], liked[has_second, 1]] += (
        _LIKE_WEIGHT * importance[has_second, 0])
    logits += pref[:, attrs[a]]
  return logits.astype(np.float32)


def _sample_interactions(logits, mean_count, rng):
  """Samples, shuffles and splits each user's interactions.

  Returns:
    (M, 2) int32 (user, item) rows grouped by user, and (M,) int8 split ids;
    within a user, rows run train, valid, test (the later, the more recent).
  """
  num_users, n = logits.shape
  low = min(_MIN_PER_USER, mean_count)
  counts = np.clip(rng.poisson(mean_count, num_users), low, n // 2)
  kmax = int(counts.max())
  # Gumbel-top-k: the k largest of logit/T + Gumbel noise are a sample of k
  # items without replacement from softmax(logit / T).
  scores = logits / _TEMPERATURE + rng.gumbel(size=logits.shape)
  top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
  top_scores = np.take_along_axis(scores, top, axis=1)
  top = np.take_along_axis(top, np.argsort(-top_scores, axis=1), axis=1)
  # Random order among each user's first counts[u] samples; the order decides
  # the split, so it must not follow the (preference-sorted) sample order.
  valid = np.arange(kmax)[None, :] < counts[:, None]
  keys = np.where(valid, rng.random((num_users, kmax)), np.inf)
  top = np.take_along_axis(top, np.argsort(keys, axis=1), axis=1)

  pos = np.broadcast_to(np.arange(kmax), top.shape)[valid]
  split = _split(pos, np.repeat(counts, counts))
  users = np.repeat(np.arange(num_users), counts)
  interactions = np.stack([users, top[valid]], axis=1).astype(np.int32)
  return interactions, split


def _split(pos, count):
  """Split ids of the rows at positions `pos` of users with `count` rows:
  last 10% test, the 10% before valid (at least one each), the rest train."""
  num_held = np.maximum(1, count // 10)
  split = np.full(pos.shape, catalog_lib.TRAIN, np.int8)
  split[pos >= count - 2 * num_held] = catalog_lib.VALID
  split[pos >= count - num_held] = catalog_lib.TEST
  return split


def _with_impressions(logits, interactions, split, k, rng):
  """The interactions (label 1) and k labelled impressions per user, rows
  ordered by user, then split, interactions before impressions.

  Returns (M', 2) int32 rows, (M',) int8 split ids, (M',) float32 labels.
  """
  num_users, n = logits.shape
  shown_scores = logits / (2 * _TEMPERATURE) + rng.gumbel(size=logits.shape)
  shown_scores[interactions[:, 0], interactions[:, 1]] = -np.inf
  shown = np.argpartition(-shown_scores, k - 1, axis=1)[:, :k]
  shown = np.take_along_axis(shown, np.argsort(rng.random(shown.shape), 1), 1)
  threshold = np.percentile(logits, _CLICK_QUANTILE)
  p_click = 1.0 / (1.0 + np.exp(threshold - np.take_along_axis(logits, shown, 1)))
  clicked = rng.random(shown.shape) < p_click
  users = np.repeat(np.arange(num_users), k)
  rows = np.concatenate([interactions, np.stack([users, shown.ravel()], 1)])
  splits = np.concatenate([
      split, _split(np.tile(np.arange(k), num_users), np.full(users.shape, k))])
  labels = np.concatenate([np.ones(len(interactions)), clicked.ravel()])
  order = np.lexsort((splits, rows[:, 0]))   # Stable: by user, then split.
  return (rows[order].astype(np.int32), splits[order],
          labels[order].astype(np.float32))
