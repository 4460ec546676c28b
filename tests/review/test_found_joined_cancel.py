"""Review: a one-shot `cancel` that joins a running cancel inherits that cancel's targets.

The running cancel c1 cancels only what was open at *its* first look. A second cancel c2 over
the same scope, submitted later, joins c1 (`Engine._joinable`), so an order placed between c1's
first look and c2's trigger was open at c2's trigger and in its scope, yet c2 is reported flat.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.kill.record import KillState
from killswitch.model import Mode
from tests.conftest import eventually
from tests.fakes import MEXC_CAPS
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import kill_trigger, make_rig


async def test_a_cancel_joined_to_a_running_cancel_is_not_flat_while_its_orders_are_open(
    tmp_path: Path,
) -> None:
    venue = ReadsFake("mexc", "m1", MEXC_CAPS)
    venue.place("BTCUSDT", "desk-", n=2)
    rig = await make_rig(tmp_path, {"mexc": venue})
    try:
        venue.hold_from = 2  # c1's verification read waits: c1 still runs when c2 arrives
        await rig.engine.submit(kill_trigger("c1", mode=Mode.CANCEL, venues=["mexc"]))
        await eventually(lambda: venue.reads >= 2)
        assert not venue.open_keys()  # c1's cancels landed

        late = venue.place("ETHUSDT", "desk-")[0]  # open at c2's trigger, in c2's scope
        await rig.engine.submit(kill_trigger("c2", mode=Mode.CANCEL, venues=["mexc"]))
        venue.release.set()
        c2 = rig.engine.kill_for("c2")
        assert c2 is not None
        await c2.finished.wait()

        still_open = ("ETHUSDT", late) in venue.open_keys()
        # No false flat: c2 may only be flat if what was open at its trigger is gone.
        assert not (c2.state in (KillState.FLAT, KillState.CONFIRMED) and still_open), (
            f"c2 reported {c2.state} with {late} still open"
        )
    finally:
        await rig.engine.stop()
