"""Waiting between tries: exponential backoff with full jitter, a wait a stop cuts short, and
handing work to the engine until it is journaled (a journal error never skips a record or a
kill's end; a stop leaves it unacknowledged, to come back after the restart)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Backoff:
    """Exponential backoff with full jitter (a delay drawn from [0, cap]) that resets."""

    initial_s: float = 0.2
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return self.rng.uniform(0.0, cap)

    def reset(self) -> None:
        self.attempt = 0


async def wait_or_stop(stopping: asyncio.Event, delay_s: float) -> bool:
    """Sleep `delay_s`, or less if `stopping` is set meanwhile; say whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stopping.wait()
    return stopping.is_set()


class Stopping(Exception):
    """The daemon stops while a record could not be finished; it stays unacknowledged."""


async def until_journaled(
    what: str,
    call: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
    *,
    on_failure: Callable[[BaseException], None] | None = None,
    backoff: Backoff | None = None,
) -> T:
    """Run an engine call until it succeeds: a record is never skipped for a journal error.

    Raises `Stopping` when the daemon stops before it succeeded: the record stays
    unacknowledged and comes back after the restart.
    """
    backoff = backoff or Backoff(initial_s=0.05, max_s=2.0)
    while True:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_failure is not None:
                on_failure(exc)
            log.exception("not journaled, retrying what=%s", what)
            if stopping.is_set():
                raise Stopping(what) from exc
            await wait_or_stop(stopping, backoff.next_delay())
