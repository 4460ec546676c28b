"""Review: an order a stream showed while latched, during a resync, was never cancelled.

While the supervisor (re)synced, stream events were buffered until the snapshot returned and
only then handed to the engine (`StreamSupervisor._connection`). If the snapshot read failed or
timed out (`snapshot_timeout_s`), the connection ended and the buffered events were dropped: the
engine never heard of the order. The next connection's snapshot put it in the tracker without
notifying, so it stayed working until a sweep, which reads the same slow venue. Even when the
read succeeded, the engine heard only once it returned, up to 30 s later
(DESIGN "Latched means latched: at once when a stream shows it").

Fixed with this test: each event goes to the engine as it arrives, and is buffered for the
tracker alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from killswitch.exchanges.base import Priority
from killswitch.model import AccountRef, Snapshot
from killswitch.streams.supervisor import StreamState, StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.unit.test_engine import finished, kill_trigger, make_rig


class SlowReads(FakeExchange):
    """A venue whose snapshot reads hang while `slow` (a crisis: everyone is reading)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.slow = False
        self.release = asyncio.Event()
        self.reads = 0

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        self.reads += 1
        if self.slow:
            await self.release.wait()
        return await super().snapshot(symbols, priority=priority)


async def test_an_order_shown_during_a_resync_is_cancelled_at_once(tmp_path: Path) -> None:
    venue = SlowReads("binance", "b1")
    tracker = OrderTracker(AccountRef("binance", "b1"))
    rig = await make_rig(tmp_path, {"binance": venue}, binance={"tracker": tracker})
    sup = StreamSupervisor(
        venue,
        tracker,
        on_event=rig.engine.on_stream_event,
        reconcile_interval_s=None,
        snapshot_timeout_s=0.3,
        backoff_initial_s=0.01,
    )
    task = asyncio.create_task(sup.run())
    try:
        assert await sup.wait_live(5)
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")

        venue.slow = True
        await sup.resync("age limit")
        await eventually(lambda: sup.state is StreamState.SYNCING)
        reads = venue.reads
        (rogue,) = venue.place("BTCUSDT", "bot-a")  # shown on the stream during the read
        await eventually(lambda: ("BTCUSDT", rogue) not in venue.open_keys(), timeout_s=5.0)
        assert venue.reads == reads, "cancelled before the snapshot read returned"

        await eventually(lambda: sup.last_gap_reason == "snapshot timed out after 0.3s")
        venue.slow = False
        venue.release.set()
        assert await sup.wait_live(5)
        await rig.engine.wait_idle()
        assert ("BTCUSDT", rogue) not in venue.open_keys()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rig.engine.stop()
