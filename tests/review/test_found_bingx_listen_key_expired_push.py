"""Found by review 43: BingX may tell an open stream `listenKeyExpired` and leave the socket
open (api-ai-skills websocket.md: the connection receives the push); the stream ignored the
frame and looked alive while no order event could come: the tracker (and a latch's stream
cancels) missed every order placed after it, until the next keep-alive up to 30 min later. And
one failed keep-alive waited a whole interval before the next try, letting the key run out. The
push now ends the stream (the supervisor reconnects and resnapshots), and a failed keep-alive
is tried again within a minute."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from killswitch.exchanges.base import Transient
from killswitch.exchanges.bingx import stream as bingx_stream
from killswitch.model import AccountRef
from killswitch.sim.faults import Fault, FaultKind
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.conftest import eventually
from tests.fixtures.bingx import bingx_venue
from tests.review.bingx_rig import place


@pytest.mark.parametrize("key_expiry", ["push", "close"])
async def test_an_order_placed_after_the_key_ran_out_reaches_the_tracker(key_expiry: str) -> None:
    async with bingx_venue(1, key_expiry=key_expiry) as (sim, make):
        exchange = make("bx0")
        await exchange.start()
        tracker = OrderTracker(AccountRef("bingx", "bx0"))
        supervisor = StreamSupervisor(
            exchange, tracker, reconcile_interval_s=None, backoff_initial_s=0.05
        )
        task = asyncio.create_task(supervisor.run())
        try:
            assert await supervisor.wait_live(10)
            sim.on_fault(sim.faults.add(Fault(FaultKind.LISTEN_KEY_EXPIRY, account="bx0")))
            await eventually(lambda: supervisor.reconnects >= 1)
            assert await supervisor.wait_live(10)
            late = await place(sim, "BTC-USDT", "late1")
            await eventually(lambda: late in {o.order_id for o in tracker.as_snapshot().orders})
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_failed_keep_alive_is_tried_again_within_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    calls = {"n": 0}

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > 3:
            raise asyncio.CancelledError

    class Host:
        venue = "bingx"
        account = "a"
        listen_key_refresh_s = 1800.0

        async def extend_listen_key(self, key: str) -> bool:
            calls["n"] += 1
            if calls["n"] == 1:
                raise Transient("busy", venue="bingx")
            return True

    monkeypatch.setattr(bingx_stream.asyncio, "sleep", sleep)
    with contextlib.suppress(asyncio.CancelledError):
        await bingx_stream.keep_listen_key(Host(), "k", None, asyncio.Event())  # type: ignore[arg-type]
    assert slept[:3] == [1800.0, bingx_stream.KEEPALIVE_RETRY_S, 1800.0]
