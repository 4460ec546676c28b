"""Hand work to the engine until it is journaled: a record or trigger is never skipped for a
journal error (a full disk, a slow fsync), and a stop leaves it unacknowledged to come back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from killswitch.backoff import Backoff, wait_or_stop

log = logging.getLogger(__name__)

T = TypeVar("T")


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
