"""Review: a kill that joins a running kill is reported flat on an account already proved flat
before the joining trigger arrived.

k1 (everything) runs on two accounts; Binance is proved flat, MEXC is still being verified.
An order is placed on Binance (no stream shows it), then k2 (Binance) arrives and joins k1
(`Engine._joinable`: k1 is RUNNING and contains k2). When MEXC is flat, the kill is FLAT and
`done` fires: `killswitch fire` (which waits for "done") exits 0 for k2 while the Binance order,
open at k2's trigger and in its scope, is still open. Binance's part is never looked at again
before the report (only the confirmation re-check, a quiet window later, would see it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from killswitch.kill.record import KillState
from tests.conftest import eventually
from tests.fakes import MEXC_CAPS, FakeExchange
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import QUICK, kill_trigger, make_rig


async def test_a_kill_joined_after_an_account_was_proved_flat_is_not_flat_with_an_order_open(
    tmp_path: Path,
) -> None:
    binance = FakeExchange("binance", "b1")
    mexc = ReadsFake("mexc", "m1", MEXC_CAPS)
    binance.place("BTCUSDT", "a-", n=2)
    mexc.place("BTCUSDT", "a-", n=2)
    config = replace(QUICK, quiet_window_s=3600.0)  # the confirmation re-check comes much later
    rig = await make_rig(tmp_path, {"binance": binance, "mexc": mexc}, config=config)
    try:
        mexc.hold_from = 2  # MEXC's verification waits; Binance goes flat meanwhile
        await rig.engine.submit(kill_trigger("k1"))
        k1 = rig.engine.kill_for("k1")
        assert k1 is not None
        await eventually(lambda: mexc.reads >= 2 and not binance.open_keys())
        await eventually(
            lambda: all(
                r.state.value == "flat" for r in k1.accounts.values() if r.ref.venue == "binance"
            )
        )

        (late,) = binance.place("ETHUSDT", "a-late")  # open before k2 is triggered
        await rig.engine.submit(kill_trigger("k2", venues=["binance"]))
        mexc.release.set()
        k2 = rig.engine.kill_for("k2")
        assert k2 is not None
        await k2.done.wait()  # what `killswitch fire` waits for

        open_now = ("ETHUSDT", late) in binance.open_keys()
        assert not (k2.state in (KillState.FLAT, KillState.CONFIRMED) and open_now), (
            f"k2 reported {k2.state} with {late} open since before its trigger"
        )
    finally:
        await rig.engine.stop(grace_s=0.01)
