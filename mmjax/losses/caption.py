"""The captioning (autoregressive) term: next-token cross-entropy.

The token-level sums and the batch mean are the masked-LM ones (mlm.py);
only the targets differ: token t + 1 at every position t whose target is a
real token, -1 (ignored) at padding.
"""
import jax.numpy as jnp

from mmjax.losses.mlm import masked_lm_mean, masked_lm_sums


def next_token_labels(tokens, mask):
  """(B, L - 1) targets of the decoder's positions 0..L-2: the next token,
  or -1 where it is padding."""
  return jnp.where(mask[:, 1:].astype(bool), tokens[:, 1:], -1)


def caption_sums(logits, tokens, mask):
  """Per-example (B,) NLL and hit sums of `logits` (B, L - 1, V)."""
  return masked_lm_sums(logits, next_token_labels(tokens, mask))


def caption_mean(nll_sums, correct_sums, tokens, mask):
  """(loss, per-token accuracy) over the batch's real target tokens."""
  return masked_lm_mean(nll_sums, correct_sums, next_token_labels(tokens, mask))
