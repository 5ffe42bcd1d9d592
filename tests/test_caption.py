"""The caption decoder (loss.caption): causal, tied to the text tower's
embeddings, attending to the image, and its loss over real tokens only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mmjax.config as config_lib
from mmjax.losses.caption import caption_mean, caption_sums, next_token_labels
from mmjax.models.encoders import attention as attn_lib
from mmjax.models.model import DataShapes, build_model
from tiny import tiny_config

SHAPES = DataShapes(vocab_size=40, max_text_len=10, image_size=16, num_users=4,
                    num_items=8)


@pytest.fixture(scope="module")
def model():
  cfg = tiny_config()
  cfg.model.caption.layers = 2   # Two blocks: a leak in the first would spread.
  return build_model(cfg.model, SHAPES, seed=0, caption=True)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, SHAPES.vocab_size, (2, 10)), jnp.int32)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  return tokens, jnp.ones((2, 10), jnp.int32), images


def _image_tokens(model, images):
  tokens, mask, _ = _inputs()
  return model.encode_content(tokens, mask, images, hidden=True)["image_tokens"]


def _changes(model, tokens, mask, context):
  """For every input position t: (the largest logit change at the decoder
  positions before t, the largest at t and after) when token t changes."""
  logits = jax.jit(lambda tok: model.caption_logits(tok, mask, context))
  base = logits(tokens)
  out = []
  for t in range(tokens.shape[1] - 1):   # The last token is only a target.
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % SHAPES.vocab_size)
    diff = jnp.abs(logits(changed) - base)
    out.append((float(diff[:, :t].max()) if t else 0.0, float(diff[:, t:].max())))
  return out


def test_no_future_token_leaks(model):
  tokens, mask, images = _inputs()
  for t, (before, after) in enumerate(_changes(model, tokens, mask,
                                               _image_tokens(model, images))):
    assert before <= 1e-6, f"changing token {t} moved an earlier logit by {before}"
    assert after > 1e-4, f"changing token {t} moved no later logit"


def test_the_probe_sees_a_decoder_that_ignores_the_causal_mask(model, monkeypatch):
  """The check above can fail: with `is_causal` dropped, it reports a leak."""
  real = attn_lib.dot_product_attention
  monkeypatch.setattr(attn_lib, "dot_product_attention",
                      lambda q, k, v, mask=None, is_causal=False: real(q, k, v, mask))
  tokens, mask, images = _inputs()
  before = [b for b, _ in _changes(model, tokens, mask, _image_tokens(model, images))]
  assert max(before) > 1e-4


def test_the_decoder_reads_the_image_and_ties_the_text_embeddings(model):
  tokens, mask, images = _inputs()
  context = _image_tokens(model, images)
  logits = model.caption_logits(tokens, mask, context)
  assert logits.shape == (2, 9, SHAPES.vocab_size)
  other = model.caption_logits(tokens, mask, context[::-1])
  assert float(jnp.abs(other - logits).max()) > 1e-4   # The image matters.
  # The output projection is the text tower's table: a change there shows.
  table = model.text.embeddings.word_embeddings.embedding
  saved = table[...]
  table[...] = saved.at[5].add(jax.random.normal(jax.random.key(0), saved.shape[1:]))
  moved = model.caption_logits(tokens, mask, context)
  table[...] = saved
  assert float(jnp.abs(moved[..., 5] - logits[..., 5]).max()) > 1e-3
  # No vocabulary-sized table of its own: only the output bias is (V,).
  own = [p for p, v in nnx.to_flat_state(nnx.state(model.caption, nnx.Param))
         if SHAPES.vocab_size in v[...].shape]
  assert own == [("bias",)]


def test_without_an_image_the_decoder_reads_the_text_alone(model):
  tokens, mask, _ = _inputs()
  for t, (before, after) in enumerate(_changes(model, tokens, mask, None)):
    assert before <= 1e-6 and after > 1e-4, t


def test_the_loss_counts_real_target_tokens_only():
  tokens = jnp.array([[2, 5, 6, 3, 0, 0]], jnp.int32)
  mask = (tokens > 0).astype(jnp.int32)
  np.testing.assert_array_equal(next_token_labels(tokens, mask), [[5, 6, 3, -1, -1]])
  # Right at every real target, wrong (and confident) at the padding.
  right = jax.nn.one_hot(jnp.array([[5, 6, 3, 7, 7]]), 8) * 20.0
  loss, acc = caption_mean(*caption_sums(right, tokens, mask), tokens, mask)
  assert float(acc) == 1.0 and float(loss) < 1e-6
  wrong = jax.nn.one_hot(jnp.array([[5, 7, 3, 0, 0]]), 8) * 20.0
  loss, acc = caption_mean(*caption_sums(wrong, tokens, mask), tokens, mask)
  assert float(acc) == pytest.approx(2 / 3) and float(loss) == pytest.approx(20 / 3, rel=1e-3)


def test_the_decoder_is_built_only_for_the_caption_loss():
  cfg = tiny_config()
  assert build_model(cfg.model, SHAPES, seed=0).caption is None
  assert build_model(cfg.model, SHAPES, seed=0, caption=True).caption is not None
  cfg.loss.caption = 0.5
  config_lib.validate(cfg)   # loss.caption alone is a valid config.


def test_existing_configs_build_no_decoder():
  model = build_model(tiny_config().model, SHAPES, seed=0)
  assert model.caption is None
