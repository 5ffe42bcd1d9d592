"""config.train.freeze on pretrained towers (init_from): frozen parameters
stay bit-identical to the checkpoint through real train steps."""

import jax
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import catalog_words, save_tiny_bert, save_tiny_vit
from mmjax.data import store
from mmjax.data.pipeline import text_tokenizer, train_dataset
from mmjax.errors import MmjaxError
from mmjax.models.encoders import hf_import
from mmjax.models.model import DataShapes, build_model
from mmjax import mesh as mesh_lib
from mmjax.train.optimizer import (FROZEN, TRAINABLE, freeze_labels,
                                   learning_rate, make_optimizer, param_path)
from mmjax.train.step import init_state, make_train_step, state_shardings

STEPS = 3


def _flat(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {param_path(p): np.asarray(v) for p, v in leaves}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  from tiny import tiny_config
  cfg = tiny_config()
  root = tmp_path_factory.mktemp("hf")
  cfg.model.text.init_from = save_tiny_bert(root / "bert", catalog_words(data_dir),
                                            layers=2)
  cfg.model.image.init_from = save_tiny_vit(root / "vit", image_size=16)
  # LiT: the text tower frozen except its last block; one image layer too.
  cfg.train.freeze = ("text/.*", "image/patch_embed/.*")
  cfg.train.unfreeze_last_blocks = 1
  cfg.train.weight_decay = 0.1   # Decay would move frozen weights if applied.
  # Fewer loss terms: a smaller step to compile; freezing is loss-agnostic.
  cfg.loss.update(siglip=0.0, bpr=0.0, bce=0.0, mmd=0.0, coral=0.0, mlm=0.0)
  catalog = store.load_catalog(data_dir)
  tok = text_tokenizer(data_dir, cfg)
  assert tok.path == cfg.model.text.init_from
  model = build_model(cfg.model, DataShapes.of(catalog, tok, cfg.data.max_text_len),
                      seed=0)
  checkpoint = hf_import.export_state_dict(model.text, hf_import.bert_mapping(2))
  stored = hf_import.read_state_dict(cfg.model.text.init_from)
  assert all(np.array_equal(checkpoint[k], stored[k]) for k in stored)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  tx = make_optimizer(cfg.train)
  graphdef, state = init_state(model, tx, 0)
  before = _flat(state["params"])
  labels = _flat(freeze_labels(state["params"], patterns=cfg.train.freeze,
                               unfreeze_last_blocks=1))
  sh = state_shardings(state, mesh)
  step = make_train_step(graphdef, tx, cfg.loss, mesh, sh, learning_rate(cfg.train))
  state = jax.device_put(state, sh)
  data = iter(train_dataset(data_dir, catalog, cfg.data, batch_size=16, seed=0,
                            tokenizer=tok, co_items=cfg.loss.co_item > 0))
  for _ in range(STEPS):
    state, metrics = step(state, mesh_lib.global_batch(next(data), mesh))
  assert np.isfinite(float(metrics["loss"]))
  trained_text = nnx.merge(graphdef, state["params"], state["buffers"]).text
  after_checkpoint = hf_import.export_state_dict(trained_text, hf_import.bert_mapping(2))
  return before, _flat(state["params"]), labels, state, (stored, after_checkpoint)


def test_labels_follow_patterns_and_unfreeze_last_blocks(trained):
  labels = trained[2]
  frozen = {k for k, v in labels.items() if v == FROZEN}
  assert "text/embeddings/word_embeddings/embedding" in frozen
  assert "text/layers/0/attention/query/kernel" in frozen
  assert "image/patch_embed/kernel" in frozen
  assert labels["text/layers/1/attention/query/kernel"] == TRAINABLE
  assert labels["text/pooler/dense/kernel"] == FROZEN
  assert labels["image/layers/0/attention/query/kernel"] == TRAINABLE
  assert not any(k.startswith("text/layers/1/") for k in frozen)


def test_frozen_params_are_bit_identical_and_others_train(trained):
  before, after, labels = trained[:3]
  for name, label in labels.items():
    same = before[name].tobytes() == after[name].tobytes()
    if label == FROZEN:
      assert same, f"frozen {name} changed"
  moved = [n for n, l in labels.items() if l == TRAINABLE
           and before[n].tobytes() != after[n].tobytes()]
  assert "text/layers/1/output/dense/kernel" in moved
  assert "image/layers/0/output/dense/kernel" in moved
  # The frozen text tensors are still exactly the checkpoint's.
  stored, now = trained[4]
  assert np.array_equal(now["embeddings.word_embeddings.weight"],
                        stored["embeddings.word_embeddings.weight"])
  assert np.array_equal(now["encoder.layer.0.output.dense.weight"],
                        stored["encoder.layer.0.output.dense.weight"])
  assert not np.array_equal(now["encoder.layer.1.output.dense.weight"],
                            stored["encoder.layer.1.output.dense.weight"])


def test_frozen_params_have_no_optimizer_moments(trained):
  _, after, labels, state = trained[:4]
  moments = sum(np.asarray(x).size for x in jax.tree.leaves(state["opt_state"]))
  trainable = sum(after[n].size for n, l in labels.items() if l == TRAINABLE)
  frozen = sum(after[n].size for n, l in labels.items() if l == FROZEN)
  assert frozen > 0
  # Adam's mu and nu for the trainable parameters, plus a few counters.
  assert 2 * trainable <= moments < 2 * trainable + 64


def test_bad_freeze_patterns_are_mmjax_errors():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  with pytest.raises(MmjaxError, match=r"\['text/.\*'\] match no parameter"):
    freeze_labels(params, patterns=("kernel", "text/.*"))
  with pytest.raises(MmjaxError, match=r"config.train.freeze\[0\]='\(': bad regex"):
    freeze_labels(params, patterns=("(",))
  labels = freeze_labels(params, patterns=("kernel",))
  assert _flat(labels) == {"bias": TRAINABLE, "kernel": FROZEN}
