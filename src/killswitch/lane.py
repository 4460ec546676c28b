"""The stream's turn on the loop: after everything else that is ready, within a bound.

A kill's cancels come back as a burst of user-stream pushes on every account at once (150 on
workload S), at the moment its acknowledgements arrive. Each acknowledgement reaches the wave
that waits on it through a chain of task steps (the socket's reader, the request, the
connector's gather, the wave's), one loop iteration each; and in each iteration every stream
task that is ready used to spend its slice of pushes first. Three accounts' pumps and
consumers, half a millisecond each, made each step of that chain wait up to 3 ms, and the
verification read waited 10 to 20 ms behind work nothing was waiting for.

Stream tasks now take turns here, a slice each. While a kill runs (a trigger's or a one-shot's;
a sweep is background work itself: `Lane.first`), a slice runs when no other callback is ready
(the kill's next step, a Kafka alert, a timer), and past `MAX_WAIT_S` every waiting slice runs
(a loop that is never idle still leaves the stream work a share that grows with how much of it
waits). With no kill running, every turn asked for comes at the next loop iteration, as a
plain yield did: a busy account's tracker keeps up with its stream (the lane at first deferred
every slice, and the contract suite's busy BingX account fell 300 ms behind). The Kafka event
publisher, the alert consumer's offset commits and the venue limits file take turns too. The
lane only decides when a slice runs, not what it does: each account's events are handled in
the order they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Iterator, Sized

MAX_WAIT_S = 0.002  # the longest a stream slice waits for other ready work to run first

_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Lane] = weakref.WeakKeyDictionary()


class Lane:
    """Turns for background work on one loop: while a kill runs, one slice per loop iteration
    at most, behind the loop's other ready work."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_wait_s: float = MAX_WAIT_S) -> None:
        # (no reference to the loop itself: `_lanes` would keep every loop alive)
        self.max_wait_s = max_wait_s
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()  # and when asked
        self._ticking = False
        # The loop's queue of ready callbacks (CPython's event loops keep one); without it
        # there is nothing to wait behind, and a turn comes at the next iteration.
        ready = getattr(loop, "_ready", None)
        self._ready: Sized | None = ready if isinstance(ready, Sized) else None
        self.deferred = 0  # iterations a turn waited behind other ready work (for tests)
        self._hot = 0  # kills running (`first`): only then does a turn wait for others

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        """While this is entered (a kill runs), turns wait behind other ready work; else every
        turn asked for comes at the next loop iteration, as a plain yield would."""
        self._hot += 1
        try:
            yield
        finally:
            self._hot -= 1

    async def turn(self) -> None:
        """Return at the next loop iteration; while a kill runs, once the loop has nothing
        else ready, and never later than `max_wait_s` after it was asked for."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((waiter, loop.time()))
        if not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick, loop)
        await waiter

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        waiters = self._waiters
        if not self._hot:
            due = len(waiters)  # no kill running: every turn asked for, as a yield each
            idle = 0
        else:
            # A kill runs: every turn asked for `max_wait_s` ago or more comes now (review 101:
            # timed from the last turn given, one idle iteration in each 2 ms let one waiter
            # through at a time, and thirty waited 46 ms); and one more when nothing else is
            # ready.
            oldest_allowed = loop.time() - self.max_wait_s
            due = 0
            for _, asked in waiters:
                if asked > oldest_allowed:
                    break
                due += 1
            idle = 0 if self._ready else 1
        woken = 0
        while waiters and (due > 0 or woken < idle):
            waiter, _ = waiters.popleft()
            due -= 1
            if not waiter.done():  # (a cancelled task's turn is skipped)
                waiter.set_result(None)
                woken += 1
        if waiters and self._hot and not woken:
            self.deferred += 1
        if waiters:
            loop.call_soon(self._tick, loop)  # the next turn, an iteration later at the soonest
        else:
            self._ticking = False


def lane() -> Lane:
    """The running loop's lane (one per loop: two lanes would each wait behind the other)."""
    loop = asyncio.get_running_loop()
    found = _lanes.get(loop)
    if found is None:
        found = _lanes[loop] = Lane(loop)
    return found
