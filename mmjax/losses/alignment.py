"""Alignment losses between the text and image embeddings: MMD and CORAL
(distributions), linear_align (paired, before normalization) and
decorrelation, the VICReg guard that keeps linear_align from collapsing."""
import jax
import jax.numpy as jnp


def _sq_dists(a, b):
  """(n, m) squared Euclidean distances, clipped at 0 (fp cancellation)."""
  d = (jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :]
       - 2. * a @ b.T)
  return jnp.maximum(d, 0.)


def mmd(x, y, bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0)):
  """Multi-kernel Gaussian MMD^2, biased (V-statistic) estimate.

    MMD^2 = mean_{x,x'} k(x, x') + mean_{y,y'} k(y, y') - 2 mean_{x,y} k(x, y)
    k(a, b) = sum_sigma exp(-||a - b||^2 / (2 sigma^2 s))

  `s` is the mean squared distance over distinct pairs of the pooled sample
  [x; y], under stop_gradient: each squared bandwidth is sigma^2 * s, so the
  sigmas are relative to the data scale and the kernel cannot be "won" by
  inflating the embeddings. It is deterministic (no median, no sampling).
  The V-statistic of a positive-definite kernel is >= 0 and exactly 0 for
  identical sets (up to fp error).

  Args:
    x: (n, d), y: (m, d) samples (n + m >= 2).
    bandwidths: relative sigmas.
  Returns:
    float32 scalar.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  n = x.shape[0]
  z = jnp.concatenate([x, y], axis=0)
  d = _sq_dists(z, z)
  p = z.shape[0]
  # The diagonal is ~0, so the sum over all entries is the sum over i != j.
  s = jax.lax.stop_gradient(jnp.sum(d) / float(p * (p - 1)))  # No int32 overflow.
  s = jnp.maximum(s, 1e-12)  # All points equal: any positive scale works.
  k = sum(jnp.exp(-d / (2. * sig**2 * s)) for sig in bandwidths)
  return (jnp.mean(k[:n, :n]) + jnp.mean(k[n:, n:])
          - 2. * jnp.mean(k[:n, n:]))


def _cov(x):
  """Unbiased (d, d) covariance of the rows of x."""
  xc = x - jnp.mean(x, axis=0, keepdims=True)
  return xc.T @ xc / (x.shape[0] - 1)


def coral(x, y):
  """Deep CORAL (Sun & Saenko 2016): ||C_x - C_y||_F^2 / (4 d^2).

  C_x, C_y are the unbiased feature covariances of x (n, d) and y (m, d).
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  d = x.shape[1]
  return jnp.sum((_cov(x) - _cov(y)) ** 2) / (4. * d * d)


def linear_align(p_a, p_b):
  """mean_i ||p_a[i] - p_b[i]||^2 over the (B, d) projections A x_text and
  B x_image, before any L2 normalization.

  On its own it is minimised by collapse: A x = B x = const for every input
  (A = B = 0 in the linear case) gives 0 and says nothing about the items.
  Pair it with `decorrelation` (or a contrastive term).
  """
  d = p_a.astype(jnp.float32) - p_b.astype(jnp.float32)
  return jnp.mean(jnp.sum(d * d, axis=-1))


def decorrelation(p, std_target=1.0, eps=1e-4):
  """VICReg's variance and covariance terms (Bardes et al. 2022) on one
  modality's (B, d) batch of projections:

    variance   = mean_j max(0, std_target - sqrt(Var_j + eps))
    covariance = sum_{j != k} C_jk^2 / d,   C the unbiased covariance.

  Why it stops the collapse that `linear_align` invites: a collapsed batch
  (every row the same point, or rows on a line) has per-dimension std 0, or
  every dimension a copy of one, and that is exactly what these terms
  charge. The variance hinge keeps each dimension's spread over the batch at
  `std_target` at least, so no shrinking of A or B to a constant (nor of the
  towers' features) pays off; the covariance term decorrelates the
  dimensions, so the spread cannot hide in one direction copied d times:
  the batch keeps a high rank. Both are statistics of the batch, so under
  data parallelism they must see the global batch (inside the jitted step,
  on the sharded arrays, as the train step computes them).
  """
  x = p.astype(jnp.float32)
  n, d = x.shape
  xc = x - jnp.mean(x, axis=0, keepdims=True)
  cov = xc.T @ xc / max(n - 1, 1)
  std = jnp.sqrt(jnp.diagonal(cov) + eps)
  variance = jnp.mean(jax.nn.relu(std_target - std))
  off = cov - jnp.diag(jnp.diagonal(cov))
  return variance + jnp.sum(off * off) / d
