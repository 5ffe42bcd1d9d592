"""A fixed sparse matrix whose products gather and sum, never scatter.

`graph_lib.propagate` gathers one message per edge and sums them into
their destinations with a scatter; the messages are written to memory in
between, and the VJP of the gather is a scatter too. For a graph fixed for
the whole run (FREEDOM's kNN item graph), the rows can be laid out once, on
the host, as dense blocks instead: rows grouped by their number of entries,
each group padded to a common width w (zero-weight entries), and a group's
product written as w row gathers added together, which XLA fuses into one
loop that never writes a message (a gather feeding a reduction is not
fused). `Static` keeps such a layout of A and one of A^T, so that the VJP
of A x is A^T g, the same kind of product. `Capped` lays out, on the device,
a symmetric graph drawn every epoch (FREEDOM's pruned one) the same way,
with a fixed width and a short segment sum for what does not fit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import graph as graph_lib

# Group classes: up to powers of 2 and 1.5 times them (padding adds at most a
# third); a group's width is its longest row.
_WIDTHS = np.array(sorted({int(b * m) for b in 2 ** np.arange(31) for m in (1, 1.5)}))
# Longer rows are cut in pieces of this width, summed by a segment sum: an
# unrolled sum over thousands of entries would take minutes to compile.
MAX_WIDTH = 32


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Ell:
  """Rows of a sparse (n_rows, n_cols) matrix in groups of equal width:
  group g holds cols[g], vals[g] (rows_g, width_g); rows over MAX_WIDTH
  entries are pieces (`long`: cols, vals (pieces, MAX_WIDTH) and each
  piece's row among the `num_long` long rows); `rows` maps each output row
  to its place in the groups, then the long rows, concatenated."""
  cols: tuple
  vals: tuple
  rows: jax.Array
  long: tuple = ()
  num_long: int = dataclasses.field(default=0, metadata=dict(static=True))

  @classmethod
  def from_entries(cls, row, col, val, num_rows: int) -> "Ell":
    """The matrix with A[row, col] += val; a row without entries is zero."""
    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    val = np.asarray(val, np.float32)
    order = np.lexsort((col, row))   # Each row's entries in column order.
    row, col, val = row[order], col[order], val[order]
    count = np.bincount(row, minlength=num_rows)
    group = np.searchsorted(_WIDTHS, np.maximum(count, 1))
    start = np.concatenate([[0], np.cumsum(count)])
    cols, vals, placed = [], [], np.empty(num_rows, np.int64)

    def block(first, lengths, width):
      slot = np.arange(width)
      real = slot < lengths[:, None]
      take = np.where(real, first[:, None] + slot, 0)
      # Padding reads column 0 with weight 0: inert.
      return (np.where(real, col[take] if len(col) else 0, 0).astype(np.int32),
              np.where(real, val[take] if len(val) else 0, 0).astype(np.float32))

    done = 0
    short = count <= MAX_WIDTH
    for g in np.unique(group[short]):
      members = np.flatnonzero(short & (group == g))
      c, v = block(start[members], count[members], max(1, count[members].max()))
      cols.append(c)
      vals.append(v)
      placed[members] = done + np.arange(len(members))
      done += len(members)
    long_rows = np.flatnonzero(~short)
    placed[long_rows] = done + np.arange(len(long_rows))
    pieces = -(-count[long_rows] // MAX_WIDTH)
    of = np.repeat(np.arange(len(long_rows)), pieces)
    k = np.arange(len(of)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    first = start[long_rows][of] + k * MAX_WIDTH
    left = count[long_rows][of] - k * MAX_WIDTH
    long = (*block(first, np.minimum(left, MAX_WIDTH), MAX_WIDTH),
            of.astype(np.int32)) if len(long_rows) else ()
    return cls(tuple(cols), tuple(vals), placed.astype(np.int32), long, len(long_rows))

  def matmul(self, x: jax.Array) -> jax.Array:
    """A @ x for x (n_cols, d); each row sums its entries in column order."""
    parts = [_gathered(x, c, v) for c, v in zip(self.cols, self.vals)]
    if self.num_long:
      c, v, of = self.long
      parts.append(jax.ops.segment_sum(_gathered(x, c, v), of, self.num_long,
                                       indices_are_sorted=True))
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return out.at[self.rows].get(mode="promise_in_bounds")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Static:
  """A fixed matrix A (as `Ell`) and its transpose, for A x and its VJP."""
  a: Ell
  a_t: Ell

  @classmethod
  def from_edges(cls, src, dst, weight, num_nodes: int, offset: int = 0) -> "Static":
    """A[dst, src] = weight over `num_nodes` nodes (graph_lib.Edges order);
    `offset`: the products read rows offset.. of a larger table (A x[offset:]
    without slicing x; `propagate`'s VJP then does not apply)."""
    src, dst, weight = (np.asarray(a) for a in (src, dst, weight))
    return cls(Ell.from_entries(dst, src + offset, weight, num_nodes),
               Ell.from_entries(src, dst + offset, weight, num_nodes))


@jax.custom_vjp
def propagate(x: jax.Array, graph: Static) -> jax.Array:
  """y = A x, as graph_lib.propagate computes it (sums in another order)."""
  return graph.a.matmul(x)


def _propagate_fwd(x, graph):
  return graph.a.matmul(x), graph


def _propagate_bwd(graph, g):
  return graph.a_t.matmul(g), no_gradient(graph)


propagate.defvjp(_propagate_fwd, _propagate_bwd)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Capped:
  """A symmetric graph drawn on the device (FREEDOM's pruned one), laid out
  for gathers: each node's first `width` edges as an (n, width) block
  (cols, vals), the rest, up to a fixed count, summed by a segment sum
  (`spill`). `fits` is False for the rare draw that spills more; `edges`,
  as drawn, serve that one."""
  cols: jax.Array
  vals: jax.Array
  spill: graph_lib.Edges
  fits: jax.Array
  edges: graph_lib.Edges
  # For products at a few rows: each spilled edge's place among the distinct
  # spilled destinations, and each node's (`spill` for none).
  spill_segment: jax.Array
  spill_slot: jax.Array
  # False once the caller has checked `fits` for a whole computation (see
  # `if_fits`): the products then skip their own `lax.cond`.
  checked: bool = dataclasses.field(default=True, metadata=dict(static=True))

  @classmethod
  def from_edges(cls, e: graph_lib.Edges, num_nodes: int, width: int,
                 spill: int) -> "Capped":
    """Traceable; `e` sorted by destination."""
    num_edges = e.dst.shape[0]
    start = jnp.searchsorted(e.dst, jnp.arange(num_nodes + 1, dtype=e.dst.dtype))
    slot = jnp.arange(width)
    real = slot < (start[1:] - start[:-1])[:, None]
    take = jnp.where(real, start[:-1, None] + slot, 0)
    cols = jnp.where(real, e.src[take], 0)
    vals = jnp.where(real, e.weight[take], 0.0)
    over = jnp.arange(num_edges) - start[e.dst] >= width
    (idx,) = jnp.nonzero(over, size=spill, fill_value=0)
    # Unused slots weigh 0 and point at the last node: dst stays sorted.
    used = jnp.arange(spill) < jnp.sum(over)
    spilled = graph_lib.Edges(jnp.where(used, e.src[idx], 0),
                              jnp.where(used, e.dst[idx], num_nodes - 1),
                              jnp.where(used, e.weight[idx], 0.0))
    first = jnp.concatenate([jnp.ones((1,), bool), spilled.dst[1:] != spilled.dst[:-1]])
    segment = jnp.cumsum(first) - 1
    slot = jnp.full((num_nodes,), spill, jnp.int32).at[
        jnp.where(used, spilled.dst, num_nodes)].set(segment, mode="drop")
    return cls(cols, vals, spilled, jnp.sum(over) <= spill,
               dataclasses.replace(e, on_host=False), segment, slot)


def _gathered(x, cols, vals):
  """sum_j vals[:, j] * x[cols[:, j]], one fused loop."""
  take = lambda i: x.at[i].get(mode="promise_in_bounds")
  vals = vals.astype(x.dtype)
  y = vals[:, 0, None] * take(cols[:, 0])
  for j in range(1, cols.shape[1]):
    y = y + vals[:, j, None] * take(cols[:, j])
  return y


def capped_product(x: jax.Array, g: Capped) -> jax.Array:
  """A x over the whole graph (no VJP rule: see `propagate_symmetric`)."""
  def fast(x):
    s = g.spill
    msg = x[s.src] * s.weight[:, None].astype(x.dtype)
    return _gathered(x, g.cols, g.vals).at[s.dst].add(msg, indices_are_sorted=True)

  if not g.checked:
    return fast(x)
  return jax.lax.cond(g.fits, fast, lambda x: graph_lib.propagate(x, g.edges), x)


def capped_rows(x: jax.Array, g: Capped):
  """rows -> (A x)[rows], gathering those rows' blocks only (`g` checked,
  see `if_fits`); the spilled edges are summed once per distinct
  destination."""
  assert not g.checked, "capped_rows needs a layout checked by if_fits"
  s = g.spill
  msg = x[s.src] * s.weight[:, None].astype(x.dtype)
  spilled = jax.ops.segment_sum(msg, g.spill_segment, s.dst.shape[0] + 1,
                                indices_are_sorted=True)   # Last row: none.
  take = lambda a, rows: a.at[rows].get(mode="promise_in_bounds")
  return lambda rows: (_gathered(x, take(g.cols, rows), take(g.vals, rows))
                       + take(spilled, take(g.spill_slot, rows)))


def if_fits(g: Capped, run):
  """run(graph) with `g` as laid out if this draw fits its room, else with
  its plain edges: one `lax.cond` around a whole computation instead of
  one per product, so that XLA can fuse across the products."""
  return jax.lax.cond(g.fits, lambda: run(dataclasses.replace(g, checked=False)),
                      lambda: run(g.edges))


@jax.custom_vjp
def propagate_symmetric(x: jax.Array, graph: Capped) -> jax.Array:
  """y = A x for a symmetric A, whose VJP A^T g is then A g."""
  return capped_product(x, graph)


def _symmetric_fwd(x, graph):
  return capped_product(x, graph), graph


def _symmetric_bwd(graph, g):
  return capped_product(g, graph), no_gradient(graph)


propagate_symmetric.defvjp(_symmetric_fwd, _symmetric_bwd)


def no_gradient(graph):
  """The graph is a constant: zero cotangents for its leaves."""
  return jax.tree.map(lambda a: (jnp.zeros_like(a) if jnp.issubdtype(a.dtype, jnp.floating)
                                 else np.zeros(a.shape, jax.dtypes.float0)), graph)


def layer_mean(x: jax.Array, graph, layers: int) -> jax.Array:
  """graph_lib.layer_mean over `Edges`, a `Static` or a `Capped` graph."""
  if isinstance(graph, graph_lib.Edges):
    return graph_lib.layer_mean(x, graph, layers)
  prop = propagate if isinstance(graph, Static) else propagate_symmetric
  total, h = x, x
  for _ in range(layers):
    h = prop(h, graph)
    total = total + h
  return total / (layers + 1)


def capped_layout(degree_draws, widths=(1, 2, 3, 4, 6, 8, 12, 16)) -> tuple[int, int]:
  """(width, spill) for graphs like the drawn ones (each a node-degree
  array): the width that minimizes gathered rows plus spilled edges, the
  latter counted 8 times (a scatter costs several fused gathers); spill
  room is the most seen, plus a quarter, to a power of 2."""
  best = None
  for w in widths:
    most = max(int(np.maximum(np.asarray(d) - w, 0).sum()) for d in degree_draws)
    room = 1 << max(3, int(np.ceil(np.log2(1.25 * most + 1))))
    cost = len(degree_draws[0]) * w + 8 * room
    if best is None or cost < best[0]:
      best = (cost, w, room)
  return best[1], best[2]
