"""How the kernels' custom calls split over devices: along the batch.

Each kernel works on independent rows (batch rows, or the rows of a
flattened activation), so under jit over several devices every device runs
its own rows (`jax.experimental.custom_partitioning`), and whatever else is
sharded is gathered. A result without the batch factor (a weight gradient,
which sums over rows) is a per-device partial sum, added up across the
batch's mesh axes with `psum`.
"""

from __future__ import annotations

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P


def _specs(rule: str):
  """A sharding rule's factor names, per operand and per result."""
  ins, outs = rule.split('->')
  parse = lambda side: tuple(x.split() for x in side.split(','))
  return parse(ins), parse(outs)


def batch_partitioned(fn, rule: str, replicated: tuple[str, ...]):
  """`fn` as a custom_partitioning op split along factor 'b' of `rule` (a
  Shardy rule such as 'b k, k n -> b n'); the factors in `replicated` are
  never sharded."""
  ins, outs = _specs(rule)

  def shardings(mesh, batch_axes, operands):
    return tuple(NamedSharding(mesh, P(*[batch_axes if f == 'b' else None
                                          for f in dims]))
                 for dims in operands)

  def batch_axes_of(arg_shapes):
    spec = getattr(arg_shapes[0].sharding, 'spec', None)
    return spec[0] if spec else None

  def result_shardings(mesh, axes):
    # One result takes a Sharding, several a tuple.
    out = shardings(mesh, axes, outs)
    return out[0] if len(out) == 1 else out

  def infer(mesh, arg_shapes, result_shape):
    del result_shape
    return result_shardings(mesh, batch_axes_of(arg_shapes))

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    axes = batch_axes_of(arg_shapes)
    lower = fn
    if axes is not None and any('b' not in dims for dims in outs):
      def lower(*args):
        results = fn(*args)
        single = not isinstance(results, (tuple, list))
        results = (results,) if single else results
        summed = tuple(r if 'b' in dims else jax.lax.psum(r, axes)
                       for r, dims in zip(results, outs))
        return summed[0] if single else summed
    return mesh, lower, result_shardings(mesh, axes), shardings(mesh, axes, ins)

  # Shardy wants them in the order the factors first appear in the rule.
  order = [f for dims in (*ins, *outs) for f in dims]
  replicated = tuple(sorted(set(replicated) & set(order), key=order.index))
  wrapped = custom_partitioning(fn)
  wrapped.def_partition(
      infer_sharding_from_operands=infer, partition=partition,
      sharding_rule=rule, need_replication_factors=replicated)
  return wrapped
