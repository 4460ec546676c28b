"""Review: `Verdicts.confirm` (kill/verdicts.py) re-checks from the venue after the quiet
window. When that read found a new order in scope (placed during the window, shown on no stream:
the stream is down), the re-check cancelled it, ended flat, and the kill was reported CONFIRMED,
though the account
was not "still flat after a quiet window" (DESIGN, the kill's step 4). A re-check that cancels
anything is not quiet now: another window follows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from killswitch.kill.record import KillState
from tests.fakes import FakeExchange
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig


async def test_a_recheck_that_found_an_order_is_not_confirmed(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "a-", n=2)
    rig = await make_rig(tmp_path, {"binance": venue}, config=replace(QUICK, quiet_window_s=2.0))
    placed: list[str] = []

    def during_quiet_window(method: str, args: tuple[object, ...]) -> None:
        kill = rig.engine.kill_for("k1")
        if method == "snapshot" and kill is not None and kill.flat.is_set() and not placed:
            placed.extend(venue.place("ETHUSDT", "rogue"))  # no stream event for it

    venue.before_call.append(during_quiet_window)
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        kill = await finished(rig, "k1")
        assert placed
        assert any(c.method.startswith("cancel") and c.args[0] == ("ETHUSDT",) for c in venue.calls)
        # Confirmed only after a quiet window whose look found nothing: a second window.
        windows = rig.clock.sleeps.count(rig.engine.config.quiet_window_s)
        assert kill.state is KillState.CONFIRMED  # type: ignore[attr-defined]
        assert windows >= 2, "confirmed on the look that found and cancelled an order"
    finally:
        await rig.engine.stop()
