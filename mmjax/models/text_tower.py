"""A pretrained text tower trained inside the feature-graph recommender.

The tower is a BERT-family checkpoint (e.g. all-MiniLM-L6-v2) over each
item's text. Its first blocks stay frozen and its last `blocks` are trained
by the recommender's step:

- the frozen blocks run once, before training (`prepare`): their token
  states (N, L, H) are a constant of the program;
- each step runs the trainable blocks on `tower_items` sampled items only,
  mean-pools them over the text's tokens and L2-normalizes them (what
  sentence-transformers computes, and what `mmjax features` writes);
- the graph propagation needs every item's vector, so the model keeps a
  memory of every item's latest tower output (as MoCo does for its keys).
  The step's rows replace theirs, with their gradient; the rest are the
  memory, constants to the gradient. Evaluation and serving read the
  memory.

Encoding the whole catalog through even one block every step would cost
more than the rest of the model by orders of magnitude; the memory makes a
step's tower cost that of `tower_items` items.

Titles are short and their lengths vary, so one width for all (the longest
text) would make most of a step's tokens padding. The items are split by
length into `buckets` groups, with the widths that minimise the catalog's
padded tokens (`bucket_widths`), and each step draws from every group in
proportion to its size (`make_plan`, `draw`). Shapes stay static, as XLA on every
backend needs; `log_weights` keeps the sampled softmax unbiased.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.models.aligners import l2_normalize
from mmjax.models.encoders import attention as attn_lib
from mmjax.models.encoders import hf_import
from mmjax.models.encoders.text import BertLayer
from mmjax.models.recommender import ItemMemory

# BertLayer arguments taken from the checkpoint's text config.
_LAYER_KEYS = ("hidden", "heads", "mlp_dim", "ln_eps", "activation")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TowerInputs:
  """Device constants of the program: the frozen blocks' output."""
  hidden: jax.Array     # (N, L, H) token states after the frozen blocks.
  mask: jax.Array       # (N, L) 1 = a real token.
  by_length: jax.Array  # (N,) item ids, shortest text first: the buckets' items.


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Items of similar length: `by_length[start:start + size]`, encoded at
  `width` tokens, `draws` of them per step."""
  start: int
  size: int
  width: int
  draws: int


@dataclasses.dataclass
class Prepared:
  """Everything the tower needs, computed once from the checkpoint."""
  layer: dict           # BertLayer keyword arguments.
  blocks: int           # Trainable blocks.
  state: nnx.State      # The pretrained tower: its trainable blocks and memory.
  inputs: TowerInputs   # Host arrays until put on devices.
  at_max_len: int       # Texts of max_len tokens or more (the longer ones are cut).
  plan: tuple = ()      # Bucket per length group: what a step encodes.

  @property
  def width(self) -> int:
    return int(self.layer["hidden"])

  @property
  def initial(self) -> np.ndarray:
    """(N, H) every item's pooled vector before training."""
    return np.asarray(self.state["memory"][...])


class TextTower(nnx.Module):
  """The trainable last blocks and the memory of every item's output."""

  def __init__(self, *, num_items: int, blocks: int, layer: dict, rngs: nnx.Rngs):
    self.layers = nnx.List([BertLayer(**layer, dropout=0.0, dtype=jnp.float32,
                                      param_dtype=jnp.float32, rngs=rngs)
                            for _ in range(blocks)])
    self.memory = ItemMemory(jnp.zeros((num_items, layer["hidden"]), jnp.float32))

  def encode(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """(B, L, H) frozen token states -> (B, H) unit vectors."""
    x = attn_lib.apply_blocks(self.layers, hidden, mask)
    return l2_normalize(attn_lib.masked_mean(x, mask))

  def __call__(self, inputs: TowerInputs | None, rows: jax.Array | None,
               plan: tuple = ()):
    """(every item's vector (N, H), the fresh rows (R, H) or None).

    With `rows`, those items are encoded now (and get gradients); the rest,
    and everything without `rows`, come from the memory. `plan`: the rows
    are `draw`'s, each bucket's at its width; () encodes all at full width."""
    memory = jax.lax.stop_gradient(self.memory[...])
    if rows is None:
      return memory, None
    spans = [(b.draws, b.width) for b in plan] or [(len(rows), inputs.mask.shape[1])]
    groups, start = [], 0
    for count, width in spans:
      r = rows[start:start + count]
      groups.append(self.encode(inputs.hidden[r, :width], inputs.mask[r, :width]))
      start += count
    fresh = jnp.concatenate(groups) if len(groups) > 1 else groups[0]
    return memory.at[rows].set(fresh), fresh


def bucket_widths(lengths: np.ndarray, buckets: int) -> list[int]:
  """At most `buckets` widths, ascending, the last the longest length, that
  minimise the padded tokens sum(width of each text's bucket): an exact
  dynamic programme over the distinct lengths."""
  values, counts = np.unique(np.maximum(lengths, 1), return_counts=True)
  n = len(values)
  below = np.concatenate([[0], np.cumsum(counts)])   # Texts shorter than values[i].
  inf = float("inf")
  # cost[k][j]: least padded tokens of the texts up to values[j - 1] in k buckets.
  cost = [[0.0] + [inf] * n] + [[inf] * (n + 1) for _ in range(buckets)]
  cut = [[0] * (n + 1) for _ in range(buckets + 1)]
  for k in range(1, buckets + 1):
    cost[k][0] = 0.0
    for j in range(1, n + 1):
      for i in range(j):   # The last bucket holds values[i:j], at width values[j - 1].
        c = cost[k - 1][i] + (below[j] - below[i]) * values[j - 1]
        if c < cost[k][j]:
          cost[k][j], cut[k][j] = c, i
  k = min(buckets, n)
  widths, j = [], n
  while j > 0:
    widths.append(int(values[j - 1]))
    j = cut[k][j]
    k -= 1
  return widths[::-1]


def make_plan(lengths: np.ndarray, buckets: int, items: int) -> tuple[Bucket, ...]:
  """The buckets of `bucket_widths` and how many of each a step of `items`
  draws: in proportion to their sizes (largest remainders), at least one
  each, so no text is left out of training."""
  widths = bucket_widths(lengths, max(1, min(buckets, items)))
  sizes = np.diff(np.searchsorted(np.sort(lengths), widths, side="right"), prepend=0)
  share = items * sizes / sizes.sum()
  draws = np.maximum(np.floor(share).astype(int), 1)
  while draws.sum() < items:
    draws[np.argmax(share - draws)] += 1
  while draws.sum() > items:   # The minimum of one took more than the share.
    draws[np.argmax(np.where(draws > 1, draws - share, -np.inf))] -= 1
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  return tuple(Bucket(int(a), int(n), int(w), int(d))
               for a, n, w, d in zip(starts, sizes, widths, draws))


def draw(key: jax.Array, by_length: jax.Array, plan: tuple) -> jax.Array:
  """(sum of draws,) item ids, drawn uniformly within each bucket."""
  keys = jax.random.split(key, len(plan))
  return jnp.concatenate([by_length[b.start + jax.random.randint(k, (b.draws,), 0, b.size)]
                          for k, b in zip(keys, plan)])


def log_weights(plan: tuple, num_items: int, negatives: int) -> np.ndarray:
  """(negatives,) what each drawn negative's log-weight adds to log(N / S) in
  a sampled softmax whose first rows are `draw`'s and the rest uniform.

  Each part alone estimates the sum over all N items: the drawn rows as
  sum_b N_b / d_b * (their sum), the uniform rest as N / (S - D) * (its sum).
  Mixed in proportion to their sizes, D / S and (S - D) / S, the uniform
  rows' weight is N / S, a bucket's D N_b / (S d_b)."""
  d = sum(b.draws for b in plan)
  per_bucket = [np.full(b.draws, np.log(d * b.size / (num_items * b.draws))) for b in plan]
  return np.concatenate(per_bucket + [np.zeros(negatives - d)]).astype(np.float32)


def prepare(texts: list[str], model_dir: str, *, blocks: int, max_len: int,
            items: int = 0, buckets: int = 1, batch_size: int = 256) -> Prepared:
  """Tokenizes `texts` with the folder's tokenizer, runs the checkpoint's
  frozen blocks over them and the trainable ones once (the initial memory).
  `items` per step in `buckets` length groups: the `plan` (none for 0)."""
  encoder = hf_import.load_text_encoder(model_dir, pooling="mean")
  total = len(encoder.layers)
  if not 1 <= blocks <= total:
    raise MmjaxError(f"config.feature_graph.tower_blocks={blocks}: the checkpoint "
                     f"{model_dir} has {total} blocks; choose 1..{total}")
  tokens, mask = TextTokenizer(model_dir, max_len).encode_all(texts)
  lengths = mask.sum(axis=1)
  width = max(int(lengths.max()), 1)   # Padding beyond the longest text is dead weight.
  tokens, mask = tokens[:, :width], mask[:, :width]
  frozen = total - blocks
  graphdef, params = nnx.split(encoder)

  @jax.jit
  def run(params, tok, m):
    enc = nnx.merge(graphdef, params)
    x = enc.embeddings(tok, jnp.zeros_like(tok), deterministic=True, rngs=None)
    h = attn_lib.apply_blocks(enc.layers[:frozen], x, m)
    y = attn_lib.apply_blocks(enc.layers[frozen:], h, m)
    return h, l2_normalize(attn_lib.masked_mean(y, m))

  hidden, pooled = [], []
  for start in range(0, len(texts), batch_size):
    h, p = run(params, tokens[start:start + batch_size], mask[start:start + batch_size])
    hidden.append(np.asarray(h))
    pooled.append(np.asarray(p))
  kw = hf_import.text_config_from_hf(model_dir)
  layer = {k: kw[k] for k in _LAYER_KEYS if k in kw}
  tower = TextTower(num_items=len(texts), blocks=blocks, layer=layer, rngs=nnx.Rngs(0))
  tower.layers = nnx.List(list(encoder.layers[frozen:]))
  tower.memory = ItemMemory(jnp.asarray(np.concatenate(pooled)))
  state = jax.tree.map(np.asarray, nnx.state(tower))
  by_length = np.argsort(lengths, kind="stable").astype(np.int32)
  return Prepared(layer=layer, blocks=blocks, state=state,
                  inputs=TowerInputs(hidden=np.concatenate(hidden), mask=mask,
                                     by_length=by_length),
                  at_max_len=int((lengths >= max_len).sum()),
                  plan=make_plan(lengths, buckets, items) if items else ())
