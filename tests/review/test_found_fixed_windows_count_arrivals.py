"""Review: the venues count a request in their rate window by when it arrives, on their clock.

* MEXC's and Binance's fixed windows (`RateBudget`) counted a request in our window of its
  send, on our wall clock. Requests on their way across our window's end reached MEXC in its
  next window, where our fresh window let a further 450 through: a kill over two accounts
  behind one IP, started late in a window, earned a 429 and then 418s. And with the venue's
  clock a second ahead, the last second of our window was already its next one: one account
  was enough. A request in flight now counts in every window it is in flight in, and the
  windows roll on the venue's clock (the offset the connector measures).
* BingX (`SlidingBudget`, d0ed18c): a request given up without an answer landed at once and
  its slot was free 1.05 s later, while it could still be on its way: it and the next one on
  its slot shared a venue second (a 100410). It now counts as if it arrived 5 s later.
"""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from killswitch.exchanges.base import RateLimits
from killswitch.exchanges.bingx.venue import CANCEL
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.mexc import MexcSim
from killswitch.sim.ratelimit import Verdict
from tests.fakes import FakeClock
from tests.fixtures.binance import binance_venue
from tests.fixtures.mexc import account_settings, mexc_sim
from tests.review.bingx_rig import bingx_with_answers

MEXC_LIMITS = RateLimits(weight_per_window=500, window_s=10.0, kill_headroom=0.1)


async def test_a_request_in_flight_across_a_window_end_counts_in_the_next_window() -> None:
    time_ = FakeClock(9.9)
    budget = RateBudget(MEXC_LIMITS, clock=time_.clock, sleep=time_.sleep)
    for _ in range(40):
        await budget.acquire(1, Priority.KILL, in_flight=True)  # on their way at 10.0
    for _ in range(5):
        await budget.acquire(1, Priority.KILL, in_flight=True)
        budget.landed(1)  # answered before the window ends: counted in it alone
    time_.now = 10.05
    assert budget.used == 40
    for _ in range(410):
        await budget.acquire(1, Priority.KILL, in_flight=True)
    assert time_.now == 10.05  # 40 carried + 410 = the cap of 450
    for _ in range(450):
        budget.landed(1)  # all answered now: nothing carries into the window after
    await budget.acquire(1, Priority.KILL, in_flight=True)
    assert time_.now >= 20.0  # the 451st waits for the next window
    assert budget.used == 1


async def test_a_request_landing_after_a_window_end_counts_in_the_new_window() -> None:
    """Nothing needs to look at the budget between the send and the answer: the landing
    itself rolls the window first (found by the session's last review)."""
    time_ = FakeClock(9.9)
    budget = RateBudget(MEXC_LIMITS, clock=time_.clock, sleep=time_.sleep)
    for _ in range(40):
        await budget.acquire(1, Priority.KILL, in_flight=True)
    time_.now = 10.2  # they arrive in the venue's window [10, 20), answered at 10.2
    for _ in range(40):
        budget.landed(1)
    assert budget.used == 40


async def test_a_venue_clock_stepping_back_over_a_window_end_keeps_the_later_window() -> None:
    """The windows follow the venue clock's estimate, which a resync may move back a few ms:
    the window and its count never move back with it."""
    time_ = FakeClock(10.005)
    budget = RateBudget(MEXC_LIMITS, clock=time_.clock, sleep=time_.sleep)
    for _ in range(450):
        await budget.acquire(1, Priority.KILL)
    time_.now = 9.995
    assert budget.used == 450
    time_.now = 10.01
    assert budget.used == 450


async def test_the_mexc_and_binance_budgets_follow_the_venues_clock() -> None:
    skew = [Fault(FaultKind.CLOCK_SKEW, skew_ms=3000)]
    async with mexc_sim(settings=account_settings(1, faults=skew)) as (_, connect):
        mexc = connect("acct0")
        await mexc.start()
        assert abs(mexc.endpoint_budgets.clock() - (time.time() + 3.0)) < 0.5
    async with binance_venue(faults=skew) as venue:
        binance = await venue.connect("acct0")
        assert abs(binance.budget.clock() - (time.time() + 3.0)) < 0.5


@pytest.fixture
def mexc_counts_per_ip_on_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEXC counts per IP (loopback clients share one) in windows aligned with ours: the
    only difference left is the time a request takes to arrive."""
    spend = MexcSim.spend

    def on_the_wall_clock(self: MexcSim, bucket: str, weight: int, now: float) -> Verdict:
        return spend(self, bucket, weight, time.time())

    def client_id(self: MexcSim, request: web.Request) -> str:
        return request.remote or "?"

    monkeypatch.setattr(MexcSim, "client_id", client_id)
    monkeypatch.setattr(MexcSim, "spend", on_the_wall_clock)


@pytest.mark.slow
async def test_a_mexc_kill_started_late_in_a_window_earns_no_429(
    tmp_path: Path, mexc_counts_per_ip_on_the_wall_clock: None
) -> None:
    symbols = [f"C{i:02d}USDT" for i in range(20)]
    config = EngineConfig(
        deadline_s=25.0, retry_initial_s=0.05, retry_max_s=0.5, quiet_window_s=0.2
    )
    settings = account_settings(2, latency_ms=300.0, jitter_ms=300.0, seed=7, symbols=symbols)
    async with mexc_sim(settings=settings) as (sim, connect):
        accounts = []
        for i in range(2):
            name = f"acct{i}"
            # 400 orders in scope an account, and one out of scope on each symbol: the kill
            # cancels order by order.
            specs = [
                OrderSpec(s, price=Decimal("1"), client_order_id=f"bot-{i}-{s}-{n}")
                for s in symbols
                for n in range(20)
            ]
            specs += [
                OrderSpec(s, price=Decimal("1"), client_order_id=f"keep-{s}") for s in symbols
            ]
            sim.seed(sim.accounts[name], specs)
            exchange = connect(name, symbols_hint=symbols, timeout_s=5.0)
            await exchange.start()
            accounts.append(Account(AccountRef("mexc", name), exchange, symbols=tuple(symbols)))
        engine = Engine(accounts, Journal(tmp_path / "j.jsonl"), config, rng=random.Random(3))
        await engine.start()
        try:
            # 8.9 s into a 10 s window: after its first read, the kill's first bursts leave
            # in the window's last moments and arrive in the next.
            now = time.time()
            start = (now // 10) * 10 + 8.9
            await asyncio.sleep(start - now if start > now + 0.5 else start + 10 - now)
            scope = Scope.of(["mexc"], client_order_id_prefix="bot-")
            await engine.submit(Trigger("t-late", "test", Mode.KILL, "r", scope))
            kill = engine.kill_for("t-late")
            assert kill is not None
            await asyncio.wait_for(kill.finished.wait(), 60)
            throttled = {k: v for k, v in sim.counters.items() if "429" in k or "418" in k}
            assert throttled == {}
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        finally:
            await engine.stop(grace_s=1.0)


@pytest.mark.slow
async def test_a_bingx_cancel_given_up_on_its_way_shares_no_venue_second_with_the_next() -> None:
    async with bingx_with_answers(seed=1) as (sim, exchange, _):
        account = sim.accounts["bx0"]
        sim.seed(account, [OrderSpec("BTC-USDT", price=Decimal(str(p))) for p in range(1, 7)])
        ids = [o.order_id for o in sim.book(account).open_orders()]
        slow = sim.faults.add(Fault(FaultKind.LATENCY, endpoint=CANCEL, latency_ms=3400.0))
        now = time.time()
        await asyncio.sleep(int(now) + 1.1 - now)  # arrivals at +3.06 s and +3.4 s: one second
        first = [asyncio.create_task(exchange.cancel_order("BTC-USDT", i)) for i in ids[:3]]
        await asyncio.sleep(0.3)
        sim.faults.remove(slow.id)  # only the first three are slow on their way
        await asyncio.gather(*first, return_exceptions=True)  # given up after the 2 s timeout
        await asyncio.gather(
            *(exchange.cancel_order("BTC-USDT", i) for i in ids[3:]), return_exceptions=True
        )
        await asyncio.sleep(1.5)  # the slow ones arrive
        throttled = {k: v for k, v in sim.counters.items() if "100410" in k or "418" in k}
        assert throttled == {}
