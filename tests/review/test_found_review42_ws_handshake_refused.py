"""Found by review 42: a websocket handshake the venue refuses with 429 (Binance: too many
connection attempts, 300 per 5 min per IP) or 418 and a Retry-After was read as a dropped
connection: the ws-api session reconnected after 0.25 s, 0.5 s, ..., the stream supervisors
after their short backoff, and the budgets shared behind the IP never heard of it, so REST went
on too: hammering an IP told to stay away is how a 429 becomes a 418 ("No ban").

A refused handshake is now classified like a REST answer (the budgets are blocked for its
wait) and every reconnect waits it out. The simulator refuses handshakes too now, as a venue
that throttles or bans an IP does; before, it served them whatever the client had been told.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from killswitch.exchanges.base import Exchange
from killswitch.model import AccountRef
from killswitch.readiness.checks import headroom
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.venue import SimVenue
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.fixtures.binance import binance_venue
from tests.fixtures.bingx import bingx_venue
from tests.fixtures.mexc import mexc_sim

WAIT_S = 30


@asynccontextmanager
async def _venue(name: str) -> AsyncIterator[tuple[SimVenue, Callable[[], Any], str]]:
    """(sim, a maker of the connector, the websocket path)."""
    if name == "binance":
        async with binance_venue(1) as venue:
            yield venue.sim, lambda: venue.exchange("acct0"), "/ws-api/v3"
    elif name == "bingx":
        async with bingx_venue(1) as (sim, make):
            yield sim, lambda: make("bx0"), "/market"
    else:
        async with mexc_sim(accounts=1) as (sim, connect):
            yield sim, lambda: connect("acct0"), "/ws"


def _handshakes(sim: SimVenue, path: str) -> int:
    return sum(1 for e in sim.request_log if e.get("path") == path)


@pytest.mark.parametrize("venue", ["binance", "bingx", "mexc"])
async def test_a_handshake_refused_with_a_429_is_waited_out_by_every_connection(
    venue: str,
) -> None:
    async with _venue(venue) as (sim, make, path):
        sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint=path, retry_after_s=WAIT_S, count=1))
        exchange: Exchange = make()
        await exchange.start()
        tracker = OrderTracker(AccountRef(venue, "a"))
        supervisor = StreamSupervisor(exchange, tracker, reconcile_interval_s=None)
        task = asyncio.create_task(supervisor.run())
        try:
            await asyncio.sleep(3.0)
            # one refused handshake, then nothing on the path until the wait is over
            assert _handshakes(sim, path) == 1, sim.request_log
            _, blocked_s, _ = headroom(exchange)
            assert blocked_s > WAIT_S / 2  # the budgets behind the IP heard it
            assert not [k for k in sim.counters if "418" in k]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await exchange.close()
