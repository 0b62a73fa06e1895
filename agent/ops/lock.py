"""One long-running agent per state directory: an exclusive lock file held for the life of the process.

Two `face-agent run` on one state dir would both send the same outbox rows and both write the gallery. The
lock is `flock` on `<state_dir>/.face-agent-<role>.lock` (stdlib fcntl; the kernel drops it when the process
dies, so a kill -9 leaves no stale lock to clean up). The file holds the owner's pid, for the message only.
`enroll`, `gallery` and `erase` take no lock: SQLite serialises their writes and `run` picks them up on
SIGHUP.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from agent.errors import FatalError


class StateDirInUse(FatalError):
    code = "state_dir_in_use"


class StateLock:
    """`acquire()` at start, `release()` at stop (idempotent)."""

    def __init__(self, state_dir: Path, role: str) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / f".face-agent-{role}.lock"
        self._role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(
                f"another face-agent {self._role} uses {self.state_dir}, pid {owner}: stop it first, or give "
                "this one its own state dir (--state-dir or state_dir in the config)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
