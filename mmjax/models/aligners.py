"""Aligners: linear maps from each modality into a shared embedding space.

How collapse is prevented
-------------------------
Alignment asks for maps A (text) and B (image) such that A x_t ≈ B x_i for
matching pairs, i.e. min ||A x_t - B x_i||^2. On its own that objective is
trivially solved by A = B = 0 (or any maps sending everything to one point):
the representations collapse and carry no information. Three guards rule
this out:

1. Unit-sphere outputs. `Projection.__call__` L2-normalises, so every
   embedding has norm 1: the zero map is infeasible and the squared distance
   is bounded in [0, 4] (it equals 2 - 2 cos), so the loss can only be
   lowered by aligning directions, not by shrinking scale.
2. Contrastive negatives. The trainer's InfoNCE / SigLIP losses (in
   `mmjax.losses`) pull matching pairs together *and* push non-matching pairs
   apart, so mapping all inputs to one point on the sphere is penalised.
3. Semi-orthogonality. `Projection.orthogonality_penalty()` is
   ||W^T W - I||_F^2 / k on the Gram matrix of the kernel's smaller side
   (k = min(in, out)); it keeps A well conditioned, so it cannot squash the
   input onto a low-rank subspace. The trainer weights it via config.
   The kernel starts orthogonal, so the penalty is zero at initialisation.

loss.linear_align reads `Projection.project`, before the normalisation, so
guard 1 does not hold there: loss.decorrelation (VICReg's variance and
covariance terms, mmjax/losses/alignment.py) is its guard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Scales the last axis to unit norm (computed in float32 for safety)."""
  x32 = x.astype(jnp.float32)
  # The eps floor avoids dividing by ~0 (and NaN gradients) for tiny inputs.
  sq = jnp.maximum(jnp.sum(x32 * x32, axis=-1, keepdims=True), eps * eps)
  return (x32 * jax.lax.rsqrt(sq)).astype(x.dtype)


class Projection(nnx.Module):
  """Linear map into the shared space followed by L2 normalisation."""

  def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool = False,
               eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if in_dim <= 0 or out_dim <= 0:
      raise ValueError(
          f'in_dim and out_dim must be positive, got {in_dim}, {out_dim}')
    self.eps = eps
    self.dense = nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=dtype,
                            param_dtype=param_dtype,
                            kernel_init=nnx.initializers.orthogonal(),
                            rngs=rngs)

  def project(self, x: jax.Array) -> jax.Array:
    """The un-normalised projection A x, (B, in_dim) -> (B, out_dim)."""
    return self.dense(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Unit-norm embeddings (B, out_dim)."""
    return l2_normalize(self.project(x), self.eps)

  def orthogonality_penalty(self) -> jax.Array:
    """||G - I||_F^2 / k, G the k x k Gram matrix of the kernel's smaller side.

    For a (in, out) kernel W with in >= out this is W^T W (columns
    orthonormal); with in < out it is W W^T (rows orthonormal), since W^T W
    then has rank < out and could never equal the identity.
    """
    w = self.dense.kernel[...].astype(jnp.float32)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    k = gram.shape[0]
    return jnp.sum(jnp.square(gram - jnp.eye(k, dtype=gram.dtype))) / k
