"""SIGTERM (preemption notice) and SIGINT (Ctrl-C) as a flag the train loop
reads between steps.

Cluster schedulers send SIGTERM and wait a grace period before SIGKILL; a
user presses Ctrl-C. Either way the loop finishes its step, waits for any
checkpoint still being written, saves one and stops (the caller exits 0 for
SIGTERM, 130 for Ctrl-C), and rerunning the same command resumes. A second
signal while that is under way exits at once, saying what was not saved.
"""

import os
import signal
import sys
import threading

from mmjax.train import workdir_lock

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
  """Context manager; `requested` names the first signal received while
  inside ("SIGTERM" or "SIGINT"), else None.

  `unsaved` says what a hard exit would lose; the loop keeps it current.
  """

  def __init__(self):
    self.requested = None
    self.unsaved = "nothing of this run has been saved yet"
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested is None:
      self.requested = signal.Signals(signum).name
      return
    # The second signal: no unwinding (a save may be blocking); the locks
    # of this process go with it.
    print(f"\nmmjax: {signal.Signals(signum).name} again: exiting at once; "
          f"{self.unsaved}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    workdir_lock.release_all()
    os._exit(128 + signum)

  def __enter__(self) -> "StopFlag":
    # Signal handlers can only be set from the main thread.
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
