"""Server-time offset per venue: measured at start, refreshed in the background.

No kill waits on a time request: signing reads `now_ms()`, which is local time plus the last
measured offset. A `ClockSkew` answer calls `sync()` once and the request is retried.

A sync is timed on the wall clock (what `now_ms()` reads) and on a steady one: a wall clock
stepped while the read was on its way (NTP) would measure the offset wrong by half the step,
so such a sample is discarded and read again (review 87).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from killswitch.exchanges.base import Transient

log = logging.getLogger(__name__)

# How far the wall clock may drift from the steady one over one sync and still be taken as
# unstepped: slewing moves them apart by 0.5 ms a second at most, and a sync lasts seconds.
STEP_TOLERANCE_MS = 10.0
SYNC_TRIES = 2  # samples per sync: a step spoils one, rarely the one right after it


class ClockStepped(Transient):
    """Every server-time sample of a sync straddled a step of the wall clock: the offset is
    unchanged. A request waiting on the resync was not sent again: retry it after a backoff."""


@dataclass(slots=True)
class ServerClock:
    wall: Callable[[], float] = time.time
    # Times a sync beside `wall` to see a step. None: `time.monotonic` beside the system's
    # wall clock; a wall a test set is taken as steady (one that steps it sets this too).
    steady: Callable[[], float] | None = None
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
        of it. `fetch` then sends without charging again.

        A sample the wall clock stepped during (or that took negative time) is discarded and
        taken again, paid again, up to `SYNC_TRIES` samples; it is never counted in `syncs`,
        which tells a late skew whether a sync since answered it. Raises `ClockStepped` when
        every sample was discarded: the old offset stays, the caller retries."""
        steady = self._steady()
        for _ in range(SYNC_TRIES):
            if paid is not None:
                await paid()
            t0, s0 = self.wall(), steady()
            server_ms = await fetch()
            t1, s1 = self.wall(), steady()
            wall_ms, steady_ms = (t1 - t0) * 1000, (s1 - s0) * 1000
            if wall_ms < 0 or abs(wall_ms - steady_ms) > STEP_TOLERANCE_MS:
                log.warning(
                    "server time sample discarded, the wall clock stepped during it "
                    "wall_ms=%.1f steady_ms=%.1f",
                    wall_ms,
                    steady_ms,
                )
                continue
            self.last_rtt_ms = max(0.0, steady_ms)
            self.offset_ms = server_ms - (t0 + t1) / 2 * 1000
            self.synced_at = t1
            self.syncs += 1
            return self.offset_ms
        raise ClockStepped(
            f"server time not measured: the wall clock stepped during {SYNC_TRIES} samples",
            endpoint="server time",
        )

    def _steady(self) -> Callable[[], float]:
        if self.steady is not None:
            return self.steady
        return time.monotonic if self.wall is time.time else self.wall

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
