"""Review: a trigger joined a running kill whose verification read the venue had already served
(its answer still on the wire). The account was RUNNING, so `_may_join` let it join; the read
came back empty and the kill, and with it the joined trigger, was reported FLAT while an order
placed after the venue served that read, before the joiner's trigger, was still open ("No
false flat"). A read sent before a join now proves nothing flat: the account looks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from killswitch.kill.record import KillState
from killswitch.model import Snapshot
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.unit.test_engine import QUICK, kill_trigger, make_rig


class AnswerOnTheWire(FakeExchange):
    """Reads from `hold_from` on are served at once, but their answer waits for `release`."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.reads = 0
        self.served = 0
        self.hold_from: int | None = None
        self.release = asyncio.Event()

    async def snapshot(self, symbols: Sequence[str] | None = None, **kw: object) -> Snapshot:
        self.reads += 1
        snap = await super().snapshot(symbols)
        self.served += 1
        if self.hold_from is not None and self.reads >= self.hold_from:
            await self.release.wait()
        return snap


async def test_a_joined_trigger_is_not_reported_flat_from_a_read_served_before_it(
    tmp_path: Path,
) -> None:
    venue = AnswerOnTheWire("binance", "b1")
    venue.place("BTCUSDT", "a-", n=2)
    config = replace(QUICK, quiet_window_s=3600.0)
    rig = await make_rig(tmp_path, {"binance": venue}, config=config)
    try:
        venue.hold_from = 2  # k1's verification read: served, answer on the wire
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await eventually(lambda: venue.served >= 2)
        (late,) = venue.place("ETHUSDT", "b-late")  # after the read was served
        await rig.engine.submit(kill_trigger("k2", venues=["binance"], symbols=["ETHUSDT"]))
        k2 = rig.engine.kill_for("k2")
        assert k2 is rig.engine.kill_for("k1"), "k2 joined k1"
        venue.release.set()
        await k2.done.wait()
        open_now = ("ETHUSDT", late) in venue.open_keys()
        assert not (k2.state in (KillState.FLAT, KillState.CONFIRMED) and open_now), (
            f"k2 reported {k2.state} with {late} (open before k2's trigger) still open; "
            f"flat events={[e.get('trigger_ids') for e in rig.log.of('flat')]}"
        )
    finally:
        venue.release.set()
        await rig.engine.stop(grace_s=0.01)
