"""Exact top-k queries by the data's own ids, shared by both kinds of model.

`recommend`, `similar` and `seen` take users' and items' own ids (a SKU, a
user name; the dense ints for data without them) and answer with `Scored`
rows that carry the dense index and the own id. Ranking is exact: every item
is scored and a user's seen items (all splits) are masked. Many users are
ranked in batches whose score matrix stays bounded (`recommend_batches`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mmjax.data import ids
from mmjax.errors import MmjaxError
from mmjax.eval.metrics import pad_lists, topk_from_embeddings


@dataclasses.dataclass(frozen=True)
class Scored:
  """One result row: an item (its dense index), its score, its text and its
  own id (the data's, e.g. a SKU; the dense index for data without ids)."""
  item: int
  score: float
  text: str
  id: str | int


# Scores held at once while ranking users in batches (users x items floats).
_SCORE_BUDGET = 1 << 25


class Queries:
  """recommend / similar / seen by the data's own ids, ranked exactly (every
  item scored, seen items masked). Subclasses give num_users, num_items,
  item_text, scoring_vectors, _similar_vectors (unit rows), _interactions
  ((M, 2) dense user, item pairs) and _id_maps (users', items' IdMap)."""

  @functools.cached_property
  def user_map(self) -> ids.IdMap:
    """The users' own ids <-> dense user indices."""
    return self._id_maps[0]

  @functools.cached_property
  def item_map(self) -> ids.IdMap:
    """The items' own ids <-> dense item indices."""
    return self._id_maps[1]

  @functools.cached_property
  def _seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
    """(indptr (U+1,), items) of every user's interactions, oldest first."""
    pairs = self._interactions
    order = np.argsort(pairs[:, 0], kind="stable")
    indptr = np.searchsorted(pairs[order, 0], np.arange(self.num_users + 1))
    return indptr, pairs[order, 1].astype(np.int32)

  def _seen(self, index: int) -> np.ndarray:
    indptr, items = self._seen_csr
    return items[indptr[index]:indptr[index + 1]]

  def seen(self, user) -> np.ndarray:
    """Dense indices of every item `user` interacted with (all splits),
    oldest first."""
    return self._seen(self.user_map.index(user))

  def recommend(self, user=None, k: int = 10, *, users=None):
    """Top-k unseen items by the model's score: a list of `Scored` for
    `user`, or one such list per user of `users` (ranked together)."""
    if (user is None) == (users is None):
      raise MmjaxError("recommend takes one of user= or users=")
    if users is None:
      index = self.user_map.index(user)
      self._check_k(k, self.num_items - len(np.unique(self._seen(index))))
      return self._rank_users(np.asarray([index]), k)[0]
    if isinstance(users, (str, bytes)):
      raise MmjaxError(f"users= takes a list of user ids, got {users!r}")
    self._check_k(k, self.num_items)
    return self._rank_users(self.user_map.indices(users), k)

  def _rank_users(self, indices, k) -> list[list[Scored]]:
    return [[self._scored(i, s) for i, s in zip(top, scores) if i >= 0]
            for _, top, scores in self.recommend_batches(k, indices)]

  def recommend_batches(self, k: int, users=None, batch_users: int | None = None):
    """Yields (user index, (k,) item indices, (k,) scores) for every user (or
    the dense `users`), ranked `batch_users` at a time (default: a bounded
    score matrix). A user with fewer than k unseen items gets -1 after them."""
    self._check_k(k, self.num_items)
    u, v = self.scoring_vectors
    users = np.arange(self.num_users) if users is None else np.asarray(users)
    indptr, _ = self._seen_csr
    # One exclusion width for all batches (a power of two): one compile.
    width = 1 << int(max(1, np.diff(indptr).max(initial=1)) - 1).bit_length()
    batch = batch_users or max(1, min(1024, _SCORE_BUDGET // max(
        self.num_items, width)))
    for lo in range(0, len(users), batch):
      block = users[lo:lo + batch]
      seen = [self._seen(i) for i in block]
      top = topk_from_embeddings(u[block], v, pad_lists(seen, width=width), k,
                                 batch_size=batch)
      scores = np.einsum("bkd,bd->bk", v[top].astype(np.float32),
                         u[block].astype(np.float32))
      # Seen items (score -inf) come last, after a user's unseen ones.
      unseen = self.num_items - np.asarray([len(np.unique(s)) for s in seen])
      top = np.where(np.arange(k)[None] < unseen[:, None], top, -1)
      yield from zip(block.tolist(), top, scores)

  def similar(self, item, k: int = 10) -> list[Scored]:
    """The k items whose item vectors are nearest (cosine) to `item`'s."""
    index = self.item_map.index(item)
    self._check_k(k, self.num_items - 1)
    v = self._similar_vectors
    return self._top(v[index], v, np.asarray([index]), k)

  def _top(self, query, gallery, exclude, k) -> list[Scored]:
    exclude = np.asarray(exclude, np.int32).reshape(1, -1)
    if not exclude.size:
      exclude = np.full((1, 1), -1, np.int32)   # -1 pads: nothing excluded.
    top = topk_from_embeddings(query[None], gallery, exclude, k)[0]
    scores = gallery[top].astype(np.float32) @ query.astype(np.float32)
    return [self._scored(i, s) for i, s in zip(top, scores)]

  def _scored(self, index, score) -> Scored:
    return Scored(int(index), float(score), self.item_text[index],
                  self.item_map.raw(index))

  @staticmethod
  def _check_k(k: int, available: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
        or not 1 <= k <= available:
      raise MmjaxError(f"k={k} must be in [1, {available}] (the items available)")
