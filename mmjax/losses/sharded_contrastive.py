"""InfoNCE and SigLIP over a sharded batch, never building the B x B logits.

Each device of the mesh's `data` axis keeps its own (B_local, d) embeddings.
The other side's blocks travel around a ring (`lax.ppermute`), and inside a
block the keys are taken `chunk` at a time. So a device holds at most one
(B_local, chunk) tile of logits:

  * InfoNCE keeps running (max, sum) logsumexp statistics. The row statistics
    stay on their device. The column statistics travel with their block and
    come home after one full turn, so one tile serves both directions.
  * SigLIP just sums the tile's log-sigmoids.

Both have a custom VJP that recomputes the tiles in a second ring pass. The
key gradient travels with its block, so the backward pass is also
O(B_local x chunk) memory (autodiff through the scans would keep every tile).

Masking is `contrastive.pair_mask` exactly: global row/column indices give the
diagonal, `ids` drop duplicate-item negatives and `valid` drops padding. The
values and gradients equal `contrastive.infonce` / `siglip`.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from mmjax.losses.contrastive import _MAX_SCALE

_F32 = jnp.float32
_NEG_INIT = -1e30   # Running max before any entry: finite, so exp(m - m') is 0/1.


def _tile_mask(rmeta, cmeta):
  """(allowed, diagonal, both rows real) of a tile; meta = (global index, id,
  valid). `allowed` is `contrastive.pair_mask` restricted to the tile."""
  rg, rid, rv = rmeta
  cg, cid, cv = cmeta
  diag = rg[:, None] == cg[None, :]
  real = rv[:, None] & cv[None, :]
  return diag | (real & (rid[:, None] != cid[None, :])), diag, real


def _ring(block_fn, local, travel, k, kmeta, cfg):
  """Visits every key block of the ring, `chunk` keys at a time.

  block_fn(local, travel_chunk, k_chunk, kmeta_chunk) -> (local, travel_chunk).
  `local` stays on the device; `travel` belongs to the key block, moves with
  it and is back home after the last of the n hops.
  """
  axis, n, chunk = cfg
  perm = [(i, (i + 1) % n) for i in range(n)]

  def visit(local, moving):
    nc = moving[1].shape[0] // chunk
    split = lambda x: x.reshape(nc, chunk, *x.shape[1:])
    local, travel = lax.scan(lambda l, xs: block_fn(l, *xs), local,
                             jax.tree.map(split, moving))
    travel = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), travel)
    return local, travel

  def hop(carry, _):
    local, (travel, k, kmeta) = carry
    local, travel = visit(local, (travel, k, kmeta))
    return (local, lax.ppermute((travel, k, kmeta), axis, perm)), None

  (local, (travel, _, _)), _ = lax.scan(hop, (local, (travel, k, kmeta)), None,
                                        length=n)
  return local, travel


def _ring_grads(cfg, q, k, rmeta, kmeta, tile_grad, travel, coef_zeros):
  """dq, dk and coefficient grads; tile_grad(dots, mask, travel_chunk) ->
  (d loss / d dots tile, coefficient grads of the tile)."""
  def block(local, moving, kc, kmc):
    dq, coef = local
    dk, extra = moving
    dots = q @ kc.T
    g, g_coef = tile_grad(dots, _tile_mask(rmeta, kmc), extra)
    coef = jax.tree.map(jnp.add, coef, g_coef)
    return (dq + g @ kc, coef), (dk + g.T @ q, extra)
  (dq, coef), (dk, _) = _ring(block, (jnp.zeros_like(q), coef_zeros),
                              (jnp.zeros_like(k), travel), k, kmeta, cfg)
  return dq, dk, coef


def _online_lse(m, s, logits, axis):
  m_new = jnp.maximum(m, jnp.max(logits, axis))
  s = s * jnp.exp(m - m_new) + jnp.sum(
      jnp.exp(logits - jnp.expand_dims(m_new, axis)), axis)
  return m_new, s


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_lse(cfg, q, k, scale, rmeta, kmeta):
  """(row, column) logsumexp of the allowed entries of scale * q @ k_all.T."""
  return _ring_lse_fwd(cfg, q, k, scale, rmeta, kmeta)[0]


def _ring_lse_fwd(cfg, q, k, scale, rmeta, kmeta):
  def block(rows, cols, kc, kmc):
    allowed = _tile_mask(rmeta, kmc)[0]
    logits = jnp.where(allowed, scale * (q @ kc.T), -jnp.inf)
    return _online_lse(*rows, logits, 1), _online_lse(*cols, logits, 0)
  init = lambda b: (jnp.full((b,), _NEG_INIT, _F32), jnp.zeros((b,), _F32))
  rows, cols = _ring(block, init(q.shape[0]), init(k.shape[0]), k, kmeta, cfg)
  lse = tuple(m + jnp.log(s) for m, s in (rows, cols))
  return lse, (q, k, scale, rmeta, kmeta, lse)


def _ring_lse_bwd(cfg, res, g):
  q, k, scale, rmeta, kmeta, (lse_r, lse_c) = res
  g_r, g_c = g

  def tile_grad(dots, mask, col):
    lse_cc, g_cc = col
    logits = jnp.where(mask[0], scale * dots, -jnp.inf)
    p = (g_r[:, None] * jnp.exp(logits - lse_r[:, None])
         + g_cc[None, :] * jnp.exp(logits - lse_cc[None, :]))
    return scale * p, jnp.sum(p * dots)

  dq, dk, dscale = _ring_grads(cfg, q, k, rmeta, kmeta, tile_grad,
                               (lse_c, g_c), jnp.zeros((), _F32))
  return dq, dk, dscale, None, None


_ring_lse.defvjp(_ring_lse_fwd, _ring_lse_bwd)


def _siglip_tile(t, bias, dots, mask):
  """(which entries count, labels, logits) of one tile; as in `siglip`, the
  diagonal of a padding row does not count."""
  allowed, diag, real = mask
  labels = jnp.where(diag, 1., -1.)
  return allowed & real, labels, t * dots + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_siglip_sum(cfg, q, k, t, bias, rmeta, kmeta):
  """sum over allowed (i, j) of log sigmoid(label_ij * (t q_i.k_j + bias))."""
  return _ring_siglip_fwd(cfg, q, k, t, bias, rmeta, kmeta)[0]


def _ring_siglip_fwd(cfg, q, k, t, bias, rmeta, kmeta):
  def block(total, travel, kc, kmc):
    w, labels, logits = _siglip_tile(t, bias, q @ kc.T, _tile_mask(rmeta, kmc))
    return total + jnp.sum(jnp.where(w, jax.nn.log_sigmoid(labels * logits), 0.)), travel
  total, _ = _ring(block, jnp.zeros((), _F32), (), k, kmeta, cfg)
  return total, (q, k, t, bias, rmeta, kmeta)


def _ring_siglip_bwd(cfg, res, g):
  q, k, t, bias, rmeta, kmeta = res

  def tile_grad(dots, mask, _):
    w, labels, logits = _siglip_tile(t, bias, dots, mask)
    dl = jnp.where(w, g * labels * jax.nn.sigmoid(-labels * logits), 0.)
    return t * dl, (jnp.sum(dl * dots), jnp.sum(dl))

  zeros = (jnp.zeros((), _F32), jnp.zeros((), _F32))
  dq, dk, (dt, db) = _ring_grads(cfg, q, k, rmeta, kmeta, tile_grad, (), zeros)
  return dq, dk, dt, db, None, None


_ring_siglip_sum.defvjp(_ring_siglip_fwd, _ring_siglip_bwd)


def _local_meta(ids, valid, axis):
  b = ids.shape[0]
  return (lax.axis_index(axis) * b + jnp.arange(b), ids, valid)


def _infonce_shard(q, k, scale, ids, valid, *, cfg):
  scale = scale[0]
  meta = _local_meta(ids, valid, cfg[0])
  lse_r, lse_c = _ring_lse(cfg, q, k, scale, meta, meta)
  diag = scale * jnp.sum(q * k, axis=1)
  w = valid.astype(_F32)
  return (jnp.sum((lse_r - diag) * w)[None], jnp.sum((lse_c - diag) * w)[None],
          jnp.sum(w)[None])


def _siglip_shard(q, k, coef, ids, valid, *, cfg):
  meta = _local_meta(ids, valid, cfg[0])
  total = _ring_siglip_sum(cfg, q, k, coef[0, 0], coef[0, 1], meta, meta)
  return -total[None], jnp.sum(valid.astype(_F32))[None]


def _sharded(shard_fn, mesh, axis, chunk, z_a, z_b, coef, ids, valid):
  """Runs shard_fn on every device's rows; coef is broadcast per device."""
  n, b = mesh.shape[axis], z_a.shape[0]
  if b % n:
    raise ValueError(f"batch {b} is not divisible by the {n} devices of '{axis}'")
  local = b // n
  cfg = (axis, n, math.gcd(local, chunk))
  ids = jnp.arange(b, dtype=jnp.int32) if ids is None else ids.astype(jnp.int32)
  valid = jnp.ones((b,), bool) if valid is None else jnp.asarray(valid, bool)
  coef = jnp.broadcast_to(coef, (n, *jnp.shape(coef)))
  fn = jax.shard_map(functools.partial(shard_fn, cfg=cfg), mesh=mesh,
                     in_specs=(P(axis),) * 5, out_specs=P(axis), check_vma=False)
  return fn(z_a.astype(_F32), z_b.astype(_F32), coef, ids, valid)


def ring_infonce(z_a, z_b, log_scale, *, mesh, axis="data", valid=None,
                 ids=None, chunk=512):
  """`contrastive.infonce` with O(B_local x chunk) memory per device."""
  scale = jnp.minimum(jnp.exp(jnp.asarray(log_scale, _F32)), _MAX_SCALE)
  rows, cols, count = _sharded(_infonce_shard, mesh, axis, chunk, z_a, z_b,
                               scale, ids, valid)
  return 0.5 * (jnp.sum(rows) + jnp.sum(cols)) / jnp.maximum(jnp.sum(count), 1.)


def ring_siglip(z_a, z_b, log_t, bias, *, mesh, axis="data", valid=None,
                ids=None, chunk=512):
  """`contrastive.siglip` with O(B_local x chunk) memory per device."""
  coef = jnp.stack([jnp.exp(jnp.asarray(log_t, _F32)), jnp.asarray(bias, _F32)])
  neg_loglik, count = _sharded(_siglip_shard, mesh, axis, chunk, z_a, z_b, coef,
                               ids, valid)
  return jnp.sum(neg_loglik) / jnp.maximum(jnp.sum(count), 1.)
