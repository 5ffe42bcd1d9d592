"""Orbax checkpoints of the train state together with the grain iterator.

Saved under `<workdir>/checkpoints/<step>/` (a local folder or a gs:// URL)
with the items `state` (the train-state pytree), `data` (grain's iterator
state, one file per process; so a resumed run continues the exact example
stream) and `loop` (a JSON record of the loop, e.g. early stopping), the
last two where given.

Commits are atomic: orbax writes each step into
`<step>.orbax-checkpoint-tmp-<time>` and renames it to `<step>` only when
every item is written, and the manager never lists temp dirs, so a run
killed mid-save leaves the previous checkpoint as the newest one. On gs://
(no rename there) it writes `<step>` and commits it with a marker file,
and lists only committed steps.
"""

import math

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mmjax.errors import MmjaxError
from mmjax.train import paths
from mmjax.train.resume import leaf_shapes


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(state, step, directory) -> None:
  params = state["params"] if "params" in state else state
  if not bool(_all_finite(params)):
    raise MmjaxError(f"refusing to save checkpoint {step} in {directory}: "
                     "the parameters hold NaN or Inf")


def _abstract(state_like):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state_like)


class Checkpointer:
  """Async saves every `every` steps (and on demand), keeps the newest `keep`."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    workdir = paths.resolve(workdir)
    self.directory = paths.join(workdir, "checkpoints")
    self.quarantine_dir = paths.join(workdir, "corrupt_checkpoints")
    paths.check_checkpointable(self.directory)
    self._manager = ocp.CheckpointManager(
        epath.Path(self.directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True),   # Leftovers of a killed save.
        item_names=("state", "data", "loop"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, loop: dict | None = None,
           force: bool = False) -> bool:
    """False where `every` says not now. Refuses NaN/Inf parameters.

    `data_iterator`: grain's (None for a task without one); `loop`: a
    JSON-able record saved beside (the early-stopping state)."""
    if not (force or self._manager.should_save(step)):
      return False
    _check_finite(state, step, self.directory)
    items = dict(state=ocp.args.StandardSave(state))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if loop is not None:
      items["loop"] = ocp.args.JsonSave(loop)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore_loop(self, step: int) -> dict | None:
    """The `loop` record saved with `step`, None where it has none."""
    path = epath.Path(self.directory) / str(step) / "loop"
    if not path.exists():
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(
        loop=ocp.args.JsonRestore()))
    return restored["loop"]

  def restore(self, state_like, data_iterator=None, step: int | None = None):
    """Restores into the shapes/dtypes/shardings of `state_like`.

    `data_iterator` is updated in place (None: the state alone, e.g. for
    inference); returns the restored state.
    """
    step = self._manager.latest_step() if step is None else step
    items = dict(state=ocp.args.StandardRestore(_abstract(state_like)))
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
    where = paths.join(self.quarantine_dir, str(step))
    if jax.process_index() == 0:   # One mover on a shared file system.
      paths.move_tree(paths.join(self.directory, str(step)), where)
    self._manager.reload()
    return where

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class BestCheckpoint:
  """<workdir>/best: the state with the best valid score, kept by Orbax's
  best-checkpoint policy (one checkpoint, ranked by `score`). It serves
  test, export and inference; resuming uses the latest (`Checkpointer`)."""

  def __init__(self, workdir: str):
    self.directory = paths.join(paths.resolve(workdir), "best")
    paths.check_checkpointable(self.directory)
    self._manager = ocp.CheckpointManager(
        epath.Path(self.directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics["score"],
            best_mode="max", create=True, enable_async_checkpointing=True,
            cleanup_tmp_directories=True),
        item_names=("state",))

  def save(self, step: int, state, score: float) -> None:
    """Async (`wait` waits); Orbax then keeps the better of this and the
    kept one. Refuses NaN/Inf parameters, and a NaN/Inf score (it would
    rank arbitrarily)."""
    _check_finite(state, step, self.directory)
    if not math.isfinite(score):
      raise MmjaxError(f"refusing to save checkpoint {step} in {self.directory}: "
                       f"its score is {score}")
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state)), metrics={"score": float(score)},
        force=True)

  def step(self) -> int | None:
    """The step kept (the best score)."""
    return self._manager.best_step()

  def restore(self, state_like):
    """The kept state, into the shapes/dtypes/shardings of `state_like`."""
    step = self.step()
    if step is None:
      raise MmjaxError(f"no checkpoint in {self.directory}: no score was saved "
                       "there yet")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like))))
    return restored["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def restore_best(workdir: str, state_like) -> dict | None:
  """The state <workdir>/best keeps, in the shapes/shardings of
  `state_like`; None where the run kept none (nothing is created)."""
  if not (epath.Path(workdir) / "best").is_dir():
    return None
  best = BestCheckpoint(workdir)
  try:
    return None if best.step() is None else best.restore(state_like)
  finally:
    best.close()
