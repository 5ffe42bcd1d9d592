"""Orbax save -> restore gives back the same state and data position."""

import jax
import numpy as np

from mmjax.data import store
from mmjax.data.features import TextTokenizer
from mmjax.data.pipeline import train_dataset
from mmjax.models.model import DataShapes, build_model
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optimizer import make_optimizer
from mmjax.train.step import init_state


def test_save_restore_roundtrip(config, data_dir, tmp_path):
  catalog = store.load_catalog(data_dir)
  tok = TextTokenizer(store.tokenizer_path(data_dir), config.data.max_text_len)
  shapes = DataShapes.of(catalog, tok, config.data.max_text_len)
  tx = make_optimizer(config.train)
  _, state = init_state(build_model(config.model, shapes, seed=0), tx, 0)
  state["step"] = state["step"] + 7
  ds = train_dataset(data_dir, catalog, config.data, batch_size=8, seed=0)
  it = iter(ds)
  next(it)
  ckpt = Checkpointer(str(tmp_path), every=1, keep=2)
  ckpt.save(7, state, it, force=True)
  ckpt.wait()
  expected_next = next(it)

  _, fresh = init_state(build_model(config.model, shapes, seed=1), tx, 1)
  it2 = iter(ds)
  restored = Checkpointer(str(tmp_path), every=1, keep=2).restore(fresh, it2)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(state) == jax.tree.structure(restored)
  got = next(it2)
  for k in expected_next:
    np.testing.assert_array_equal(got[k], expected_next[k])
