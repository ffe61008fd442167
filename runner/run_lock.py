"""One live run per run folder: ``<output_dir>/.lock`` holds the pid and host of the process that runs it.

A second run of the same id while the first is alive is refused (``RunLockedError``); a lock left by a process that
died (kill -9, a node reboot on the same host) is taken over. A lock of another host cannot be checked: it is
refused with the lock's path, to delete by hand once no run is live. Under ``torchrun`` only rank 0 takes the lock.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from runner.errors import RunError

LOCK_FILE = ".lock"


class RunLockedError(RunError):
    """Another live process runs the same run id (same run folder)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


class RunLock:
    """``with RunLock(output_dir, run_id): …`` — held for the duration of the run (rank 0 only)."""

    def __init__(self, output_dir: str | Path, run_id: str):
        self.path = Path(output_dir) / LOCK_FILE
        self.run_id = run_id
        self.held = False

    def acquire(self) -> "RunLock":
        if not _is_rank_zero():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = None, None, None
            try:
                fresh = time.time() - self.path.stat().st_mtime < 10
            except OSError:
                fresh = False
            if fresh:  # its owner may be writing it right now
                raise RunLockedError(f"run {self.run_id} is starting in another process; lock {self.path}") from None
        if owner is not None and host != socket.gethostname():
            raise RunLockedError(f"run {self.run_id} may be running on {host} (pid {pid}): {self.path} is its lock; "
                                 f"delete it if no run of this id is live")
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise RunLockedError(f"run {self.run_id} is already running (pid {pid} on {host}); lock {self.path}")
        if pid == os.getpid():
            raise RunLockedError(f"run {self.run_id} is already running in this process; lock {self.path}")
        self.path.unlink(missing_ok=True)  # its owner is dead (or the file unreadable): a stale lock

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
