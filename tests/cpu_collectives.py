"""Tests on simulated CPU devices, and XLA:CPU's collective rendezvous.

XLA:CPU runs a program's independent collectives concurrently, on a thread
pool as large as the machine's cores. On a 2-core machine, simulated devices
can then reach two collectives in different orders, and the runtime aborts
the process on its rendezvous timeout ("Termination timeout ... Expected 8
threads to join the rendezvous"). That is the CPU runtime, not mmjax: such a
test runs once more.
"""

import functools

_SIGNS = ("Termination timeout", "AwaitAndLogIfStuck")


def is_rendezvous_abort(text: str) -> bool:
  return any(s in text for s in _SIGNS)


def retry_on_rendezvous_abort(test):
  """Runs `test` again, once (with a fresh `tmp_path` if it takes one), when
  it failed because a subprocess hit that abort."""
  @functools.wraps(test)
  def run(*args, **kwargs):
    try:
      return test(*args, **kwargs)
    except AssertionError as e:
      if not is_rendezvous_abort(str(e)):
        raise
    if "tmp_path" in kwargs:
      kwargs["tmp_path"] = kwargs["tmp_path"] / "again"
      kwargs["tmp_path"].mkdir()
    return test(*args, **kwargs)
  return run
