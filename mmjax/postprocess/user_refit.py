"""After training: refit the user vectors against the final item vectors.

Training learns users through the tower (pooled history + MLP) with an
in-batch sampled softmax, logQ-corrected, scored against item vectors that
moved every step (and `postprocess.item_id_scales` / `item_id_clusters` may
then change the item vectors once more). Once the item vectors are final,
each user's preference can be fit to them directly, by the full-softmax
likelihood of the user's train items over the whole catalog:

    score(u, i) = (t_u + w_u) . v_i + b_i  =  [t_u + w_u, 1] . [v_i, b_i]

- t_u, v_i: the model's scoring vectors (temperature and item bias in);
- w_u: a per-user offset, L2-penalized (penalty * |w|^2 per user, the
  likelihood summed per user), so a user with few train items stays near
  the tower's vector;
- b_i: a per-item score offset shared by all users (not penalized): the
  popularity the full softmax implies, which the logQ-corrected in-batch
  loss only estimates.

Full-batch Adam for `steps` steps from w = 0, b = 0; users are processed in
chunks with their (chunk, N) logits recomputed in the backward pass, so
memory is O(chunk * N) and time O(steps * U * N * dim).
Post-processing tries each penalty of `postprocess.user_refit_penalties`,
with the tower itself first (it wins ties), and keeps the best on valid
recall@20 (`postprocess.choose.evaluate_user_refits`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.train.atomic import atomic_write

TOWER = "tower"        # The label of the candidate without a refit.
LEARNING_RATE = 0.05
CHUNK = 1024           # Users per chunk of logits.
FILE = "user_refit.npz"  # In the workdir, when a refit was chosen.


def label(penalty: float | None) -> str:
  return TOWER if penalty is None else f"refit:{penalty:g}"


def refit(users: np.ndarray, items: np.ndarray, histories: np.ndarray,
          penalty: float, steps: int, chunk: int = CHUNK
          ) -> tuple[np.ndarray, np.ndarray]:
  """(users', items'), (U, D + 1) and (N, D + 1), whose dot products are the
  refit scores.

  users: (U, D) and items: (N, D) scoring vectors (u . v is the model's
  score); histories: (U, H) each user's train item ids, -1 = padding.
  """
  users = np.asarray(users, np.float32)
  items = np.asarray(items, np.float32)
  histories = np.asarray(histories, np.int32)
  if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
    raise ValueError(f"users {users.shape} and items {items.shape} must be (U, D) "
                     "and (N, D)")
  if histories.shape[0] != users.shape[0]:
    raise ValueError(f"{histories.shape[0]} histories for {users.shape[0]} users")
  if histories.size and histories.max() >= items.shape[0]:
    raise ValueError(f"history item id {histories.max()} >= {items.shape[0]} items")
  if penalty <= 0 or steps < 1:
    raise ValueError(f"penalty={penalty} must be > 0 and steps={steps} >= 1")
  n = users.shape[0]
  chunk = max(1, min(chunk, n))
  pad = -n % chunk
  u = np.pad(users, ((0, pad), (0, 0)))
  h = np.pad(histories, ((0, pad), (0, 0)), constant_values=-1)
  w, b = _fit(jnp.asarray(u), jnp.asarray(items), jnp.asarray(h),
              jnp.float32(penalty), steps=int(steps), chunk=chunk)
  w = np.asarray(w)[:n]
  ones = np.ones((n, 1), np.float32)
  return (np.concatenate([users + w, ones], 1),
          np.concatenate([items, np.asarray(b)[:, None]], 1))


@functools.partial(jax.jit, static_argnames=("steps", "chunk"))
def _fit(users, items, histories, penalty, *, steps, chunk):
  num_chunks, dim = users.shape[0] // chunk, users.shape[1]
  as_chunks = lambda x: x.reshape((num_chunks, chunk) + x.shape[1:])
  u_c, h_c = as_chunks(users), as_chunks(histories)
  num_users = jnp.maximum(jnp.sum(jnp.any(histories >= 0, axis=1)), 1)

  @jax.checkpoint
  def chunk_nll(w, u, h, b):
    scores = (u + w) @ items.T + b
    positives = jnp.take_along_axis(scores, jnp.maximum(h, 0), axis=1)
    nll = jax.nn.logsumexp(scores, axis=1, keepdims=True) - positives
    return jnp.sum(jnp.where(h >= 0, nll, 0.0))

  def loss(p):
    def body(total, xs):
      return total + chunk_nll(*xs, p["b"]), None
    total, _ = jax.lax.scan(body, jnp.float32(0.0), (as_chunks(p["w"]), u_c, h_c))
    return (total + penalty * jnp.sum(p["w"] ** 2)) / num_users

  opt = optax.adam(LEARNING_RATE)

  def step(carry, _):
    p, s = carry
    updates, s = opt.update(jax.grad(loss)(p), s)
    return (optax.apply_updates(p, updates), s), None

  p = dict(w=jnp.zeros((num_chunks * chunk, dim), jnp.float32),
           b=jnp.zeros((items.shape[0],), jnp.float32))
  (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
  return p["w"], p["b"]


def save(workdir: str, users: np.ndarray, items: np.ndarray, penalty: float) -> None:
  """The chosen refit, for `mmjax.load`: the users' vectors and the items'
  score offsets (the items' other columns are the model's own vectors)."""
  with atomic_write(os.path.join(workdir, FILE), "wb") as f:
    np.savez(f, users=np.asarray(users, np.float32),
             item_bias=np.asarray(items, np.float32)[:, -1],
             penalty=np.float32(penalty))


def load(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """(users (U, D + 1), item_bias (N,)) as `save` wrote them."""
  with np.load(os.path.join(workdir, FILE)) as f:
    return f["users"], f["item_bias"]


def apply(saved: tuple[np.ndarray, np.ndarray], items: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
  """(users', items') scoring vectors from `load`'s arrays and the model's
  item scoring vectors (N, D)."""
  users, item_bias = saved
  if users.shape[1] != items.shape[1] + 1 or item_bias.shape[0] != items.shape[0]:
    raise ValueError(f"refit users {users.shape} / item offsets {item_bias.shape} do "
                     f"not fit items {items.shape}")
  return users, np.concatenate([items, item_bias[:, None].astype(items.dtype)], 1)


def describe(report: dict) -> str:
  """One line for the printed summary."""
  best = report["label"]
  v, t = (report["recall_at_20"][s] for s in ("valid", "test"))
  line = f"user vectors: {best} (valid recall@20 {v[best]:.4f}, test {t[best]:.4f}"
  if best != TOWER:
    line += f"; tower {v[TOWER]:.4f} / {t[TOWER]:.4f}"
  return line + ")"
