"""Review: a reset of the wide kill leaves its kill running at the wide scope for a joined one.

k2 (narrow: BTCUSDT) joins k1 (wide: every Binance symbol) while k1 runs. A reset naming only
k1 releases k1's latch; the kill is not stale (`Engine.reset`: `ids <= wanted` is false, k2 is
still latched), so it goes on with k1's scope and cancels an ETHUSDT order placed after the
reset, which no active latch covers (DESIGN "Scope is respected", "Resets are exact").
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import eventually
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import kill_trigger, make_rig


async def test_after_a_reset_of_the_wide_kill_only_the_joined_scope_is_cancelled(
    tmp_path: Path,
) -> None:
    venue = ReadsFake("binance", "b1")
    venue.place("BTCUSDT", "a-", n=2)
    venue.place("ETHUSDT", "b-", n=2)
    rig = await make_rig(tmp_path, {"binance": venue})
    try:
        venue.hold_from = 2  # k1's verification read waits: k1 still runs
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await eventually(lambda: venue.reads >= 2)
        await rig.engine.submit(kill_trigger("k2", venues=["binance"], symbols=["BTCUSDT"]))
        assert rig.engine.kill_for("k2") is rig.engine.kill_for("k1")  # joined

        assert await rig.engine.reset(actor="op", reason="desk b may trade", only=["k1"])
        assert set(rig.engine.latches()) == {"k2"}
        (free,) = venue.place("ETHUSDT", "b-new")  # outside every latch now
        venue.release.set()
        kill = rig.engine.kill_for("k2")
        assert kill is not None
        await kill.finished.wait()

        assert ("ETHUSDT", free) in venue.open_keys(), (
            "an order outside every active scope was cancelled after the reset"
        )
    finally:
        await rig.engine.stop()
