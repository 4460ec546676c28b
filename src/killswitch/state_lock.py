"""Hold a state directory for one daemon: an exclusive lock on `state_dir/lock` for its life.

Two daemons on one state_dir each compact the journal from their own memory, so each drops
the other's latches from disk, and each deletes the other's MEXC listenKey when it stops
(review 79). The daemon takes the lock before it reads or writes anything else there; a second
daemon is refused, naming the directory and the holder's PID (written in the lock file). The
kernel releases the lock when the holder dies, however it dies: there is nothing stale to clean
up. Commands that only read the state_dir beside a daemon (preflight, status, the live drill)
take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = "lock"


class StateDirUnavailable(Exception):
    """The state directory cannot be held: another daemon holds it, or its lock cannot open."""


class StateDirLock:
    """The lock on `state_dir/lock`, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting and write our PID in it; raise `StateDirUnavailable`
        when another process holds it or the lock file cannot be opened."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirUnavailable(
                f"state_dir {self.state_dir} is in use by another killswitch daemon "
                f"(pid {holder}, holding {self.path}): one daemon per state_dir; stop that one, "
                "or give this one a state_dir of its own"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateDirUnavailable(
                f"state_dir {self.state_dir}: cannot lock {self.path}: {exc.strerror or exc}"
            ) from None
        self._fd = fd
        pid = f"{os.getpid()}\n".encode()
        # Opened read-only (a read-only state_dir): held all the same, its PID unwritten.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race the next daemon's lock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno != errno.EROFS or not self.path.exists():
                    raise
                # flock needs no write access: a read-only state_dir is still held by one.
                return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StateDirUnavailable(
                f"state_dir {self.state_dir}: cannot open its lock {self.path}: "
                f"{exc.strerror or exc}"
            ) from None

    def __enter__(self) -> StateDirLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The PID the holder wrote in the lock file ("unknown" if it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
