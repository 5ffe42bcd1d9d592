"""Paths read from data and model files stay inside the folder they are
relative to.

A table's image column or an HF index's weight map is data, not a request
to read any file on the machine: `inside()` resolves such a path against
its root, after symlinks, and gives None for anything that lands outside.
An absolute path is allowed only under an explicitly configured root.

A path that leaves its root by its text alone (`..`, an absolute path) is
refused before the file system is asked anything about it, so a refusal
never depends on, or tells, whether the outside file exists.
"""

from __future__ import annotations

import os

from mmjax.errors import MmjaxError


def _within(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def inside(root: str, path: str, *, absolute_root: str = "") -> str | None:
  """The real path of `path` (relative to `root`) if it stays inside `root`,
  else None. An absolute `path` must stay inside `absolute_root`; with no
  `absolute_root` every absolute path is refused."""
  if not isinstance(path, str) or not path or "\0" in path:
    return None
  if os.path.isabs(path):
    if not absolute_root:
      return None
    root = absolute_root
  real_root = os.path.realpath(root)
  # Lexical check first: `..` and absolute escapes never reach the disk.
  joined = os.path.normpath(os.path.join(real_root, path))
  if not _within(joined, real_root):
    return None
  real = os.path.realpath(joined)   # Follows symlinks inside the root.
  return real if _within(real, real_root) else None


def require_inside(root: str, path: str, where: str) -> str:
  """inside(root, path), or an MmjaxError naming `where` (the file that
  named the path)."""
  real = inside(root, path)
  if real is None:
    raise MmjaxError(f"{where}: path {path!r} leaves the folder {root}; "
                     "refused")
  return real
