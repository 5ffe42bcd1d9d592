"""Checkpoints: atomic commits, fallback past a corrupt one, no NaN saved,
incompatible configs refused by name, the loop record, the best checkpoint."""

import glob
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.config import default_config
from mmjax.errors import MmjaxError
from mmjax.train import resume
from mmjax.train.checkpoint import BestCheckpoint, Checkpointer


def _state(step, dim=4):
  return dict(params=dict(w=jnp.full((dim, 2), float(step))),
              step=jnp.int32(step), skipped=jnp.int32(0))


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _saved(workdir, steps=(1, 2), dim=4):
  """A workdir with checkpoints at `steps` (iterator advanced once per step)."""
  ckpt = Checkpointer(str(workdir), every=1, keep=5)
  it = _iterator()
  for s in steps:
    next(it)
    ckpt.save(s, _state(s, dim), it)
  ckpt.wait()
  resume.save_config(str(workdir), default_config())
  return ckpt


def _restore(workdir, config=None, dim=4):
  lines = []
  ckpt = Checkpointer(str(workdir), every=1, keep=5)
  it = _iterator()
  state = resume.restore_newest_good(ckpt, _state(0, dim), it,
                                     config or default_config(), str(workdir),
                                     lines.append)
  return state, next(it), lines


def test_resume_from_the_newest(tmp_path):
  _saved(tmp_path)
  state, next_example, lines = _restore(tmp_path)
  assert int(state["step"]) == 2 and next_example == 2
  np.testing.assert_array_equal(state["params"]["w"], np.full((4, 2), 2.0))
  assert lines == ["resumed from checkpoint at step 2"]


def test_uncommitted_save_is_invisible(tmp_path):
  """A save killed before orbax's final rename leaves only a temp dir."""
  _saved(tmp_path)
  tmp = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "junk").write_bytes(b"\0" * 10)
  state, _, _ = _restore(tmp_path)
  assert int(state["step"]) == 2
  assert not tmp.exists()   # Cleaned up when the manager opens.


@pytest.mark.parametrize("damage", ["truncate", "delete_metadata", "garble"])
def test_corrupt_latest_falls_back_to_the_previous(tmp_path, damage):
  _saved(tmp_path)
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  if damage == "delete_metadata":
    os.remove(state_dir / "_METADATA")
  for f in glob.glob(str(state_dir / "**" / "d" / "*"), recursive=True):
    data = open(f, "rb").read()
    if damage == "truncate":
      data = data[:len(data) // 3]
    elif damage == "garble":
      data = bytes(b ^ 0x5A for b in data)
    open(f, "wb").write(data)
  state, next_example, lines = _restore(tmp_path)
  assert int(state["step"]) == 1 and next_example == 1
  np.testing.assert_array_equal(state["params"]["w"], np.ones((4, 2)))
  assert lines[0].startswith("WARNING: checkpoint 2 is unreadable")
  assert lines[-1] == "resumed from checkpoint at step 1"
  assert os.listdir(tmp_path / "corrupt_checkpoints") == ["2"]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def test_no_readable_checkpoint_is_an_error(tmp_path):
  _saved(tmp_path, steps=(1,))
  os.remove(tmp_path / "checkpoints" / "1" / "state" / "_METADATA")
  with pytest.raises(MmjaxError, match="no readable checkpoint"):
    _restore(tmp_path)


def test_nonfinite_parameters_are_never_saved(tmp_path):
  ckpt = Checkpointer(str(tmp_path), every=1, keep=5)
  bad = dict(_state(1), params=dict(w=jnp.array([[1.0, jnp.nan]])))
  with pytest.raises(MmjaxError, match="NaN or Inf"):
    ckpt.save(1, bad, _iterator())
  ckpt.wait()
  assert ckpt.all_steps() == []
  assert ckpt.save(2, _state(2), _iterator())   # A finite state still saves.
  ckpt.wait()
  assert ckpt.all_steps() == [2]


def test_incompatible_config_is_refused_naming_the_keys(tmp_path):
  _saved(tmp_path)
  other = default_config()
  other.model.dim = 8
  with pytest.raises(MmjaxError) as e:
    _restore(tmp_path, other, dim=8)
  msg = str(e.value)
  assert "config.model.dim: 64 -> 8" in msg and "params/w" in msg
  assert "config.train" not in msg   # Only what differs.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]   # Untouched.


def test_config_diff():
  a = default_config().to_dict()
  b = default_config()
  b.train.steps, b.data.synthetic.num_items = 7, 5
  assert resume.config_diff(a, b.to_dict()) == [
      "config.data.synthetic.num_items: 2000 -> 5", "config.train.steps: 1000 -> 7"]


def test_loop_record_is_saved_beside_the_state(tmp_path):
  ckpt = Checkpointer(str(tmp_path), every=1, keep=5)
  ckpt.save(1, _state(1), loop={"best": 0.25, "bad_epochs": 1})
  ckpt.save(2, _state(2))   # Neither a data iterator nor a loop record.
  ckpt.wait()
  items = set(os.listdir(tmp_path / "checkpoints" / "1"))
  assert {"loop", "state"} <= items and "data" not in items
  assert ckpt.restore_loop(1) == {"best": 0.25, "bad_epochs": 1}
  assert ckpt.restore_loop(2) is None
  np.testing.assert_array_equal(ckpt.restore(_state(0))["params"]["w"],
                                np.full((4, 2), 2.0))


def test_steps_below_the_checkpoint_name_the_total_key(tmp_path):
  _saved(tmp_path)
  with pytest.raises(MmjaxError, match=r"^config.train.epochs=1 is below step 2 "
                     r".*: set train.epochs >= 2, or use another --workdir$"):
    resume.restore_newest_good(Checkpointer(str(tmp_path), every=1, keep=5),
                               _state(0), None, default_config(), str(tmp_path),
                               print, total=1, total_key="train.epochs")


def test_best_checkpoint_keeps_the_best_score(tmp_path):
  best = BestCheckpoint(str(tmp_path))
  with pytest.raises(MmjaxError, match="no checkpoint in .*best"):
    best.restore(_state(0))
  for step, score in ((1, 0.1), (2, 0.3), (3, 0.2)):
    best.save(step, _state(step), score)
  best.wait()
  assert best.step() == 2
  assert os.listdir(tmp_path / "best") == ["2"]   # One kept.
  best.close()
  again = BestCheckpoint(str(tmp_path))
  assert again.step() == 2
  np.testing.assert_array_equal(again.restore(_state(0))["params"]["w"],
                                np.full((4, 2), 2.0))
  with pytest.raises(MmjaxError, match="NaN or Inf"):
    again.save(4, dict(_state(4), params=dict(w=jnp.full((4, 2), jnp.inf))), 0.9)
  with pytest.raises(MmjaxError, match="its score is nan"):
    again.save(4, _state(4), float("nan"))
  again.wait()
  assert again.step() == 2
  again.close()
