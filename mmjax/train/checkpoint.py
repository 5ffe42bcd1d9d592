"""Orbax checkpoints of the train state together with the grain iterator.

Saved under `<workdir>/checkpoints/<step>/` with two items: `state` (the
train-state pytree) and `data` (grain's iterator state, one file per
process), so a resumed run continues the exact example stream.

Commits are atomic: orbax writes each step into
`<step>.orbax-checkpoint-tmp-<time>` and renames it to `<step>` only when
every item is written, and the manager never lists temp dirs, so a run
killed mid-save leaves the previous checkpoint as the newest one.
"""

import os
import shutil

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mmjax.errors import MmjaxError
from mmjax.train.resume import leaf_shapes


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Checkpointer:
  """Async saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.quarantine_dir = os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True),   # Leftovers of a killed save.
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    """False where `every` says not now. Refuses NaN/Inf parameters."""
    if not (force or self._manager.should_save(step)):
      return False
    if not bool(_all_finite(state["params"])):
      raise MmjaxError(f"refusing to save checkpoint {step} in {self.directory}: "
                       "the parameters hold NaN or Inf")
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

  def restore(self, state_like, data_iterator=None, step: int | None = None):
    """Restores into the shapes/dtypes/shardings of `state_like`.

    `data_iterator` is updated in place (None: the state alone, e.g. for
    inference); returns the restored state.
    """
    step = self._manager.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        state_like)
    items = dict(state=ocp.args.StandardRestore(abstract))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def saved_shapes(self, step: int) -> dict:
    """'a/b' -> (shape, dtype) of each array in the checkpoint's state."""
    handler = ocp.handlers.StandardCheckpointHandler()
    meta = handler.metadata(epath.Path(self.directory) / str(step) / "state")
    return leaf_shapes(dict(meta))

  def quarantine(self, step: int) -> str:
    """Moves an unreadable step out of the manager's sight; returns where."""
    where = os.path.join(self.quarantine_dir, str(step))
    if jax.process_index() == 0:   # One mover on a shared file system.
      os.makedirs(self.quarantine_dir, exist_ok=True)
      shutil.rmtree(where, ignore_errors=True)
      os.replace(os.path.join(self.directory, str(step)), where)
    self._manager.reload()
    return where

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
