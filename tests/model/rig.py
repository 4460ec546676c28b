"""Deterministic plumbing for the model checker: virtual time, an inline executor, a bad disk.

`VirtualTimeLoop` is an asyncio event loop whose clock moves only when nothing is ready to
run: it jumps straight to the next timer. Backoffs, deadlines, quiet windows, sweeps and
`stop(grace_s)` all take no wall time, and a history replays identically, so hypothesis can
shrink it. The loop's default executor runs `to_thread` work inline (the journal's fsync), so
no thread decides an interleaving.

`FaultyDisk` is a `journal.FileOps` that fails on command: a short write followed by ENOSPC,
an ENOSPC before anything is written, or an fsync that reports EIO.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import selectors
from collections.abc import Callable
from typing import Any

try:
    from killswitch.journal import FileOps
except ImportError:  # a journal without the seam: no disk faults
    FileOps = object  # type: ignore[misc,assignment]

HAS_FILE_OPS = FileOps is not object


class Stalled(Exception):
    """The loop has nothing ready and no timer: what it waits for can never happen."""


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine, as a thread would
            future.set_exception(exc)
        return future


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stalled("nothing is ready and no timer is set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: idle waits jump to the next timer at once."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self))
        self.set_default_executor(_InlineExecutor(max_workers=1))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)


class FaultyDisk(FileOps):  # type: ignore[misc,valid-type]
    """Journal system calls that fail once when armed (`short`, `enospc`, `fsync`)."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.fired = 0
        self._enospc_next = False

    def write(self, fd: int, data: bytes) -> int:
        if self._enospc_next:
            self._enospc_next = False
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.armed == "enospc":
            self.armed = None
            self.fired += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.armed == "short" and len(data) > 1:
            self.armed = None
            self.fired += 1
            self._enospc_next = True
            return int(super().write(fd, data[: len(data) // 2]))
        return int(super().write(fd, data))

    def fsync(self, fd: int) -> None:
        if self.armed == "fsync":
            self.armed = None
            self.fired += 1
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)
