"""Client-side rate budget per venue account: never earn a 429, and never a 418.

Fixed windows aligned to the wall clock, as the venues count them (Binance per calendar minute).
Cancels (`Priority.KILL`) may spend up to `1 - kill_headroom` of the window; background reads
(`Priority.BACKGROUND`: reconciliation snapshots, keep-alives) only up to `background_share`, so
a kill always finds budget. The venue's own headers (`X-MBX-USED-WEIGHT-1M`, BingX's
`X-RateLimit-Requests-Remain`) correct our count upwards. A 429 blocks the budget for
`Retry-After`; a 418 blocks it until the ban expires.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from killswitch.exchanges.base import RateLimits


class Priority(enum.IntEnum):
    KILL = 0
    BACKGROUND = 1


@dataclass(slots=True)
class _Window:
    size_s: float
    start: float = 0.0
    used: float = 0.0

    def roll(self, now: float) -> None:
        start = math.floor(now / self.size_s) * self.size_s
        if start != self.start:
            self.start = start
            self.used = 0.0

    def resets_in(self, now: float) -> float:
        return max(0.0, self.start + self.size_s - now)


@dataclass(slots=True)
class RateBudget:
    limits: RateLimits
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    blocked_until: float = 0.0
    banned: bool = False
    waited_s: float = 0.0  # total time spent waiting for budget, for metrics
    _weight: _Window = field(init=False)
    _per_s: _Window = field(init=False)

    def __post_init__(self) -> None:
        self._weight = _Window(self.limits.window_s)
        self._per_s = _Window(1.0)

    def cap(self, priority: Priority) -> float:
        share = (
            1.0 - self.limits.kill_headroom
            if priority is Priority.KILL
            else self.limits.background_share
        )
        return max(1.0, self.limits.weight_per_window * share)

    def delay_for(self, weight: int, priority: Priority) -> float:
        """Seconds to wait before a request of `weight` fits; 0 when it fits now."""
        now = self.clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        self._weight.roll(now)
        if self._weight.used + weight > self.cap(priority):
            return self._weight.resets_in(now) + 0.001
        rps = self.limits.max_requests_per_s
        if rps is not None:
            self._per_s.roll(now)
            if self._per_s.used + 1 > rps:
                return self._per_s.resets_in(now) + 0.001
        return 0.0

    async def acquire(self, weight: int, priority: Priority = Priority.KILL) -> None:
        """Wait until `weight` fits under the cap for `priority`, then spend it."""
        while (delay := self.delay_for(weight, priority)) > 0:
            self.waited_s += delay
            await self.sleep(delay)
        self._weight.used += weight
        if self.limits.max_requests_per_s is not None:
            self._per_s.used += 1

    def observe_used(self, used: int) -> None:
        """The venue says this much weight is used in the current window."""
        self._weight.roll(self.clock())
        self._weight.used = max(self._weight.used, float(used))

    def observe_remaining(self, remaining: int) -> None:
        """The venue says this many requests remain in the current window."""
        self.observe_used(self.limits.weight_per_window - remaining)

    def block(self, seconds: float, *, banned: bool = False) -> None:
        """A 429 or 418: send nothing for `seconds`."""
        self.blocked_until = max(self.blocked_until, self.clock() + max(0.0, seconds))
        self.banned = self.banned or banned

    @property
    def used(self) -> float:
        self._weight.roll(self.clock())
        return self._weight.used
