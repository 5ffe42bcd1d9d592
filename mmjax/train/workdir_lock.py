"""One run per workdir: `<workdir>/.lock` names the owner (pid and host).

Taken with O_CREAT|O_EXCL, so of two runs started together exactly one gets
it; the other ends with "workdir W is in use by pid N on HOST". A lock whose
owner is gone (same host, no such pid, e.g. after SIGKILL) is stale and is
taken over with a warning. A lock held from another host cannot be checked
from here and is always respected. On a workdir that is not a local path
(`scheme://...`) there is no atomic create: the lock is a best effort, and
the log says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from mmjax.errors import MmjaxError

FILE = ".lock"

# Locks this process holds: a hard exit (a second Ctrl-C) releases them
# without unwinding the stack.
_held: list["WorkdirLock"] = []


def _is_local(path: str) -> bool:
  return "://" not in path


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # Someone else's process: alive.
    return True
  return True


class WorkdirLock:
  """Context manager: holds `<workdir>/.lock` while inside."""

  def __init__(self, workdir: str, log=print):
    self.workdir = workdir
    self.path = os.path.join(workdir, FILE)
    self._log = log
    self._owner = {"pid": os.getpid(), "host": socket.gethostname()}
    self._held = False

  def check_free(self) -> None:
    """The refusal `acquire` would give, without taking the lock: lets a run
    fail before its setup rather than after."""
    if _is_local(self.workdir) and os.path.exists(self.path):
      owner = self._read_owner()
      if owner and not self._is_stale(owner):
        raise self._in_use(owner)

  def acquire(self) -> None:
    if not _is_local(self.workdir):
      self._acquire_best_effort()
    else:
      for _ in range(3):   # A stale lock removed, then another try.
        if self._try_create():
          break
        if not self._take_over_if_stale():
          raise self._in_use(self._read_owner())
      else:
        raise MmjaxError(f"cannot take the lock {self.path}: it keeps changing")
    self._held = True
    _held.append(self)

  def _try_create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self._owner, f)
    return True

  def _read_owner(self) -> dict:
    """The owner in the lock file; {} if there is none. A lock created a
    moment ago may not hold its owner yet: read again for a short while."""
    for _ in range(10):
      owner = self._read_owner_once()
      if owner or not os.path.exists(self.path):
        return owner
      time.sleep(0.05)
    return owner

  def _read_owner_once(self) -> dict:
    try:
      if _is_local(self.path):
        with open(self.path) as f:
          owner = json.load(f)
      else:
        from etils import epath
        owner = json.loads(epath.Path(self.path).read_text())
      return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):   # Gone, or caught half written.
      return {}

  def _in_use(self, owner: dict, hint: str = "") -> MmjaxError:
    return MmjaxError(f"workdir {self.workdir} is in use by pid "
                      f"{owner.get('pid', '?')} on {owner.get('host', '?')}{hint}")

  def _is_stale(self, owner: dict) -> bool:
    """Whether the owner is a dead process on this host."""
    pid, host = owner.get("pid"), owner.get("host")
    return isinstance(pid, int) and host == self._owner["host"] and not _alive(pid)

  def _take_over_if_stale(self) -> bool:
    """Removes the lock if its owner is a dead process on this host; True
    when the caller should try again to create it."""
    owner = self._read_owner()
    if not self._is_stale(owner):
      return False
    # Moved aside, then checked: of two runs taking over at once, the later
    # one must not delete the lock the earlier one just created.
    aside = f"{self.path}.stale.{os.getpid()}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:   # Another run moved it first.
      return True
    with open(aside) as f:
      moved = f.read()
    if not self._same_owner(moved, owner):
      with contextlib.suppress(FileExistsError):
        os.link(aside, self.path)   # Someone's fresh lock: put it back.
    else:
      self._log(f"WARNING: taking over the stale lock of workdir {self.workdir} "
                f"(pid {owner['pid']} on {owner['host']} is gone)")
    os.remove(aside)
    return True

  @staticmethod
  def _same_owner(text: str, owner: dict) -> bool:
    try:
      return json.loads(text) == owner
    except ValueError:
      return False

  def _acquire_best_effort(self) -> None:
    from etils import epath   # Only for workdirs that are not local paths.
    path = epath.Path(self.path)
    self._log(f"workdir {self.workdir} is not a local path: its lock is a best "
              "effort (two runs started together may both get it)")
    if path.exists():
      raise self._in_use(self._read_owner(), f" (if it is not, delete {self.path})")
    path.write_text(json.dumps(self._owner))

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    _held.remove(self)
    if self._read_owner() == self._owner:   # Never remove another's lock.
      if _is_local(self.workdir):
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      else:
        from etils import epath
        epath.Path(self.path).unlink(missing_ok=True)

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def release_all() -> None:
  """Releases every lock this process holds (before a hard exit)."""
  for lock in list(_held):
    lock.release()
