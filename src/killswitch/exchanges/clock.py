"""Server-time offset per venue: measured at start, refreshed in the background.

No kill waits on a time request: signing reads `now_ms()`, which is local time plus the last
measured offset. A `ClockSkew` answer calls `sync()` once and the request is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerClock:
    wall: Callable[[], float] = time.time
    offset_ms: float = 0.0
    last_rtt_ms: float = 0.0
    synced_at: float = 0.0
    syncs: int = 0  # syncs done: "a sync since" is told by this, never by a wall clock

    def now_ms(self) -> int:
        return int(self.wall() * 1000 + self.offset_ms)

    async def sync(
        self,
        fetch: Callable[[], Awaitable[int]],
        *,
        paid: Callable[[], Awaitable[None]] | None = None,
    ) -> float:
        """Measure the offset with one server-time request; returns the new offset in ms.

        `paid` waits for the request's rate budget before the clock starts: a wait for the
        budget inside the timed part would count as network time and skew the offset by half
        of it. `fetch` then sends without charging again."""
        if paid is not None:
            await paid()
        t0 = self.wall()
        server_ms = await fetch()
        t1 = self.wall()
        self.last_rtt_ms = (t1 - t0) * 1000
        self.offset_ms = server_ms - (t0 + t1) / 2 * 1000
        self.synced_at = t1
        self.syncs += 1
        return self.offset_ms

    async def keep_synced(
        self,
        fetch: Callable[[], Awaitable[int]],
        interval_s: float,
        *,
        paid: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Resync every `interval_s` until cancelled; a failed sync is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync(fetch, paid=paid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: keep the old offset, retry
                log.warning("server time resync failed error=%s", exc)
