"""SIGTERM (preemption notice) as a flag the train loop reads between steps.

Cluster schedulers send SIGTERM and wait a grace period before SIGKILL: the
loop finishes its step, saves a checkpoint and exits 0, and rerunning the
same command resumes.
"""

import signal
import threading


class SigtermFlag:
  """Context manager; `requested` turns True on SIGTERM while inside."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self) -> "SigtermFlag":
    # Signal handlers can only be set from the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
