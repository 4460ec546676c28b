"""Review 73's findings in the fixes of review 66.

A venue start cut short by `VenueService`'s start timeout left what `_open` had spawned running
(Binance: the ws-api session keeper), and the retried start spawned a second: the two replaced
each other's sessions for the connector's life. A failed start now leaves nothing running.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import killswitch.app as app
from killswitch.app import VenueService
from killswitch.backoff import Backoff
from killswitch.exchanges.binance import session as binance_session
from killswitch.exchanges.binance.connector import BinanceExchange
from tests.conftest import eventually
from tests.fixtures.binance import binance_venue


def _keepers(exchange: BinanceExchange) -> int:
    return sum(
        1
        for t in exchange._tasks
        if not t.done() and "_keep_session" in t.get_coro().__qualname__  # type: ignore[union-attr]
    )


async def test_a_start_cut_short_and_retried_keeps_one_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "START_TIMEOUT_S", 1.0)
    async with binance_venue() as venue:
        # The connection-attempt window is full for 2 s more (a flapping network spent it):
        # the start waits for its session past the start timeout.
        window = binance_session.connect_attempts(venue.sim.ws_api_url)
        spent = time.monotonic() - binance_session.CONNECT_WINDOW_S + 2.0
        window._times.extend([spent] * binance_session.CONNECT_ATTEMPTS)
        exchange = venue.exchange(timeout_s=3.0)
        service = VenueService(retry_backoff=lambda: Backoff(initial_s=0.2, max_s=0.2))
        service.exchanges.append(exchange)
        await service.start()
        try:
            assert service.failed_starts == {"binance/acct0": "TimeoutError"}
            assert _keepers(exchange) == 0  # the cut-short start left nothing running
            await eventually(lambda: not service.failed_starts, timeout_s=20.0)
            await eventually(lambda: exchange.session is not None, timeout_s=20.0)
            session = exchange.session
            await asyncio.sleep(1.0)  # a second keeper would have replaced it by now
            assert _keepers(exchange) == 1
            assert exchange.session is session
        finally:
            await service.stop()
