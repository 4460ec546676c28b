"""Review: stream cancels queued under a latch are still sent after the reset released it.

`StreamCancels._drain_stream` drains its per-account queue until it is empty and never looks at
the latches again; `Engine.reset` cancels stale sweeps and kills but not the stream drains. An
order a stream showed while latched, queued behind a cancel in flight, is cancelled by a request
sent after the reset returned, when no active scope covers it (DESIGN "Scope is respected").
"""

from __future__ import annotations

from pathlib import Path

from killswitch.model import AccountRef
from tests.conftest import eventually
from tests.review.helpers import HeldCancels, new_order
from tests.unit.test_engine import finished, kill_trigger, make_rig


async def test_no_stream_cancel_is_sent_after_the_reset_that_released_its_latch(
    tmp_path: Path,
) -> None:
    venue = HeldCancels("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")

        venue.holding = True  # the first stream cancel is on the wire, unanswered

        (first,) = venue.place("BTCUSDT", "bot-a")
        rig.engine.on_stream_event(ref, new_order(venue, first))
        await eventually(lambda: venue.entered == 1)
        (second,) = venue.place("ETHUSDT", "bot-b")
        rig.engine.on_stream_event(ref, new_order(venue, second))  # queued behind the first

        assert await rig.engine.reset(actor="op", reason="resume trading")
        sent_before_reset = venue.entered  # the first cancel only
        assert not rig.engine.latched()
        venue.release.set()
        await rig.engine.wait_idle()

        sent_after_reset = venue.entered - sent_before_reset
        assert sent_after_reset == 0, f"{sent_after_reset} cancel(s) sent after the reset"
        assert ("ETHUSDT", second) in venue.open_keys()
    finally:
        await rig.engine.stop()
