"""What the chaos trials rely on: every fault they inject is one a correct client can survive."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos.trials import CHAOS_CONFIG, VENUES, WORKLOAD
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
