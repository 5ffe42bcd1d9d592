"""Each new term proves it is wired into the one fused step: trained alone
(plus the anti-collapse guard where needed) it decreases and is logged, it
reaches a parameter no other term of the objective reaches, and with weight
0 that parameter gets no gradient at all."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.model import build_model
from mmjax.train.step import SELF_SUPERVISED_TERMS, TERMS, make_value_and_grad
from tiny import compiled_step, loss_grads, shapes_and_batch, tiny_config

# Trained alone, with the guard linear_align needs (tests/test_alignment_collapse.py).
ALONE = {"caption": dict(caption=1.0),
         "linear_align": dict(linear_align=1.0, decorrelation=10.0),
         "decorrelation": dict(decorrelation=1.0)}
# Parameters only that term reaches: MLM (the background term below) trains
# the text tower and its head, never the decoder or the projections.
ONLY = {"caption": ("caption", "layers", 0, "cross_attention", "query", "kernel"),
        "linear_align": ("image_proj", "dense", "kernel"),
        "decorrelation": ("text_proj", "dense", "kernel")}
TEXT_TOWER = ("text", "layers", 0, "intermediate", "dense", "kernel")


@pytest.fixture(scope="module")
def setup(data_dir):
  cfg = tiny_config()
  cfg.data.dir = data_dir
  cfg.model.caption.layers = 1   # Built in every case: the weight alone decides.
  shapes, batch = shapes_and_batch(cfg)
  return cfg, batch, nnx.split(build_model(cfg.model, shapes, seed=0, caption=True),
                               nnx.Param, ...)


def _loss_cfg(cfg, **weights):
  cfg = cfg.copy_and_resolve_references()
  for term in TERMS + SELF_SUPERVISED_TERMS:
    cfg.loss[term] = weights.get(term, 0.0)
  return cfg



@pytest.mark.parametrize("term", sorted(ALONE))
def test_the_term_alone_decreases_and_is_logged(setup, term):
  cfg, batch, split = setup
  cfg = _loss_cfg(cfg, **ALONE[term])
  cfg.train.update(steps=60, lr=3e-3, warmup_steps=2)
  _, step, state, data = compiled_step(cfg, split, batch)
  logged = []
  for _ in range(cfg.train.steps):
    state, metrics = step(state, data)
    logged.append({k: float(v) for k, v in metrics.items()})
  assert set(ALONE[term]) <= set(logged[0])
  assert not set(logged[0]) & {"infonce", "mlm", "softmax"}   # Only what was asked.
  assert logged[-1][term] < 0.8 * logged[0][term], (logged[0], logged[-1])
  if term == "caption":
    assert 0.0 <= logged[0]["caption_accuracy"] < logged[-1]["caption_accuracy"] <= 1.0


def _grads(cfg, split, batch, **weights):
  return loss_grads(_loss_cfg(cfg, **weights).loss, split, batch)


@pytest.fixture(scope="module")
def background_grads(setup):
  """Gradients of the MLM term alone: every new term at weight 0."""
  cfg, batch, split = setup
  return _grads(cfg, split, batch, mlm=1.0)


@pytest.mark.parametrize("term", sorted(ONLY))
def test_only_the_term_reaches_its_parameter(setup, background_grads, term):
  cfg, batch, split = setup
  on = _grads(cfg, split, batch, mlm=1.0, **{term: 1.0})
  assert np.abs(on[ONLY[term]]).max() > 0, f"{term} does not reach {ONLY[term]}"
  assert np.abs(background_grads[ONLY[term]]).max() == 0
  assert np.abs(background_grads[TEXT_TOWER]).max() > 0   # The objective is alive.
  if term == "caption":   # The decoder reads the image tower through cross-attention.
    image = ("image", "layers", 0, "attention", "query", "kernel")
    assert np.abs(on[image]).max() > 0 and np.abs(background_grads[image]).max() == 0


def test_gradcache_sees_the_whole_batch(setup):
  """The batch statistics (decorrelation) and the caption sums come out the
  same when the encoders run in two micro-batches (accumulate.py)."""
  cfg, batch, (graphdef, params, buffers) = setup
  loss_cfg = _loss_cfg(cfg, caption=1.0, linear_align=1.0, decorrelation=1.0).loss
  results = [jax.jit(make_value_and_grad(graphdef, loss_cfg, None, accum))(
      params, buffers, batch, None, jnp.int32(0)) for accum in (1, 2)]
  (loss1, (terms1, _)), grads1 = results[0]
  (loss2, (terms2, _)), grads2 = results[1]
  for k in ("caption", "caption_accuracy", "linear_align", "decorrelation"):
    np.testing.assert_allclose(terms1[k], terms2[k], rtol=1e-5, err_msg=k)
  for (path, g1), (_, g2) in zip(nnx.to_flat_state(grads1), nnx.to_flat_state(grads2)):
    np.testing.assert_allclose(g1[...], g2[...], rtol=1e-3, atol=1e-6, err_msg=str(path))
