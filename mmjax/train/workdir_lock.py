"""One run per workdir: `<workdir>/.lock` names the owner (pid and host).

Taken with O_CREAT|O_EXCL, so of two runs started together exactly one gets
it; the other ends with "workdir W is in use by pid N on HOST". A lock whose
owner is gone (same host, no such pid, e.g. after SIGKILL) is stale and is
taken over with a warning. A lock held from another host cannot be checked
from here and is always respected.

On a workdir in an object store (`scheme://...`), which epath gives no
exclusive create or rename, the lock object also holds a random id and a
heartbeat time that a thread of the owner renews every HEARTBEAT_SECONDS.
A lock is refused with the same error unless it is stale: its owner is a
dead process on this host, or its heartbeat is older than EXPIRE_SECONDS (a
run that crashed or was killed elsewhere), which is taken over with a
warning. Taking it is: write the record, wait SETTLE_SECONDS, read it back;
of runs that write within that window only the last writer reads its own
record, so only it goes on. The hosts' clocks must agree to within
EXPIRE_SECONDS - HEARTBEAT_SECONDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

from mmjax.errors import MmjaxError

FILE = ".lock"
HEARTBEAT_SECONDS = 30.0
EXPIRE_SECONDS = 300.0   # Ten missed heartbeats.
SETTLE_SECONDS = 1.0

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
    self.path = (os.path.join(workdir, FILE) if _is_local(workdir)
                 else str(epath.Path(workdir) / FILE))
    self._log = log
    self._owner = {"pid": os.getpid(), "host": socket.gethostname()}
    self._id = uuid.uuid4().hex   # Tells this lock from an earlier one of the pid.
    self._held = False
    self._stop = threading.Event()
    self._beat_thread = None

  def check_free(self) -> None:
    """The refusal `acquire` would give, without taking the lock: lets a run
    fail before its setup rather than after."""
    if _is_local(self.workdir) and not os.path.exists(self.path):
      return
    owner = self._read_owner()
    if owner and not self._is_stale(owner):
      raise self._in_use(owner)

  def acquire(self) -> None:
    if not _is_local(self.workdir):
      self._acquire_remote()
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
        owner = json.loads(epath.Path(self.path).read_text())
      return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):   # Gone, or caught half written.
      return {}

  def _in_use(self, owner: dict) -> MmjaxError:
    return MmjaxError(f"workdir {self.workdir} is in use by pid "
                      f"{owner.get('pid', '?')} on {owner.get('host', '?')}")

  def _is_stale(self, owner: dict) -> bool:
    return self._stale_because(owner) is not None

  def _stale_because(self, owner: dict) -> str | None:
    """Why the lock of `owner` is stale (for the warning), or None: its
    owner is a dead process on this host, or (remote) its heartbeat expired."""
    pid, host = owner.get("pid"), owner.get("host")
    if isinstance(pid, int) and host == self._owner["host"] and not _alive(pid):
      return f"pid {pid} on {host} is gone"
    if _is_local(self.workdir):
      return None
    silent = time.time() - self._heartbeat(owner)
    if silent > EXPIRE_SECONDS:
      return f"pid {pid} on {host} sent no heartbeat for {silent:.0f}s"
    return None

  def _heartbeat(self, owner: dict) -> float:
    """The owner's last heartbeat; the object's modification time for a
    record without one."""
    beat = owner.get("heartbeat")
    if isinstance(beat, (int, float)):
      return float(beat)
    try:
      return float(epath.Path(self.path).stat().mtime)
    except OSError:
      return 0.0

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

  def _acquire_remote(self) -> None:
    owner = self._read_owner_once()
    if owner:
      why = self._stale_because(owner)
      if why is None:
        raise self._in_use(owner)
      self._log(f"WARNING: taking over the stale lock of workdir {self.workdir} "
                f"({why})")
    self._write_record()
    time.sleep(SETTLE_SECONDS)   # Another run's write in this window wins.
    owner = self._read_owner_once()
    if not self._mine(owner):
      if not owner:
        raise MmjaxError(f"cannot take the lock {self.path}: it keeps changing")
      raise self._in_use(owner)
    self._stop.clear()
    self._beat_thread = threading.Thread(target=self._beat, daemon=True,
                                         name="mmjax-workdir-lock")
    self._beat_thread.start()

  def _write_record(self) -> None:
    record = dict(self._owner, id=self._id, heartbeat=time.time())
    epath.Path(self.path).write_text(json.dumps(record))

  def _mine(self, owner: dict) -> bool:
    if _is_local(self.workdir):
      return owner == self._owner
    return (owner.get("id") == self._id
            and all(owner.get(k) == v for k, v in self._owner.items()))

  def _beat(self) -> None:
    """Renews the heartbeat until released; stops if another run took the
    lock (this one missed heartbeats for EXPIRE_SECONDS)."""
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        owner = self._read_owner_once()
        if owner and not self._mine(owner):
          self._log(f"WARNING: lost the lock of workdir {self.workdir} to pid "
                    f"{owner.get('pid', '?')} on {owner.get('host', '?')}: two "
                    "runs may now write to it")
          return
        self._write_record()
      except Exception as e:   # A network error: the next beat tries again.
        self._log(f"WARNING: could not renew the lock of workdir {self.workdir} "
                  f"({type(e).__name__}: {str(e)[:200]})")

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    _held.remove(self)
    if self._beat_thread is not None:
      self._stop.set()
      self._beat_thread.join(timeout=30)
      self._beat_thread = None
    if self._mine(self._read_owner()):   # Never remove another's lock.
      if _is_local(self.workdir):
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
      else:
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
