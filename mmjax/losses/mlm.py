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
  mask = labels >= 0
  n = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
  safe = jnp.where(mask, labels, 0)  # -1 is not a valid gather index.
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  loss = jnp.sum(jnp.where(mask, nll, 0.)) / n
  correct = (jnp.argmax(logits, axis=-1) == labels) & mask
  return loss, jnp.sum(correct) / n
