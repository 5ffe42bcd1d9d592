"""Paired cross-modal retrieval recall (e.g. text <-> image), R@K."""
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.eval.metrics import batched_apply


@jax.jit
def _ranks_batch(z_query, match, z_gallery):
  """rank[i] = #other gallery items scoring at least as high as the match."""
  scores = z_query.astype(jnp.float32) @ z_gallery.astype(jnp.float32).T
  pos = jnp.take_along_axis(scores, match[:, None], axis=1)
  return jnp.sum(scores >= pos, axis=1) - 1


def retrieval_recall(z_query, z_gallery, ks=(1, 5, 10), batch_size=1024):
  """R@K for paired sets: query i's only correct match is gallery item i.

    rank_i = #{j != i : s(q_i, g_j) >= s(q_i, g_i)}   (0 = retrieved first)
    R@K    = mean_i [rank_i < K]

  Ties count against the match (pessimistic), so a collapsed model whose
  scores are all equal gets R@1 = 0, not 1.

  Args:
    z_query: (N, d); z_gallery: (N, d), dot product as similarity.
    ks: cutoffs.
    batch_size: queries scored per jitted call.
  Returns:
    dict "r@K" -> float.
  """
  n = z_query.shape[0]
  if z_gallery.shape[0] != n:
    raise ValueError(f"{n} queries but {z_gallery.shape[0]} gallery items.")
  z_gallery = jnp.asarray(z_gallery)
  match = np.arange(n, dtype=np.int32)
  fn = lambda q, m: _ranks_batch(q, m, z_gallery)
  ranks = batched_apply(fn, [z_query, match], batch_size)
  return {f"r@{k}": float(np.mean(ranks < k)) for k in ks}


def text_image_retrieval(z_text, z_image, ks=(1, 5, 10), batch_size=1024):
  """Both directions: keys "t2i_r@K" (text queries) and "i2t_r@K"."""
  out = {}
  for name, q, g in (("t2i", z_text, z_image), ("i2t", z_image, z_text)):
    for key, val in retrieval_recall(q, g, ks, batch_size).items():
      out[f"{name}_{key}"] = val
  return out
