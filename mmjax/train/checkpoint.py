"""Orbax checkpoints of the train state together with the grain iterator.

Saved under `<workdir>/checkpoints/<step>/` with two items: `state` (the
train-state pytree) and `data` (grain's iterator state, one file per
process), so a resumed run continues the exact example stream.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Async saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True,
            enable_async_checkpointing=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

  def restore(self, state_like, data_iterator, step: int | None = None):
    """Restores into the shapes/dtypes/shardings of `state_like`.

    `data_iterator` is updated in place; returns the restored state.
    """
    step = self._manager.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        state_like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
