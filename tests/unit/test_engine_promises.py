"""Regression tests for the engine's promises (DESIGN.md, "What the kill promises").

Each test here reproduces one way the engine once said "done" when it was not, or lost work.
"""

from __future__ import annotations

import asyncio

import pytest

from killswitch.engine import EngineConfig, _Gate
from killswitch.exchanges.base import RateLimited


async def test_gate_waiter_cancelled_after_its_wake_up_does_not_strand_the_others() -> None:
    # After a 429 the gate lets one request through at a time.
    gate = _Gate(EngineConfig(probe_first=True), clock=lambda: 0.0)
    release = asyncio.get_running_loop().create_future()

    async def held() -> None:
        await release
        raise RateLimited("429", retry_after_s=1.0)

    async def quick() -> str:
        return "sent"

    first = asyncio.create_task(gate.run(held))
    await asyncio.sleep(0)
    woken = asyncio.create_task(gate.run(quick))
    behind = asyncio.create_task(gate.run(quick))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not woken.done()
    assert not behind.done()

    release.set_result(None)
    await asyncio.sleep(0)  # `first` returns and wakes a waiter
    woken.cancel()  # ... which is cancelled before it runs
    with pytest.raises(RateLimited):
        await first
    async with asyncio.timeout(5):  # a hang here is the lost wake-up
        assert await behind == "sent"
    assert woken.cancelled()
