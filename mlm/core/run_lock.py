"""A lock file in output_dir, held by the running job: two runs never write into one folder.

`run.lock` holds the host, PID and start time of its owner. A second run is refused with a line that names
the owner; a lock left by a dead process on this host (a SIGKILL, a crash) is taken over with a warning.
Only the main process locks: the other ranks of a job follow it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from mlm.errors import ConfigError

logger = logging.getLogger("mlm")

LOCK_FILE = "run.lock"


def check(output_dir: str) -> None:
    """Refuse (one line) when another live run holds output_dir; changes nothing. Only the main process
    (RANK 0) looks: the others would find their own job's lock, or one of another host."""
    if os.environ.get("RANK", "0") != "0":
        return
    path = os.path.join(output_dir, LOCK_FILE)
    if os.path.exists(path) and _held_by_other(_read(path)):
        raise _in_use(path, _read(path))


def acquire(output_dir: str) -> None:
    path = os.path.join(output_dir, LOCK_FILE)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if _held_by_other(owner):
                raise _in_use(path, owner) from None
            if owner.get("pid") != os.getpid():  # (this process: an earlier in-process run that failed)
                logger.warning("%s: taking over the lock of pid %s on %s (started %s), which is no longer running",
                               path, owner.get("pid"), owner.get("host"), owner.get("started", "?"))
            os.remove(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        return


def release(output_dir: str) -> None:
    """Remove the lock if this process holds it."""
    path = os.path.join(output_dir, LOCK_FILE)
    owner = _read(path)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        os.remove(path)


def _held_by_other(owner: dict) -> bool:
    """True unless the owner is this process or a process of this host that is gone (an unreadable lock: held)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return True
    return owner["pid"] != os.getpid() and _alive(owner["pid"])


def _in_use(path: str, owner: dict) -> ConfigError:
    who = f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}" if owner else "unreadable lock"
    return ConfigError(f"output_dir: {os.path.dirname(path)} is in use by another run ({who}); wait for it to end, "
                       f"choose another output_dir, or delete {path} if that run is gone")


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
