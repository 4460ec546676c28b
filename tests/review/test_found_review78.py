"""Review 78: a wave of single BingX cancels earned the venue's error lock on `trade/cancel`.

BingX locks an API of an account after more than 20 error answers in 480 s (reference §3.5),
and an order already gone answers an error (80016). The connector's checks of the allowance
(`ErrorCounter.near` choosing the batch route, `hold_s` holding a request) counted only answers
already back, and a wave sends its requests at once: 26 single cancels of orders the bot had
just cancelled itself all passed the checks at a count of 0, then were answered "gone" one by
one, 26 errors of 20, and the lock held `trade/cancel` for minutes. Requests on their way now
count as errors they may earn, from the moment they are charged until they are answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from aiohttp import web

from killswitch.exchanges import rest as rest_module
from killswitch.exchanges.base import (
    AlreadyGone,
    CancelAck,
    OutcomeUnknown,
    RateLimited,
    Transient,
)
from killswitch.exchanges.bingx import rest as bingx_rest
from killswitch.exchanges.bingx.venue import CANCEL, ERROR_LOCK_COUNT
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.limits_file import WallClock
from killswitch.sim.bingx import BingxSim
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.conftest import eventually
from tests.fakes import FakeClock
from tests.fixtures.answers import install
from tests.fixtures.bingx import account_keys
from tests.review.bingx_rig import bx0_exchange, place
from tests.review.test_found_review66_sweeps import held_by_us

SYMBOLS = [f"C{chr(65 + i)}-USDT" for i in range(26)]


async def test_a_wave_of_single_cancels_of_gone_orders_never_earns_bingx_s_error_lock() -> None:
    # The connector's budgets wait on a clock that moves when they wait (26 cancels at BingX's
    # per-second limits would take seconds), and the sim's limits are out of the way: its
    # error lock is not.
    fake = FakeClock(1000.0)
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    await sim.start()
    exchange = bx0_exchange(sim, budget_clock=fake.clock, budget_sleep=fake.sleep)
    try:
        await exchange.start()
        orders = [(symbol, await place(sim, symbol, f"strat7_{symbol[:2]}")) for symbol in SYMBOLS]
        # The strategy's bot cancels its own orders on the same alert: every id is gone.
        sim.book(sim.accounts["bx0"]).cancel_symbols(SYMBOLS)
        answers = await asyncio.gather(
            *(exchange.cancel_order(symbol, order_id) for symbol, order_id in orders),
            return_exceptions=True,
        )
    finally:
        await exchange.close()
        await sim.stop()
    for answer in answers:
        # gone, or held by the connector (nothing sent): never the venue's lock
        assert isinstance(answer, AlreadyGone | CancelAck) or (
            isinstance(answer, RateLimited) and held_by_us(answer)
        ), answer
    assert sim.earned_throttles() == {}
    assert exchange.errors.count(CANCEL) < ERROR_LOCK_COUNT


async def test_a_read_of_more_orders_than_one_page_completes() -> None:
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS[:25], rate_limit_scale=50))
    install(sim)
    await sim.start()
    book = sim.book(sim.accounts["bx0"])
    for symbol in SYMBOLS[:25]:  # 2,025 open orders: past the 2,000 one read answers
        for i in range(81):
            book.place(OrderSpec(symbol, client_order_id=f"bot_{symbol[:2]}_{i}"), publish=False)
    fake = FakeClock(1000.0)  # 25 reads at 2/s per IP take seconds: the budgets' clock is fake
    exchange = bx0_exchange(sim, budget_clock=fake.clock, budget_sleep=fake.sleep)
    try:
        await exchange.start()
        snapshot = await exchange.snapshot(priority=Priority.KILL)
    finally:
        await exchange.close()
        await sim.stop()
    assert snapshot.complete
    assert len(snapshot.orders) == 2025


async def test_a_cancel_that_got_no_answer_counts_while_it_may_arrive_never_as_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It may still reach the venue and earn an error there (review 80), but counting it as one
    # held kills for minutes after a network blip (review 81): it counts as on its way while it
    # may arrive (UNANSWERED_HOLD_S, the recvWindow), then not at all.
    monkeypatch.setattr(bingx_rest, "UNANSWERED_HOLD_S", 0.3)
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    await sim.start()
    exchange = bx0_exchange(sim)
    try:
        await exchange.start()
        order_id = await place(sim, SYMBOLS[0])
        # no answer at all: held past our timeout (2 s) and the late read (5 s more)
        sim.faults.add(Fault(FaultKind.STALL, endpoint=CANCEL, stall_s=8.0, count=1))
        with pytest.raises(OutcomeUnknown):
            await exchange.cancel_order(SYMBOLS[0], order_id)
        assert exchange.errors.count(CANCEL) == 1  # on its way, as far as we know
        await eventually(lambda: exchange.errors.count(CANCEL) == 0, timeout_s=15)
        assert exchange.errors.limits_state(WallClock(time.time())) is None  # no error kept
    finally:
        await exchange.close()
        await sim.stop()


async def test_answers_that_come_after_our_timeout_still_count_toward_the_error_lock() -> None:
    """Review 83: an unanswered request was forgotten once it could no longer arrive, but the
    common case is an answer that comes late: the venue took the request, answered "gone",
    and counts that error for 480 s. The answer is now read past the caller's timeout, for the
    counts alone."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    await sim.start()
    exchange = bx0_exchange(sim)  # a 2 s timeout: the venue answers cancels 2.5 s late
    sim.faults.add(Fault(FaultKind.LATENCY, endpoint=CANCEL, latency_ms=2500.0))
    try:
        await exchange.start()
        for wave in range(2):  # two waves of single cancels of orders already gone: 22 > 20
            await asyncio.gather(
                *(exchange.cancel_order(SYMBOLS[0], f"{wave}{i:03}") for i in range(11)),
                return_exceptions=True,
            )
            # until none of them is on its way any more (answered late, or given up for good)
            await eventually(lambda: not exchange.errors._pending.get(CANCEL), timeout_s=15)
    finally:
        await exchange.close()
        await sim.stop()
    assert sim.earned_throttles() == {}


async def test_a_request_waiting_for_a_connection_is_never_sent_after_its_caller_gave_up() -> None:
    """Review 84: the late read of e5c9d1f gave the whole request the longer timeout, connect
    included: a request waiting for a connection (a slow connect, a full pool) was sent seconds
    after its caller gave up, past its recvWindow, and earned an error ("timestamp mismatch")
    toward the lock. A connection not had within the connect timeout still fails the request
    unsent."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    await sim.start()
    exchange = bx0_exchange(sim, timeout_s=4.0)  # and a 2 s connect timeout
    exchange.transport.pool_size = 1  # one connection: the second request waits for it
    try:
        await exchange.start()
        sim.faults.add(Fault(FaultKind.STALL, endpoint=CANCEL, stall_s=5.6, count=1))
        answers = await asyncio.gather(
            exchange.cancel_order(SYMBOLS[0], "111"),
            exchange.cancel_order(SYMBOLS[0], "222"),
            return_exceptions=True,
        )
        await eventually(lambda: not exchange.errors._pending.get(CANCEL), timeout_s=20)
    finally:
        await exchange.close()
        await sim.stop()
    assert not sim.counters.get("timestamp_failures")
    # never sent, and said so: a retry may go at once, nothing to re-read first (review 85)
    assert any(isinstance(a, Transient) for a in answers), answers


def _late_skews(times: int, step_s: float = 0.0) -> Any:
    """A middleware answering the first `times` cancels "timestamp mismatch", 2.5 s late, each
    `step_s` later than the one before."""
    left = [times]

    @web.middleware
    async def late_skew(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == CANCEL and left[0] > 0:
            left[0] -= 1
            await asyncio.sleep(2.5 + step_s * (times - left[0] - 1))  # past our 2 s timeout
            body = {"code": 100421, "msg": "Null timestamp or timestamp mismatch"}
            return web.json_response(body)
        return cast(web.StreamResponse, await handler(request))

    return late_skew


async def test_late_answers_that_say_the_clock_is_off_resync_it_once() -> None:
    """Review 84: a late "timestamp mismatch" was counted, but the next request went out on the
    same clock and earned another before anything resynced it. Review 85: each late one then
    started a resync of its own, at kill priority; one resync since the requests were signed
    answers them all, in the background."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    # answered 2.5, 3.0 and 3.5 s late: a resync after the first ends before the others come
    sim.app.middlewares.insert(0, _late_skews(3, step_s=0.5))
    await sim.start()
    exchange = bx0_exchange(sim)
    try:
        await exchange.start()
        synced = exchange.clock.synced_at
        sent = time.time()
        answers = await asyncio.gather(  # three at once: BingX's 3/s per IP on cancels
            *(exchange.cancel_order(SYMBOLS[0], f"{i}") for i in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(a, OutcomeUnknown) for a in answers), answers
        await eventually(lambda: exchange.clock.synced_at != synced, timeout_s=10)
        await eventually(lambda: not exchange.errors._pending.get(CANCEL), timeout_s=10)
        # the server-time reads after the late answers came (2.5 s after they were sent)
        resyncs = [e for e in sim.request_log if e["path"].endswith("/time") and e["t"] > sent + 2]
    finally:
        await exchange.close()
        await sim.stop()
    assert len(resyncs) == 1


async def test_a_late_resync_is_the_connector_s_and_ends_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 85: the resync a late answer started was nobody's task: it outlived close() and
    sent on a closed transport ('Task exception was never retrieved')."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS, rate_limit_scale=50))
    install(sim)
    sim.app.middlewares.insert(0, _late_skews(1))
    await sim.start()
    exchange = bx0_exchange(sim)
    resyncing = asyncio.Event()
    lost: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: lost.append(context))
    try:
        await exchange.start()

        async def slow_sync(priority: Any) -> float:
            resyncing.set()
            await asyncio.sleep(30)
            return 0.0

        monkeypatch.setattr(exchange, "sync_clock", slow_sync)
        with pytest.raises(OutcomeUnknown):
            await exchange.cancel_order(SYMBOLS[0], "1")
        await asyncio.wait_for(resyncing.wait(), 10)
        await exchange.close()
        await asyncio.sleep(0.1)
        assert not [t for t in asyncio.all_tasks() if "late resync" in t.get_name()]
    finally:
        loop.set_exception_handler(None)
        await exchange.close()
        await sim.stop()
    assert lost == []


async def test_a_late_skew_resyncs_though_the_wall_clock_stepped_back_since_the_last_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 86: "a sync since the request was signed" was told by wall times: with the wall
    clock stepped back after a sync (what makes requests skewed), a late skew looked answered
    by that older sync and nothing resynced."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS))
    exchange = bx0_exchange(sim)  # never started: only its clock and its late resync are used
    wall = [100.0]
    exchange.clock.wall = lambda: wall[0]

    async def server_time() -> int:
        return 100_000

    await exchange.clock.sync(server_time)  # synced at 100 s
    wall[0] = 98.0  # stepped back 2 s
    resynced = asyncio.Event()

    async def sync_clock(priority: Any) -> float:
        resynced.set()
        return 0.0

    monkeypatch.setattr(exchange, "sync_clock", sync_clock)
    exchange._late_skew(exchange.clock.syncs)  # a request signed now, answered late: skewed
    await asyncio.wait_for(resynced.wait(), 5)
    await exchange.close()


async def test_a_cancel_that_comes_with_the_answer_still_cancels_the_late_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh-clone run hung at a kill rig's stop: the late read waited with 3.11's wait_for,
    which loses a cancel that comes in the same step as the answer, so a dead-man's-switch
    keeper cancelled at stop ran on."""
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    exchange = bx0_exchange(BingxSim(VenueSettings(accounts=accounts, symbols=SYMBOLS)))
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    monkeypatch.setattr(exchange.transport, "request", lambda *args, **kwargs: answer)
    reading = asyncio.ensure_future(
        exchange.rest._read_late("POST", CANCEL, 1, "", rest_module._Late())
    )
    await asyncio.sleep(0)  # waiting for the answer
    answer.set_result(object())
    reading.cancel()  # in the same step
    with pytest.raises(asyncio.CancelledError):
        await reading
