"""The text tower inside the feature-graph recommender: the frozen blocks'
split, the memory the step refreshes, its own learning rate, and a run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config as config_lib
from mmjax import mesh as mesh_lib
from mmjax.errors import MmjaxError
from mmjax.models.encoders import hf_import
from mmjax.models.encoders.attention import masked_mean
from mmjax.models.text_tower import prepare
from mmjax.run import train_and_evaluate
from mmjax.train import feature_graph_step as fs
from mmjax.train import feature_graph_trainer as ft

from hf_fixtures import save_tiny_bert
from mmrec_fixtures import make_dataset
from test_mmrec_train import tiny_config

COLOURS = ["red", "green", "blue"]
WORDS = COLOURS + ["book", "novel", "story", "of", "the", "night", "sea", "war"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """The toy MMRec set, an items table whose texts name the item's cluster,
  and a tiny 2-block BERT folder."""
  root = tmp_path_factory.mktemp("toy_tower")
  make_dataset(str(root))
  rng = np.random.default_rng(0)
  rows = ["itemID\ttitle"] + [
      f"{i}\t{COLOURS[i % 3]} {' '.join(rng.choice(WORDS[3:], rng.integers(1, 5)))}"
      for i in range(60)]
  (root / "items.tsv").write_text("\n".join(rows) + "\n")
  bert = save_tiny_bert(root / "bert", WORDS, layers=2, hidden=16, heads=2)
  return root, bert


def tower_config(toy, **tower):
  root, bert = toy
  c = tiny_config(root, [])
  c.feature_graph.update(**{**dict(text_tower=bert, text_file="items.tsv", tower_items=8,
                                   tower_lr=1e-2), **tower})
  return c


def test_prepare_splits_the_checkpoint_at_its_frozen_blocks(toy):
  root, bert = toy
  texts = [line.split("\t")[1] for line in (root / "items.tsv").read_text().splitlines()[1:]]
  p = prepare(texts, bert, blocks=1, max_len=16)
  assert p.inputs.hidden.shape[:2] == p.inputs.mask.shape
  assert p.inputs.mask.shape[1] == p.inputs.mask.sum(1).max()   # Cut to the longest text.
  # The memory before training is the whole checkpoint's mean-pooled unit vector.
  from mmjax.data.features import TextTokenizer
  tokens, mask = TextTokenizer(bert, 16).encode_all(texts)
  hidden, _ = hf_import.load_text_encoder(bert, pooling="mean")(tokens, mask)
  want = masked_mean(hidden, mask)
  want = want / jnp.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(p.initial, want, atol=1e-5)
  assert len(p.state["layers"]) == 1
  with pytest.raises(MmjaxError, match="tower_blocks=3.*has 2 blocks"):
    prepare(texts, bert, blocks=3, max_len=16)


def _programs(cfg):
  data = ft.load_data(cfg)
  tower = ft.load_tower(cfg, data)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  consts = ft.build_constants(data, cfg.feature_graph, mesh, tower)
  shape = fs.Shape(num_users=data.num_users, num_items=data.num_items,
                   num_train=len(data.pairs[ft.TRAIN]), batch_size=cfg.train.batch_size,
                   negatives=cfg.feature_graph.negatives, layers=cfg.feature_graph.layers,
                   item_layers=cfg.feature_graph.item_layers,
                   tower_plan=tower.plan)
  return consts, fs.Programs(cfg.feature_graph, cfg.model.dim, shape, [], mesh, tower), tower


def test_an_epoch_trains_the_blocks_at_their_rate_and_refreshes_the_memory(toy):
  cfg = tower_config(toy)
  consts, programs, tower = _programs(cfg)
  rates = (0.0, 1e-2)   # Two runs of one program: a frozen tower and a trained one.
  state = programs.init(jax.vmap(jax.random.key)(jnp.zeros(2, jnp.int32)))
  before = jax.tree.map(np.asarray, state["params"]["text_tower"])
  for run in range(2):
    np.testing.assert_array_equal(before["memory"][...][run], tower.initial)
  hp = fs.stack_hparams([dict(fs.hparams(cfg), tower_lr=r) for r in rates])
  state, metrics = programs.epoch(consts, state, hp)
  after = jax.tree.map(np.asarray, state["params"]["text_tower"])
  for run, rate in enumerate(rates):
    blocks = zip(jax.tree.leaves(before["layers"]), jax.tree.leaves(after["layers"]))
    changed = [not np.array_equal(a[run], b[run]) for a, b in blocks]
    assert all(changed) if rate else not any(changed)
    # Memory rows are the tower's output when they were last encoded: unchanged
    # weights re-encode the same vectors; trained ones move the encoded rows only.
    moved = np.abs(after["memory"][...][run] - before["memory"][...][run]).max(axis=1)
    if rate:
      assert 0 < (moved > 1e-6).sum() < len(moved)
    else:
      assert moved.max() < 1e-5
  assert np.isfinite(metrics["loss"]).all()


def test_a_run_with_the_tower_trains_evaluates_and_serves(toy, tmp_path):
  cfg = tower_config(toy)
  cfg.feature_graph.epochs = 1
  s = train_and_evaluate(cfg, str(tmp_path / "run"), log=lambda *_: None)
  assert 0.0 <= s["test"]["recall@20"] <= 1.0
  assert s["data"]["text_tower"]["blocks"] == 1
  import mmjax
  model = mmjax.load(str(tmp_path / "run"))
  assert model.recommend(user=0, k=5)


def test_tower_config_errors(toy):
  cfg = tower_config(toy)
  cfg.feature_graph.text_file = ""
  with pytest.raises(MmjaxError, match="text_tower needs config.feature_graph.text_file"):
    config_lib.validate(cfg)
  cfg = tower_config(toy, tower_items=9)
  with pytest.raises(MmjaxError, match="tower_items=9 must be at most .*negatives=8"):
    config_lib.validate(cfg)
  cfg = tower_config(toy, text_file="missing.tsv")
  with pytest.raises(MmjaxError, match="items file not found"):
    train_and_evaluate(cfg, "/tmp/unused", log=lambda *_: None)
  cfg = tower_config(toy, text_tower=os.path.join(str(toy[0]), "nowhere"))
  with pytest.raises(MmjaxError, match="text_tower: folder not found"):
    config_lib.validate(cfg)
