"""Whole-file writes that a crash cannot tear: a temp file beside the target,
then one `os.replace`; on an object store (gs://, s3://), one upload.

Readers see the old file or the new one, never half of one: a run killed
mid-write (or a full disk) leaves the previous version intact.
"""

import contextlib
import io
import os
import uuid

from etils import epath

from mmjax.train import paths


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
  """`with atomic_write(path) as f:` writes `f` into place on a clean exit;
  on an exception the temp file is removed and `path` is left as it was.

  The temp file lives in the target's folder (a rename within one file
  system is atomic) and is opened exclusively, so two writers never share it.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
  if not paths.is_local(path):
    with _upload(path, mode, open_kwargs.get("encoding")) as f:
      yield f
    return
  path = os.fspath(path)
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


@contextlib.contextmanager
def _upload(path, mode: str, encoding: str | None):
  """An object store makes an object visible only once its upload is
  complete, and replaces it whole: one upload is atomic. The content is
  buffered here and uploaded only on a clean exit, since a remote file
  object closed by an exception would still upload what it holds."""
  buf = io.StringIO() if mode == "w" else io.BytesIO()
  yield buf
  data = buf.getvalue()
  if mode == "w":
    data = data.encode(encoding or "utf-8")
  epath.Path(os.fspath(path)).write_bytes(data)
