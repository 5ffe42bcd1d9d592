"""The NaN/Inf guard: a non-finite loss or gradient norm never reaches the state.

`skip_nonfinite` wraps a whole train step (whatever it computes inside,
accumulated or not): when the step's loss or gradient norm is NaN/Inf, the
proposed new state is thrown away, except that `step` advances (the batch is
consumed, so the data stream and the checkpointed iterator stay in lockstep)
and `skipped` counts it. `optax.apply_if_finite` is not enough here: it only
sees gradients, leaves the non-parameter state (the recommender's item memory)
to be overwritten with NaN, and applies the update anyway after N failures.

What to do about skipped steps is the host's call (`NanPolicy`):
`"skip"` tolerates up to `max_skipped_steps`, `"stop"` none.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mmjax.errors import MmjaxError

def skip_nonfinite(step_fn):
  """step_fn(state, batch) -> (state, metrics) with the guard around its update.

  `metrics` must hold `loss` and `grad_norm`; the guarded step adds
  `skipped` (the running count) to them.
  """

  def guarded(state, batch):
    # A copy of the containers: merging NNX state inside step_fn may write
    # into the ones it is given (the item memory does).
    old = jax.tree.map(lambda x: x, state)
    new_state, metrics = step_fn(state, batch)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    kept = jax.tree.map(lambda new, prev: jnp.where(ok, new, prev), new_state, old)
    skipped = old["skipped"] + (~ok).astype(old["skipped"].dtype)
    kept = dict(kept, step=new_state["step"], skipped=skipped)
    return kept, dict(metrics, skipped=skipped)

  return guarded


@dataclasses.dataclass
class NanPolicy:
  """Host side: after each step, is a newly skipped step within the limit?"""
  policy: str
  max_skipped_steps: int
  skipped: int = 0

  @classmethod
  def from_config(cls, train_cfg, skipped: int = 0) -> "NanPolicy":
    """`skipped`: the count already in a restored state."""
    return cls(train_cfg.nan_policy, train_cfg.max_skipped_steps, skipped)

  @property
  def limit(self) -> int:
    return self.max_skipped_steps if self.policy == "skip" else 0

  @property
  def failed(self) -> bool:
    return self.skipped > self.limit

  def observe(self, step: int, skipped: int) -> str | None:
    """Takes the step's running count; a log line if this step was skipped."""
    new, self.skipped = skipped > self.skipped, skipped
    if new and not self.failed:
      return (f"step {step}: non-finite loss or gradient norm, update skipped "
              f"({skipped} of {self.limit} allowed)")
    return None

  def error(self, step: int, saved_at: int | None = None) -> MmjaxError:
    """`saved_at`: the checkpoint's step, when the failing step was not the
    last of its call (config.train.steps_per_call)."""
    saved_at = step if saved_at is None else saved_at
    held = ("the last good parameters (without this batch's update)"
            if saved_at == step else
            f"the parameters after step {saved_at}, every non-finite update skipped")
    return MmjaxError(
        f"non-finite loss or gradient norm at step {step}: stopped with "
        f"{self.skipped} skipped step(s) (config.train.nan_policy="
        f"{self.policy!r}, config.train.max_skipped_steps="
        f"{self.max_skipped_steps}); checkpoint {saved_at} holds {held}")
