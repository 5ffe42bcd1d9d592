"""Workdir paths on any scheme etils.epath knows: a local folder or a URL
(`gs://bucket/run`, `s3://...`).

A local path is made absolute; a URL is kept as it is (never
`os.path.abspath`: that would make `gs://b/run` a local folder `gs:`).
Paths travel as strings, so callers may keep joining them with "/".
"""

from __future__ import annotations

import os
import shutil

from etils import epath

from mmjax.errors import MmjaxError

# Orbax builds TensorStore's kvstore from the path: the `file` driver for a
# local path and the `gcs` one for gs://; any other scheme fails at the first
# save ("Checkpoint path should be absolute").
CHECKPOINT_SCHEMES = ("gs",)


def scheme(path) -> str | None:
  """'gs' for gs://b/x, None for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else None


def is_local(path) -> bool:
  return scheme(path) is None


def resolve(path) -> str:
  """The absolute local path, or the URL without a trailing slash."""
  if is_local(path):
    return os.path.abspath(os.fspath(path))
  return str(epath.Path(os.fspath(path)))


def join(base, *parts: str) -> str:
  return str(epath.Path(os.fspath(base)).joinpath(*parts))


def check_checkpointable(directory) -> None:
  """MmjaxError where Orbax cannot write checkpoints under `directory`."""
  s = scheme(directory)
  if s is not None and s not in CHECKPOINT_SCHEMES:
    raise MmjaxError(
        f"cannot write checkpoints in {directory}: Orbax writes arrays to local "
        f"paths and {', '.join(x + '://' for x in CHECKPOINT_SCHEMES)} only; use "
        "such a --workdir")


def move_tree(src, dst) -> None:
  """Moves a folder to `dst` (whose parent may not exist yet), replacing
  whatever is at `dst`."""
  if is_local(src):
    os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(src, dst)
    return
  import fsspec   # epath's rename wants an existing parent "folder", which
                  # an object store only has once an object is under it.
  fs, src_path = fsspec.core.url_to_fs(os.fspath(src))
  dst_path = fs._strip_protocol(os.fspath(dst))
  if fs.exists(dst_path):
    fs.rm(dst_path, recursive=True)
  fs.mv(src_path, dst_path, recursive=True)


def upload_tree(local_dir: str, remote_dir) -> None:
  """Copies the files of a local folder (one level) to `remote_dir`."""
  remote = epath.Path(os.fspath(remote_dir))
  for name in sorted(os.listdir(local_dir)):
    src = os.path.join(local_dir, name)
    if os.path.isfile(src):
      with open(src, "rb") as f:
        (remote / name).write_bytes(f.read())
