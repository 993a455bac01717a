"""One process per run: a lock file in the run's folder.

Two processes (two terminals, or ``inprocess`` beside a SLURM job) must never
train the same run folder: the older one's checkpoint would overwrite the newer
one's. The trainer holds ``<run>/lock`` for the whole attempt:

- the lock is an ``flock`` on that file, so the kernel (or the NFS lock
  manager) releases it when its holder dies, however it dies; a lock left by a
  dead holder is therefore taken over without anyone judging it stale;
- the file names its holder (host, pid, SLURM job id, start time), so a process
  that meets a held lock can say who holds it, and the report and
  ``harness.status`` can count the run as running;
- the holder removes the file before it lets go, and a taker checks that the
  file it locked is still the one at the path (a process that opened the old
  file just before it was removed would otherwise lock a deleted inode).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "lock"


def holder_text(holder: dict[str, Any] | None) -> str:
    """``host:pid (SLURM job J) since T`` for messages."""
    if not holder:
        return "an unknown process"
    text = f"{holder.get('host', '?')}:{holder.get('pid', '?')}"
    if holder.get("slurm_job"):
        text += f" (SLURM job {holder['slurm_job']})"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text


def read_holder(folder: Path) -> dict[str, Any] | None:
    """Who the lock file of ``folder`` names, or None where there is none (or it is
    being written)."""
    try:
        holder = json.loads((folder / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def is_held(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s lock, judged without taking it (taking
    it, even for an instant, could make a trainer skip the run). A holder on this host
    is alive if its pid is; one on another host is taken at its word."""
    holder = read_holder(folder)
    if holder is None:
        return (folder / LOCK_NAME).exists()
    if holder.get("host") != socket.gethostname():
        return True
    return _pid_alive(int(holder.get("pid", -1)))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(folder) as lock: if lock.acquired: train``; ``lock.holder``
    names the other process where it was not acquired."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.acquired = False
        self.holder: dict[str, Any] | None = None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.holder = read_holder(self.path.parent)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had just removed: try the new one
        self._fd = fd
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job": _slurm_job_id(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        data = (json.dumps(holder) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self.acquired, self.holder = True, holder
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        # remove first, then unlock: a waiting taker re-checks the path (see acquire)
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd, self.acquired = None, False


def _slurm_job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID", "")
