"""Whole-file writes that a crash cannot tear: a temp file beside the target,
then one `os.replace`.

Readers see the old file or the new one, never half of one: a run killed
mid-write (or a full disk) leaves the previous version intact.
"""

import contextlib
import os
import uuid


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs):
  """`with atomic_write(path) as f:` writes `f` into place on a clean exit;
  on an exception the temp file is removed and `path` is left as it was.

  The temp file lives in the target's folder (a rename within one file
  system is atomic) and is opened exclusively, so two writers never share it.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
