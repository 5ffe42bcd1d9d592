"""loss.linear_align collapses the aligned spaces without a guard;
loss.decorrelation (VICReg variance + covariance) keeps them full rank and
aligned. Plus the losses and the representation diagnostics on known input."""

import jax
import numpy as np
import pytest
from flax import nnx

from mmjax.data import store
from mmjax.data.features import TextTokenizer, normalize_images
from mmjax.data.pipeline import ItemFeatures
from mmjax.eval.representation import (effective_rank, modality_gap,
                                       representation_report)
from mmjax.losses.alignment import decorrelation, linear_align
from mmjax.models.model import DataShapes, build_model
from mmjax.train.step import SELF_SUPERVISED_TERMS, TERMS
from tiny import compiled_step, tiny_config


def test_linear_align_is_the_mean_squared_distance():
  a = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  b = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  assert float(linear_align(a, b)) == pytest.approx(np.mean(np.sum((a - b) ** 2, 1)),
                                                    rel=1e-5)


def test_decorrelation_charges_collapse_and_spares_a_spread_batch():
  rng = np.random.default_rng(0)
  point = np.repeat(rng.normal(size=(1, 8)), 64, axis=0)     # Every row the same.
  line = rng.normal(size=(64, 1)) * np.ones((1, 8))          # One direction, copied.
  white = rng.normal(size=(4096, 8))                         # Std 1, uncorrelated.
  assert float(decorrelation(point)) == pytest.approx(1 - np.sqrt(1e-4), rel=1e-4)
  assert float(decorrelation(line)) > 5.0    # 56 covariances of ~1, / 8.
  assert float(decorrelation(white)) < 0.02


def test_representation_diagnostics_on_known_sets():
  assert effective_rank(np.eye(16)) == pytest.approx(16, rel=1e-4)
  rank_one = np.outer(np.arange(1.0, 9.0), np.ones(4))
  assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)
  x = np.random.default_rng(0).normal(size=(50, 6))
  assert modality_gap(x, 3 * x) == pytest.approx(0.0, abs=1e-12)   # Scale-free.
  gap = modality_gap(np.tile([1.0, 0.0], (4, 1)), np.tile([0.0, 2.0], (4, 1)))
  assert gap == pytest.approx(np.sqrt(2))
  report = representation_report(np.eye(4), -np.eye(4))
  assert report["text"]["effective_rank"] == pytest.approx(4, rel=1e-4)
  assert report["modality_gap"] == pytest.approx(1.0)   # ||(0.25,)*4 - (-0.25,)*4||


@pytest.fixture(scope="module")
def items(data_dir):
  """Every item of the tiny catalog as one batch, and an initial model."""
  cfg = tiny_config()
  cfg.model.text.pooling = "mean"   # The CLS pooler starts near-constant.
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), cfg.data.max_text_len)
  feats = ItemFeatures.build(catalog, tok)
  batch = dict(tokens=feats.tokens, mask=feats.mask,
               image=normalize_images(feats.images),
               item_id=np.arange(catalog.num_items, dtype=np.int32))
  shapes = DataShapes.of(catalog, tok, cfg.data.max_text_len)
  return cfg, batch, nnx.split(build_model(cfg.model, shapes, seed=0), nnx.Param, ...)


def _train(items, steps: int, **weights):
  """Trains from the shared initial model with only `weights` switched on;
  (first and last step metrics, the projections of every item before and
  after training)."""
  cfg, batch, (graphdef, params, buffers) = items
  cfg = cfg.copy_and_resolve_references()
  for term in TERMS + SELF_SUPERVISED_TERMS:
    cfg.loss[term] = weights.get(term, 0.0)
  cfg.train.update(steps=steps, lr=3e-3, warmup_steps=5)
  graphdef, step, state, data = compiled_step(cfg, (graphdef, params, buffers), batch)
  encode = jax.jit(lambda p, b: nnx.merge(graphdef, p, b).encode_items(
      *(data[k] for k in ("tokens", "mask", "image", "item_id")), hidden=True))
  before = encode(state["params"], state["buffers"])
  metrics = []
  for _ in range(steps):
    state, m = step(state, data)
    metrics.append(m)
  after = encode(state["params"], state["buffers"])
  as_np = lambda out: {k: np.asarray(out[k]) for k in ("p_text", "p_image", "z_text", "z_image")}
  return metrics[0], metrics[-1], as_np(before), as_np(after)


def _t2i_recall_at_1(out) -> float:
  sims = out["z_text"] @ out["z_image"].T
  return float(np.mean(np.argmax(sims, axis=1) == np.arange(len(sims))))


def test_linear_align_alone_collapses(items):
  first, last, before, after = _train(items, 100, linear_align=1.0)
  assert float(last["linear_align"]) < 1e-2 * float(first["linear_align"])
  for side in ("p_text", "p_image"):
    # It starts spread out and ends on (nearly) one point.
    assert effective_rank(before[side]) > 2.0, side
    assert effective_rank(after[side]) < 2.0, side
    assert after[side].std(0).mean() < 0.1 * before[side].std(0).mean(), side


def test_decorrelation_guards_linear_align(items):
  cfg, batch, _ = items
  first, last, _, after = _train(items, 300, linear_align=1.0, decorrelation=10.0)
  assert float(last["linear_align"]) < 0.1 * float(first["linear_align"])
  report, dim = representation_report(after["p_text"], after["p_image"]), cfg.model.dim
  for side in ("text", "image"):
    assert report[side]["effective_rank"] >= 0.5 * dim, report
  chance = 1 / len(batch["item_id"])
  assert _t2i_recall_at_1(after) >= 10 * chance
