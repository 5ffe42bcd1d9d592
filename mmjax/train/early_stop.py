"""Early stopping and the best-valid choice, per run (vmapped seeds and grid
points train as several runs of one program; the end-to-end task is one).

MMRec's rule: a run stops once its valid score has failed to beat its best
for more than `patience` evaluations in a row; the state it serves is the
one of its best evaluation. The whole record is JSON, saved with every
checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EarlyStopping:
  """Per run: the best score, the unit (step or epoch) it came from, the
  evaluations since, whether the run has stopped and its best valid
  metrics. `patience` 0: no run stops early."""
  metric: str
  patience: int
  best: list[float]
  best_step: list[int]
  bad: list[int]
  stopped: list[bool]
  valid: list[dict | None]

  @classmethod
  def start(cls, runs: int, metric: str, patience: int) -> "EarlyStopping":
    return cls(metric=metric, patience=patience, best=[-1.0] * runs,
               best_step=[0] * runs, bad=[0] * runs, stopped=[False] * runs,
               valid=[None] * runs)

  @property
  def runs(self) -> int:
    return len(self.best)

  def update(self, step: int, valid: list[dict]) -> list[bool]:
    """Takes each run's valid metrics at `step`; returns which runs improved."""
    improved = []
    for r, metrics in enumerate(valid):
      better = not self.stopped[r] and metrics[self.metric] > self.best[r]
      improved.append(better)
      if self.stopped[r]:
        continue
      if better:
        self.best[r], self.best_step[r], self.bad[r] = metrics[self.metric], step, 0
        self.valid[r] = dict(metrics)
      else:
        self.bad[r] += 1
        self.stopped[r] = 0 < self.patience < self.bad[r]
    return improved

  @property
  def done(self) -> bool:
    """Every run has stopped."""
    return all(self.stopped)

  @property
  def evaluated(self) -> bool:
    return self.valid[0] is not None

  @property
  def score(self) -> float:
    """The mean best score over runs: it never decreases, so it can rank
    the best-state checkpoints."""
    return sum(self.best) / self.runs

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict) -> "EarlyStopping":
    return cls(**record)
