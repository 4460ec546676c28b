"""Review 30, items 5 and 6: throttles whose wait is not said, or said in another unit.

Item 5 (MEXC): a 429 without Retry-After was held 10 s flat, every time. MEXC bans an IP that
keeps sending after 429s, and its FAQ says access returns about 10 min after the rate drops
(reference §2.5): a kill poked a throttled IP every 10 s for as long as MEXC held it. Now the
wait doubles each time the venue refuses again after a wait ran out, to at most 10 min, and a
success starts again from 10 s.

Item 6 (every venue): Retry-After was read as seconds whatever it held. MEXC's is unconfirmed,
and the venues name epochs in ms elsewhere (Binance ws-api, BingX's texts): an epoch in ms read
as seconds blocked every account behind the IP for ~55,000 years. Now a number too large to be
a wait is an epoch (ms or s), read on the venue's clock, and no wait exceeds 3 days (the
longest documented ban).
"""

from __future__ import annotations

import time

import pytest

from killswitch.exchanges.base import RateLimited
from killswitch.exchanges.dialect import BINANCE, BINGX, MAX_WAIT_S, MEXC, Dialect, classify
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from tests.fakes import FakeClock
from tests.fixtures.mexc import mexc_sim


async def test_mexc_429s_without_retry_after_back_off_toward_ten_minutes() -> None:
    async with mexc_sim(retry_after="none") as (sim, connect):
        fake = FakeClock(time.time())
        exchange = connect("acct0", budget_clock=fake.clock, budget_sleep=fake.sleep)
        await exchange.start()
        order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
        # retry_after_s=0: the sim holds no block of its own in real time (no strikes, no 418).
        storm = sim.faults.add(
            Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=0)
        )
        waits = []
        for _ in range(8):
            with pytest.raises(RateLimited) as info:
                await exchange.cancel_order("BTCUSDT", order.order_id)
            waits.append(info.value.retry_after_s)
        assert waits == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]
        # Each request went out only after the last wait ran out: nothing sent into a wait.
        assert fake.sleeps == pytest.approx(waits[:-1])
        sim.faults.remove(storm.id)
        await exchange.cancel_order("BTCUSDT", order.order_id)  # a success starts again
        sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=0))
        with pytest.raises(RateLimited) as info:
            await exchange.cancel_order("BTCUSDT", order.order_id)
        assert info.value.retry_after_s == 10.0
        assert exchange.rate_headroom()["blocked_s"] == pytest.approx(10.0)


async def test_mexc_a_clock_read_between_429s_does_not_start_the_backoff_again() -> None:
    """The connector reads the server time on its own (every minute, on a clock error): its
    success says nothing of the throttled endpoint's limit."""
    async with mexc_sim(retry_after="none") as (sim, connect):
        fake = FakeClock(time.time())
        exchange = connect("acct0", budget_clock=fake.clock, budget_sleep=fake.sleep)
        await exchange.start()
        sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=0))
        waits = []
        for _ in range(3):
            with pytest.raises(RateLimited) as info:
                await exchange.cancel_order("BTCUSDT", "C02__1")
            waits.append(info.value.retry_after_s)
            await exchange.resync_clock()
        assert waits == [10.0, 20.0, 40.0]


async def test_mexc_429s_answered_together_are_one_refusal() -> None:
    """Requests on their way together all come back 429: the wait doubles once, not per
    answer (five answers would otherwise make it 160 s at the first refusal)."""
    async with mexc_sim(retry_after="none") as (sim, connect):
        fake = FakeClock(time.time())
        exchange = connect("acct0", budget_clock=fake.clock, budget_sleep=fake.sleep)
        await exchange.start()
        sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=0))
        result = await exchange.cancel_orders("BTCUSDT", [f"C02__{i}" for i in range(5)])
        assert {type(e) for _, e in result.failed} == {RateLimited}
        assert {e.retry_after_s for _, e in result.failed} == {10.0}


async def test_mexc_retry_after_in_epoch_ms_is_a_time_not_millennia() -> None:
    async with mexc_sim(retry_after="epoch_ms") as (sim, connect):
        exchange = connect("acct0")
        await exchange.start()
        sim.faults.add(
            Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=30, count=1)
        )
        with pytest.raises(RateLimited) as info:
            await exchange.cancel_order("BTCUSDT", "C02__1")
        assert 25.0 <= info.value.retry_after_s <= 31.0
        assert exchange.rate_headroom()["blocked_s"] <= 31.0


@pytest.mark.parametrize("dialect", [BINANCE, MEXC, BINGX], ids=lambda d: d.venue)
def test_retry_after_is_a_wait_an_epoch_or_a_date_and_never_over_three_days(
    dialect: Dialect,
) -> None:
    now_ms = 1_800_000_000_000.0

    def wait(value: str) -> float:
        error = classify(dialect, 429, 429, "", {"Retry-After": value}, now_ms=now_ms)
        assert isinstance(error, RateLimited)
        return error.retry_after_s

    assert wait("7") == 7.0
    assert wait(str(int(now_ms) + 30_000)) == pytest.approx(30.0)  # epoch ms
    assert wait(str(int(now_ms / 1000) + 45)) == pytest.approx(45.0)  # epoch s
    assert wait(str(int(now_ms) - 5_000)) == 0.0  # a time passed: now
    assert wait("Fri, 15 Jan 2027 08:00:30 GMT") == pytest.approx(30.0)  # RFC 9110 date
    assert wait("900000000") == MAX_WAIT_S  # 28 years in seconds: no venue bans that long
    assert MAX_WAIT_S == 3 * 24 * 3600.0
    banned = classify(dialect, 418, None, "", retry_after_s=1e12, now_ms=now_ms)
    assert isinstance(banned, RateLimited)
    assert banned.retry_after_s == MAX_WAIT_S
