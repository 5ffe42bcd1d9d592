"""Masked-language-model loss over the masked positions only."""
import jax
import jax.numpy as jnp


def masked_lm_loss(logits, labels):
  """Mean cross-entropy and accuracy over masked positions.

    loss = sum_{labels >= 0} -log softmax(logits)[label] / #masked
    acc  = sum_{labels >= 0} [argmax(logits) == label]  / #masked

  Args:
    logits: (B, L, V) float.
    labels: (B, L) int token ids at masked positions, -1 elsewhere.
  Returns:
    (loss, accuracy), float32 scalars; both 0 (not NaN) with nothing masked.
  """
  return masked_lm_mean(*masked_lm_sums(logits, labels), labels)


def masked_lm_sums(logits, labels):
  """Per-example (B,) sums of the masked positions' NLL and hits: the parts
  of `masked_lm_loss` that micro-batches can compute apart."""
  mask = labels >= 0
  safe = jnp.where(mask, labels, 0)  # -1 is not a valid gather index.
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels) & mask
  return (jnp.sum(jnp.where(mask, nll, 0.), axis=-1),
          jnp.sum(correct, axis=-1).astype(jnp.float32))


def masked_lm_mean(nll_sums, correct_sums, labels):
  """(loss, accuracy) from `masked_lm_sums` over the whole batch."""
  n = jnp.maximum(jnp.sum(labels >= 0), 1).astype(jnp.float32)
  return jnp.sum(nll_sums) / n, jnp.sum(correct_sums) / n
