"""How many requests one account may have in flight, so a 429 can never become a 418."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from killswitch.exchanges.base import AllowanceHeld, RateLimited, VenueError
from killswitch.kill.config import Clock, EngineConfig

T = TypeVar("T")


class Gate:
    """How many requests one account may have in flight, so a 429 can never become a 418.

    A venue that bans a client for sending "after a 429" counts requests already in flight
    when the 429 left. So after a quiet spell the first request goes alone (a probe); an OK
    answer opens the account to `max_in_flight` for `open_for_s`; a 429 closes it to one
    request at a time for `careful_s`. The probe is a cancel: it is never wasted.

    No probe is needed while `headroom_known` says the venue itself reported, moments ago,
    ample room on the account's limits (Binance's used weight, which counts every client
    behind the IP): the state is known, not guessed from a quiet spell.
    """

    def __init__(
        self,
        config: EngineConfig,
        clock: Clock,
        headroom_known: Callable[[], bool] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._headroom_known = headroom_known
        self._in_flight = 0
        self._ok_at = -1e18
        self._limited_at = -1e18
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def mode(self) -> str:
        now = self._clock()
        if now - self._limited_at < self._config.careful_s:
            return "careful"
        if not self._config.probe_first or now - self._ok_at < self._config.open_for_s:
            return "open"
        if self._headroom_known is not None and self._headroom_known():
            return "open"
        return "probe"

    def _limit(self) -> int:
        return self._config.max_in_flight if self.mode == "open" else 1

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        while self._in_flight >= self._limit():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self._in_flight += 1
        try:
            result = await call()
        except AllowanceHeld:
            raise  # held on our side (an error allowance): the venue saw nothing, throttles nothing
        except RateLimited:
            self._limited_at = self._clock()
            raise
        except VenueError:
            self._ok_at = self._clock()  # the venue answered: it is not throttling us
            raise
        else:
            self._ok_at = self._clock()
            return result
        finally:
            self._in_flight -= 1
            self._wake()

    def _wake(self) -> None:
        # Every waiter is woken and re-checks the limit itself. Waking only as many as there
        # are free slots loses a wake-up when a woken waiter is cancelled before it runs: the
        # slot it was given is then handed to nobody, and the waiters behind it wait for ever.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
