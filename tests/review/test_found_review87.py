"""Review 87: a server-time sync across a wall-clock step, and a request the closing pool cancelled.

F1. `ServerClock.sync` timed its read on the wall clock alone and took any sample. NTP stepping
the wall clock back 12 s while a sync was on its way gave an offset wrong by half the step (6 s,
past BingX's 5 s recvWindow), and the sync still counted: a late "timestamp mismatch" from a
request signed meanwhile looked answered by it and nothing resynced. A sync is now timed on a
steady clock too; a sample the wall stepped during is discarded, never counted, and read again;
when every sample was stepped the sync raises `ClockStepped` (a `Transient`) and its caller
retries. The round trip in BingX's epoch margin is never negative.

F2. Closing a connector makes aiohttp cancel the requests waiting for a pool slot: their caller,
which nobody cancelled, ended "cancelled" instead of hearing a failure. It now hears `Transient`
(never sent), on the late-read path (BingX) and the plain one (Binance) alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from killswitch.exchanges.base import IpBanned, RateLimited, Transient
from killswitch.exchanges.bingx.connector import BingxExchange
from killswitch.exchanges.bingx.rest import BingxCharges
from killswitch.exchanges.bingx.venue import CANCEL, EPOCH_MARGIN_S
from killswitch.exchanges.clock import ClockStepped, ServerClock
from killswitch.sim.bingx import BingxSim
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.conftest import eventually
from tests.fixtures.answers import install
from tests.fixtures.binance import binance_venue
from tests.fixtures.bingx import account_keys
from tests.review.bingx_rig import bx0_exchange

SYMBOLS = ["CA-USDT"]
STEP_S = 12.0  # NTP steps the wall clock back this far


class Clocks:
    """A steady clock, a wall clock that NTP may step, and the venue's true time."""

    def __init__(self) -> None:
        self.steady_s = 1000.0
        self.wall_error_s = 0.0  # the wall clock minus the true time

    def wall(self) -> float:
        return self.steady_s + self.wall_error_s

    def steady(self) -> float:
        return self.steady_s

    def server_ms(self) -> int:
        return int(self.steady_s * 1000)

    def fetch(self, steps: list[float]) -> Callable[[], Awaitable[int]]:
        """A server-time read taking 30 ms, the wall stepped by the next of `steps` in the
        middle of it (none once they run out)."""

        async def read() -> int:
            self.steady_s += 0.015
            if steps:
                self.wall_error_s += steps.pop(0)
            server_ms = self.server_ms()
            self.steady_s += 0.015
            return server_ms

        return read


def _sim() -> BingxSim:
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    return sim


def _offset_error_ms(clock: ServerClock, clocks: Clocks) -> float:
    return clock.now_ms() - clocks.server_ms()


async def test_a_sync_the_wall_clock_stepped_back_during_is_read_again() -> None:
    """The review's case: the wall stepped back while the keeper's read was on its way, and a
    cancel signed meanwhile (12 s behind) is answered "timestamp mismatch" late. The stepped
    sample is read again, so the one sync that counts measured the clock right."""
    exchange = bx0_exchange(_sim())  # never started: only its clock and late resync are used
    clocks = Clocks()
    exchange.clock.wall = clocks.wall  # a test's wall alone, as the review's probe set it
    await exchange.clock.sync(clocks.fetch([]))
    signed_syncs = exchange.clock.syncs  # a cancel signed while the next sync is on its way
    await exchange.clock.sync(clocks.fetch([-STEP_S]))
    assert exchange.clock.syncs == signed_syncs + 1  # the stepped sample never counted
    assert abs(_offset_error_ms(exchange.clock, clocks)) < 50  # inside any recvWindow
    assert exchange.clock.last_rtt_ms >= 0


async def test_a_sync_the_wall_clock_stepped_forward_during_is_read_again() -> None:
    """A step forward leaves the round trip positive: only the steady clock shows it."""
    clocks = Clocks()
    clock = ServerClock(wall=clocks.wall, steady=clocks.steady)
    paid: list[None] = []

    async def pay() -> None:
        paid.append(None)

    await clock.sync(clocks.fetch([STEP_S]), paid=pay)
    assert abs(_offset_error_ms(clock, clocks)) < 50
    assert clock.syncs == 1
    assert len(paid) == 2  # the sample read again was paid for again
    assert 0 <= clock.last_rtt_ms < 100


async def test_a_sync_stepped_in_every_sample_keeps_the_offset_and_counts_nothing() -> None:
    clocks = Clocks()
    clock = ServerClock(wall=clocks.wall, steady=clocks.steady)
    await clock.sync(clocks.fetch([]))
    before = (clock.offset_ms, clock.last_rtt_ms, clock.synced_at, clock.syncs)
    with pytest.raises(ClockStepped) as caught:
        await clock.sync(clocks.fetch([-STEP_S, STEP_S / 2]))
    assert isinstance(caught.value, Transient)  # a kill waiting on the resync backs off
    assert (clock.offset_ms, clock.last_rtt_ms, clock.synced_at, clock.syncs) == before


async def test_a_late_skew_after_a_sync_that_measured_nothing_still_resyncs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchange = bx0_exchange(_sim())  # never started
    clocks = Clocks()
    exchange.clock.wall = clocks.wall
    exchange.clock.steady = clocks.steady
    await exchange.clock.sync(clocks.fetch([]))
    signed_syncs = exchange.clock.syncs
    with pytest.raises(ClockStepped):
        await exchange.clock.sync(clocks.fetch([-STEP_S, -0.5]))
    resynced = asyncio.Event()

    async def sync_clock(priority: Any) -> float:
        resynced.set()
        return 0.0

    monkeypatch.setattr(exchange, "sync_clock", sync_clock)
    exchange._late_skew(signed_syncs)  # the sync that failed answered nothing
    await asyncio.wait_for(resynced.wait(), 5)
    await exchange.close()


async def test_every_caller_of_a_sync_hears_a_stepped_one_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start-up fails `Transient` (and a retried start syncs); the keeper loop logs and syncs
    on its next round; a kill's in-band resync raises `Transient`, which the kill backs off
    from; a late resync logs and ends."""
    sim = _sim()
    await sim.start()
    exchange = bx0_exchange(sim, clock_refresh_s=0.05)
    real_wall = exchange.clock.wall
    ahead = [0.0]
    stepping = [True]
    fetch = exchange._sent_time

    async def stepped_fetch() -> int:
        # Forward: a wall stepped back at every read would run the budgets' windows back.
        if stepping[0]:
            ahead[0] += STEP_S
        return await fetch()

    monkeypatch.setattr(exchange, "_sent_time", stepped_fetch)
    try:
        exchange.clock.wall = lambda: real_wall() + ahead[0]
        exchange.clock.steady = time.monotonic
        with pytest.raises(ClockStepped):
            await exchange.start()
        assert exchange.clock.syncs == 0
        stepping[0] = False
        await exchange.start()  # a failed start may be retried
        syncs = exchange.clock.syncs
        assert syncs == 1

        stepping[0] = True
        with pytest.raises(Transient):
            await exchange.resync_clock()  # what `SignedRest.resyncing` awaits on a ClockSkew
        exchange._late_skew(exchange.clock.syncs)
        late = exchange._late_sync
        assert late is not None
        await late  # logged, not raised
        assert exchange.clock.syncs == syncs
        stepping[0] = False  # the keeper, still running, syncs again
        await eventually(lambda: exchange.clock.syncs > syncs, timeout_s=5)
    finally:
        await exchange.close()
        await sim.stop()


@pytest.mark.parametrize("banned", [False, True])
async def test_an_epoch_wait_is_never_shortened_by_a_negative_round_trip(banned: bool) -> None:
    exchange = bx0_exchange(_sim())  # never started: only its budgets are used
    charges = exchange.rest.charges
    assert isinstance(charges, BingxCharges)
    exchange.clock.last_rtt_ms = -STEP_S * 1000  # as a sample across a step back measured
    epoch_ms = exchange.clock.now_ms() + 3000
    msg = f"request frequency is too high, unblocked after {epoch_ms}"
    wait_s = 3.0
    if banned:
        error: RateLimited = IpBanned(msg, retry_after_s=wait_s)
        charges.banned(error, msg, None)
    else:
        error = RateLimited(msg, retry_after_s=wait_s)
        charges.throttled(error, CANCEL, msg, None)
    assert error.retry_after_s >= wait_s + EPOCH_MARGIN_S


async def _close_while_one_waits_for_the_pool(
    call: Callable[[str], Awaitable[Any]], close: Callable[[], Awaitable[None]]
) -> tuple[Any, asyncio.Task[Any], asyncio.Task[Any]]:
    """One call holding the pool's only connection, one waiting for it and one cancelled by
    its caller while waiting; then `close` (the pool's close cancels the waits)."""
    first = asyncio.create_task(call("111"))
    await asyncio.sleep(0.3)
    waiting = asyncio.create_task(call("222"))
    cancelled = asyncio.create_task(call("333"))
    await asyncio.sleep(0.3)  # both wait for the connection (the connect timeout is 2 s)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    await close()
    _, answer = await asyncio.gather(first, waiting, return_exceptions=True)
    return answer, waiting, cancelled


def _never_sent(answer: Any) -> bool:
    return isinstance(answer, Transient) and "pool closed" in answer.msg


async def test_a_bingx_request_the_closing_pool_cancelled_fails_never_sent() -> None:
    sim = _sim()
    await sim.start()
    exchange: BingxExchange = bx0_exchange(sim, timeout_s=4.0)
    exchange.transport.pool_size = 1
    try:
        await exchange.start()
        sim.faults.add(Fault(FaultKind.STALL, endpoint=CANCEL, stall_s=5.6, count=1))
        answer, waiting, cancelled = await _close_while_one_waits_for_the_pool(
            lambda order_id: exchange.cancel_order(SYMBOLS[0], order_id),
            exchange.transport.close,
        )
        assert not waiting.cancelled()
        assert _never_sent(answer), answer
        assert cancelled.cancelled()  # a cancel meant for the caller stays one
        await eventually(lambda: not exchange.errors._pending.get(CANCEL), timeout_s=10)
    finally:
        await exchange.close()
        await sim.stop()


async def test_a_binance_request_the_closing_pool_cancelled_fails_never_sent() -> None:
    async with binance_venue() as venue:
        exchange = venue.exchange("acct0", use_ws_api=False, timeout_s=4.0)
        exchange.transport.pool_size = 1
        await exchange.start()
        venue.sim.faults.add(Fault(FaultKind.STALL, endpoint="/api/v3/order", stall_s=5.6, count=1))
        answer, waiting, cancelled = await _close_while_one_waits_for_the_pool(
            lambda order_id: exchange.cancel_order("BTCUSDT", order_id),
            exchange.transport.close,
        )
        assert not waiting.cancelled()
        assert _never_sent(answer), answer
        assert cancelled.cancelled()
