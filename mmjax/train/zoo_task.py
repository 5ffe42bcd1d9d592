"""The MMRec zoo models (mmjax.models.mmrec_zoo) as a `loop.Task`:
MMRec's training, on device.

An epoch is one jitted `lax.scan` over MMRec's batches: the train pairs
shuffled, `train_batch_size` at a time, the last batch short (padded here,
the padding masked out of every mean); for models with negative sampling one
negative per pair, drawn uniformly from the items that occur in train and
redrawn while it is one of the user's train items (MMRec's `_sample_neg_ids`).
The shuffle is NumPy's, seeded by the state's RNG, on the host (XLA:CPU's
sort of the pairs cost more than the rest of a short epoch). The negatives
do not depend on the parameters, so all of an epoch's are drawn before its
first step, in a few large draws. FREEDOM's per-epoch edge pruning runs at
the start of the epoch program, and the epoch runs under one check that the
drawn graph fits its gather layout (sparse.if_fits).
Adam at MMRec's learning rate (its default scheduler, [1.0, 50], is
constant). One run per task: the loop validates every `train.eval_every`
epochs, stops early and keeps the best state.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from mmjax.data.catalog import TRAIN
from mmjax.errors import MmjaxError
from mmjax.models import graph as graph_lib
from mmjax.models.mmrec_zoo import sparse
from mmjax.models.mmrec_zoo.common import Batch, Graphs, ZooModel
from mmjax.train.cost import scan_flops
from mmjax.train.feature_graph_trainer import data_fingerprint

MODEL_FILE = "zoo_model.json"
MAX_REDRAWS = 100   # Rounds: a user with every train item would redraw forever.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Sampler:
  """Each user's train items, sorted, as a CSR (start (U+1,), items (M,)),
  and the items that occur in train (MMRec draws negatives among them)."""
  start: jax.Array
  items: jax.Array
  pool: jax.Array
  # Binary-search steps that cover the longest user's items (static).
  steps: int = dataclasses.field(default=1, metadata=dict(static=True))

  @classmethod
  def from_pairs(cls, pairs: np.ndarray, num_users: int) -> "Sampler":
    pairs = np.unique(np.asarray(pairs, np.int64), axis=0)   # Sorted (u, i).
    start = np.searchsorted(pairs[:, 0], np.arange(num_users + 1))
    longest = int(np.diff(start).max(initial=0))
    return cls(jnp.asarray(start, jnp.int32), jnp.asarray(pairs[:, 1], jnp.int32),
               jnp.asarray(np.unique(pairs[:, 1]), jnp.int32),
               steps=max(1, longest.bit_length()))

  def is_train(self, users, items) -> jax.Array:
    """Whether each (user, item) is a train pair: a binary search per row
    within the user's sorted items."""
    lo, hi = self.start[users], self.start[users + 1]

    def body(_, bounds):
      lo, hi = bounds
      mid = (lo + hi) // 2
      less = self.items[jnp.minimum(mid, self.items.shape[0] - 1)] < items
      go = lo < hi
      return jnp.where(go & less, mid + 1, lo), jnp.where(go & ~less, mid, hi)

    # Unrolled: a few fused gathers, not a loop of tiny device calls.
    lo, _ = jax.lax.fori_loop(0, self.steps, body, (lo, hi), unroll=True)
    end = self.start[users + 1]
    return (lo < end) & (self.items[jnp.minimum(lo, self.items.shape[0] - 1)] == items)

  def draw(self, key, shape) -> jax.Array:
    """Items drawn uniformly from the pool."""
    return self.pool[jax.random.randint(key, shape, 0, self.pool.shape[0])]

  def negatives(self, key, users, room: int = 1024) -> jax.Array:
    """One negative per entry of `users` (any shape), MMRec's law: drawn
    uniformly from the pool, redrawn while it is a train item of its user.
    Every row gets a first draw and a spare redraw in two vectorized draws;
    the few rows still bad are then redrawn `room` at a time."""
    k_first, k_spare, key = jax.random.split(key, 3)
    flat = users.reshape(-1)
    neg = self.draw(k_first, flat.shape)
    neg = jnp.where(self.is_train(flat, neg), self.draw(k_spare, flat.shape), neg)
    bad = self.is_train(flat, neg)
    room = min(room, flat.shape[0])

    def cond(c):
      return (c[0] < MAX_REDRAWS) & jnp.any(c[2])

    def body(c):
      n, neg, bad, key = c
      key, k = jax.random.split(key)
      (rows,) = jnp.nonzero(bad, size=room, fill_value=flat.shape[0])
      new = self.draw(k, (room,))
      still = self.is_train(flat.at[rows].get(mode="fill", fill_value=0), new)
      return (n + 1, neg.at[rows].set(new, mode="drop"),
              bad.at[rows].set(still, mode="drop"), key)

    return jax.lax.while_loop(cond, body, (0, neg, bad, key))[1].reshape(users.shape)


@dataclasses.dataclass(frozen=True)
class Shape:
  num_train: int
  batch_size: int

  @property
  def num_batches(self) -> int:
    return -(-self.num_train // self.batch_size)


def epoch_order(rng_data, s: Shape) -> np.ndarray:
  """(num_batches, batch_size) pair indices: a permutation of the pairs
  (seeded by the epoch's RNG key data), then padding (indices >=
  num_train), so only the last batch is short."""
  seed = np.asarray(rng_data).astype(np.uint64).ravel()
  perm = np.random.default_rng(seed).permutation(s.num_train)
  pad = np.arange(s.num_train, s.num_batches * s.batch_size)
  return np.concatenate([perm, pad]).astype(np.int32).reshape(s.num_batches, s.batch_size)


def _epoch(model: ZooModel, s: Shape, tx, g: Graphs, sampler: Sampler, state, order):
  rng, k_neg, k_graph, k_steps = jax.random.split(jax.random.wrap_key_data(state["rng"]), 4)
  g = model.epoch_graphs(g, k_graph)
  grad_fn = jax.value_and_grad(model.loss, has_aux=True)
  pairs = g.train_pairs[jnp.minimum(order, s.num_train - 1)]
  # The epoch's negatives in a few large draws, not a few per step: they do
  # not depend on the parameters.
  negatives = sampler.negatives(k_neg, pairs[..., 0]) if model.negatives else None
  keys = jax.random.split(k_steps, s.num_batches)

  def step(g, carry, xs):
    params, opt = carry
    idx, pairs, neg, key = xs
    batch = Batch(users=pairs[:, 0], items=pairs[:, 1], negatives=neg,
                  valid=idx < s.num_train)
    (_, metrics), grads = grad_fn(params, g, batch, key)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), metrics

  def train(g):
    return jax.lax.scan(functools.partial(step, g), (state["params"], state["opt"]),
                        (order, pairs, negatives, keys))

  if isinstance(g.ui, sparse.Capped):   # Drawn for this epoch: checked once.
    (params, opt), metrics = sparse.if_fits(
        g.ui, lambda ui: train(dataclasses.replace(g, ui=ui)))
  else:
    (params, opt), metrics = train(g)
  return (dict(params=params, opt=opt, rng=jax.random.key_data(rng)),
          jax.tree.map(jnp.mean, metrics))


def build_graphs(model: ZooModel, data, on_host: bool) -> Graphs:
  train = data.pairs[TRAIN]
  ui = graph_lib.user_item_graph(train, data.num_users, data.num_items)
  ui = dataclasses.replace(jax.tree.map(jnp.asarray, ui), on_host=on_host)
  return Graphs(ui=ui, train_pairs=jnp.asarray(train, jnp.int32),
                features=tuple(jnp.asarray(f) for f in data.features.values()),
                **model.graphs(train, data.features, on_host))


class ZooTask:
  """One zoo model's run as a `loop.Task`; units are epochs. The state:
  {"run": params, Adam state and RNG; "best": the best-valid params;
  "step": the epoch}."""
  unit = "epoch"
  total_key = "zoo.epochs"
  runs = 1
  per_call = 1
  log_every = 1
  guarded = False
  keeps_best = True
  data_iterator = None   # The epoch order comes from the state's RNG.

  def __init__(self, model: ZooModel, data, evaluator, *, epochs: int, seed: int,
               hparams: dict, data_dir: str = "", on_host: bool | None = None):
    if on_host is None:   # SciPy's CSR product: one CPU device only.
      on_host = jax.default_backend() == "cpu" and jax.device_count() == 1
    self.model, self.data, self.evaluator = model, data, evaluator
    self.total, self.seed, self.hparams = int(epochs), int(seed), dict(hparams)
    self.graphs = build_graphs(model, data, on_host)
    self.sampler = Sampler.from_pairs(data.pairs[TRAIN], data.num_users)
    self.eval_users = jnp.asarray(data.eval_users().astype(np.int32))
    self.shape = Shape(num_train=len(data.pairs[TRAIN]),
                       batch_size=int(model.train_batch_size))
    self.examples_per_unit = self.shape.num_train
    self.identity = {"train.batch_size": self.shape.batch_size, "seed": self.seed,
                     "data": {"fingerprint": data_fingerprint(data), "dir": data_dir}}
    self.tx = optax.adam(model.learning_rate)
    self._epoch = jax.jit(functools.partial(_epoch, model, self.shape, self.tx),
                          donate_argnums=2)
    self._vectors = jax.jit(model.vectors)

  def initial_state(self) -> dict:
    key = jax.random.key(self.seed)
    params = self.model.init_features(self.model.init(key), self.graphs.features)
    run = dict(params=params, opt=self.tx.init(params),
               rng=jax.random.key_data(jax.random.fold_in(key, 1)))
    return dict(run=run, best=jax.tree.map(jnp.copy, params),
                step=jnp.zeros((), jnp.int32))

  def _check_model(self, start: int, workdir: str) -> None:
    """A resume must train the same model with the same hyper-parameters."""
    path = epath.Path(workdir) / MODEL_FILE
    record = {"model": self.model.name, "hparams": self.hparams}
    if start and path.exists():
      old = json.loads(path.read_text())
      if old != json.loads(json.dumps(record)):
        raise MmjaxError(
            f"refusing to resume {workdir}: it trained {old}, not {record}; "
            "use the original model and hyper-parameters, or another --workdir")
    if jax.process_index() == 0:
      path.write_text(json.dumps(record, indent=2, sort_keys=True))

  def prepare(self, state, start, workdir, log) -> float:
    self._check_model(start, workdir)
    order = np.zeros((self.shape.num_batches, self.shape.batch_size), np.int32)
    compiled = self._epoch.lower(self.graphs, self.sampler, state["run"], order).compile()
    flops = scan_flops(compiled, self.shape.num_batches)
    log(f"{self.model.name}: {self.shape.num_batches} batches of "
        f"{self.shape.batch_size} per epoch, compiled")
    return flops

  def advance(self, state, n):
    rows = []
    for _ in range(n):
      order = epoch_order(jax.device_get(state["run"]["rng"]), self.shape)
      run, metrics = self._epoch(self.graphs, self.sampler, state["run"], order)
      state = dict(state, run=run, step=state["step"] + 1)
      rows.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, rows, 0.0

  def vectors(self, params):
    """(users (1, E, d), items (1, N, d)): the evaluated users' vectors and
    the items', a run axis first (the evaluator's layout)."""
    users, items = self._vectors(params, self.graphs)
    return users[self.eval_users][None], items[None]

  def evaluate(self, state) -> list[dict]:
    return self.evaluator(*self.vectors(state["run"]["params"]))[0]

  def keep_best(self, state, improved):
    if not improved[0]:
      return state
    return dict(state, best=jax.tree.map(jnp.copy, state["run"]["params"]))

  def servable(self, state) -> dict:
    return {"best": state["best"], "step": state["step"]}

  def test(self, state) -> tuple[dict, dict]:
    """(valid, test) metrics of the best state."""
    valid, test = self.evaluator(*self.vectors(state["best"]))
    return valid[0], test[0]
