"""The one error type that user-facing commands turn into a clean message."""


class MmjaxError(Exception):
  """A user-facing problem (bad config, missing data, bad input file).

  `launch.py` prints its message on one line and exits non-zero, without a
  traceback unless `--verbose` is given.
  """
