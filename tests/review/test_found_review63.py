"""Review 63, of the stream-cancel lanes (796db40): `Engine.stop` waited for the stream-cancel
drains it saw when it began. An order a stream showed during the stop's grace started a drain
of its own, and stop returned (journal closed) with it running: its cancel went to the venue
after the engine had stopped. Stop now waits, within its grace, for what starts meanwhile."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from killswitch.exchanges.base import CancelAck
from killswitch.model import AccountRef
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.review.helpers import new_order
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig


class HeldBySymbol(FakeExchange):
    """Cancels on a symbol wait for its event; records cancels sent after `stopped`."""

    def __init__(self, venue: str, account: str) -> None:
        super().__init__(venue, account)
        self.hold: dict[str, asyncio.Event] = {}
        self.after_stop: list[tuple[str, str]] = []
        self.stopped = False

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        held = self.hold.get(symbol)
        if held is not None:
            await held.wait()
        if self.stopped:
            self.after_stop.append((symbol, order_id))
        return await super().cancel_order(symbol, order_id)


async def test_stop_waits_for_a_stream_cancel_that_starts_in_its_grace(tmp_path: Path) -> None:
    venue = HeldBySymbol("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue}, config=replace(QUICK, open_for_s=3600.0))
    ref = AccountRef("binance", "b1")
    await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
    await finished(rig, "k1")
    venue.hold = {"BTCUSDT": asyncio.Event(), "ETHUSDT": asyncio.Event()}
    (x,) = venue.place("BTCUSDT", "bot-x")
    rig.engine.on_stream_event(ref, new_order(venue, x))
    await eventually(lambda: len(rig.engine._streams.tasks) == 1)
    stop = asyncio.create_task(rig.engine.stop(grace_s=30.0))
    await eventually(lambda: rig.engine._stopping)  # in its grace, waiting for the drain
    (y,) = venue.place("ETHUSDT", "bot-y")  # a stream, still running, shows another order
    rig.engine.on_stream_event(ref, new_order(venue, y))
    await eventually(lambda: len(rig.engine._streams.tasks) == 2)
    venue.hold["BTCUSDT"].set()  # the first drain ends
    await eventually(lambda: len(rig.engine._streams.tasks) == 1)
    assert not stop.done()  # still waiting for the second
    venue.hold["ETHUSDT"].set()
    await asyncio.wait_for(stop, 10)
    venue.stopped = True
    assert not rig.engine._streams.tasks
    assert not venue.after_stop
    assert ("ETHUSDT", y) not in set(venue.open_keys())
