"""What the chaos trials rely on: every fault they inject is one a correct client can survive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from killswitch.sim.ratelimit import BanTracker
from tests.chaos.trials import BAN_GRACE_S, CHAOS_CONFIG, VENUES, WORKLOAD
from tests.fixtures.kill import kill_rig


@pytest.mark.parametrize("skew_ms", [-20_000, 20_000])
async def test_a_clock_skew_on_one_account_shows_in_its_server_time_and_a_resync_cures_it(
    tmp_path: Path, skew_ms: int
) -> None:
    async with kill_rig(tmp_path, WORKLOAD, CHAOS_CONFIG, supervise=False) as rig:
        for venue in VENUES:
            rig.fault(venue, kind="clock_skew", account="mm-1", skew_ms=skew_ms)
            exchange = rig.exchanges[f"{venue}/mm-1"]
            told = await exchange.server_time_ms() - int(time.time() * 1000)
            assert abs(told - skew_ms) < 2_000, (venue, told)
            # The connector's clock still has the old offset: the venue refuses the timestamp,
            # the connector resyncs from the time endpoint and the read goes through.
            snapshot = await exchange.snapshot(None)
            assert snapshot.orders, venue


def test_requests_in_flight_when_a_429_left_are_refused_without_a_strike() -> None:
    tracker = BanTracker(strikes_to_ban=3, grace_s=BAN_GRACE_S)
    tracker.limited(100.0, retry_after_s=1)
    for i in range(10):  # a wave already on its way
        verdict = tracker.check(100.0 + i * 0.001)
        assert verdict is not None
        assert not verdict.banned
    assert tracker.strikes == 0


def test_requests_sent_into_the_retry_after_past_the_grace_still_earn_a_418() -> None:
    tracker = BanTracker(strikes_to_ban=3, grace_s=BAN_GRACE_S)
    tracker.limited(100.0, retry_after_s=1)
    verdicts = [tracker.check(100.0 + BAN_GRACE_S + 0.001 + i * 0.01) for i in range(3)]
    assert [v.banned for v in verdicts if v is not None] == [False, False, True]


def test_without_a_grace_every_request_into_the_wait_is_a_strike() -> None:
    tracker = BanTracker(strikes_to_ban=3)
    tracker.limited(100.0, retry_after_s=1)
    verdicts = [tracker.check(100.0 + i * 0.0001) for i in range(3)]
    assert [v.banned for v in verdicts if v is not None] == [False, False, True]


async def test_a_bingx_client_paced_by_the_skewed_venue_clock_is_never_throttled(
    tmp_path: Path,
) -> None:
    async with kill_rig(tmp_path, WORKLOAD, CHAOS_CONFIG, supervise=False) as rig:
        # A skew with a fraction of a second: the venue's 1 s windows start 0.325 s off the
        # host's. Our BingX budget counts windows on the venue's clock, as the venue must.
        rig.fault("bingx", kind="clock_skew", account="mm-1", skew_ms=11_325)
        exchange = rig.exchanges["bingx/mm-1"]
        await exchange.resync_clock()
        deadline = time.monotonic() + 2.5

        async def reader() -> None:
            while time.monotonic() < deadline:
                await exchange.snapshot(None)  # each reads oco/openOrderList: 5/s per UID

        await asyncio.gather(*(reader() for _ in range(4)))
        assert rig.sim("bingx").counters["http 429"] == 0
