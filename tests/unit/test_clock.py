"""The server-time offset: what the clock measures must not include waits for a rate budget."""

from __future__ import annotations

from killswitch.exchanges.clock import ServerClock


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_wait_for_the_rate_budget_before_the_read_does_not_skew_the_offset() -> None:
    wall = Wall()
    clock = ServerClock(wall=wall)

    async def paid() -> None:
        wall.now += 10.0  # queued 10 s behind every account's reads on one per-IP budget

    async def fetch() -> int:
        wall.now += 0.015
        server_ms = int(wall.now * 1000)  # the venue's clock equals ours
        wall.now += 0.015
        return server_ms

    offset = await clock.sync(fetch, paid=paid)
    assert abs(offset) < 1.0
    assert clock.last_rtt_ms < 100
