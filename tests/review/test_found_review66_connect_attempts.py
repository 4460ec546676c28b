"""Review 66 (suspicion, confirmed here): nothing bounded Binance WebSocket connection attempts,
which the venue caps at 300 per 5 minutes per IP [BN-WS "Connection limits"]. Each session and
user stream reconnects with a backoff that resets once a connection has lasted 5 or 10 s, so
on a network that flaps every few seconds 25 accounts reconnect far past the cap.

Every Binance ws connection (ws-api session, user stream) now takes an attempt from one
sliding window per endpoint, shared by the process's accounts and split over `limits.daemons`.
"""

from __future__ import annotations

import time

import pytest

from killswitch.exchanges import budget
from killswitch.exchanges.binance import session
from killswitch.exchanges.binance.session import (
    CONNECT_ATTEMPTS,
    STREAM_SHARE,
    ConnectAttempts,
    _connect,
)
from tests.fixtures.binance import binance_venue


async def test_connections_past_the_per_ip_cap_wait_for_the_window() -> None:
    async with binance_venue() as venue:
        url = venue.sim.ws_api_url
        attempts = session.connect_attempts(url)
        waits: list[float] = []
        now = time.monotonic()  # after any attempt the rig made on the real clock

        async def sleep(wait_s: float) -> None:  # the window's clock moves as it sleeps
            nonlocal now
            waits.append(wait_s)
            now += wait_s

        attempts._clock = lambda: now
        attempts._sleep = sleep
        for _ in range(CONNECT_ATTEMPTS + 1):
            ws = await _connect(url, 5.0)
            await ws.close()
        assert waits == [pytest.approx(300.0)]  # the one past the cap waited out the window
        assert attempts.waited == 1


async def test_the_cap_is_split_over_the_daemons_sharing_the_ip() -> None:
    now = 0.0
    slept: list[float] = []

    async def sleep(wait_s: float) -> None:
        nonlocal now
        slept.append(wait_s)
        now += wait_s

    attempts = ConnectAttempts(clock=lambda: now, sleep=sleep)
    budget.set_fleet(4)
    try:
        for i in range(CONNECT_ATTEMPTS // 4 + 1):
            now = float(i)  # one a second: all inside one 300 s window
            await attempts.acquire("test")
    finally:
        budget.set_fleet(1)
    assert slept == [pytest.approx(300.0 - CONNECT_ATTEMPTS // 4)]


async def test_user_streams_leave_the_kill_s_sessions_their_part_of_the_window() -> None:
    """Review 73: flapping user streams could use the whole window, and a ws-api session the
    kill needs (REST trading off) then waited up to 300 s. Streams take at most 3/4 of it."""
    now = 0.0
    slept: list[float] = []

    async def sleep(wait_s: float) -> None:
        nonlocal now
        slept.append(wait_s)
        now += wait_s

    attempts = ConnectAttempts(clock=lambda: now, sleep=sleep)
    for _ in range(int(CONNECT_ATTEMPTS * STREAM_SHARE)):
        await attempts.acquire("stream", share=STREAM_SHARE)
    await attempts.acquire("session")  # a session still gets in at once
    assert slept == []
    await attempts.acquire("stream", share=STREAM_SHARE)  # a stream waits for the window
    assert slept == [pytest.approx(300.0)]
