"""Review: a one-shot `cancel` in flight stops the latched scopes it contains from being swept.

`Engine.sweep` skips every latched scope that a running kill's scope contains, whatever that
kill's mode. A `cancel` only cancels what was open at its first look, and may run up to its
deadline (30 s by default, three sweep intervals) on a slow account. Meanwhile an order placed
in a latched scope that no stream shows is not cancelled by any sweep (DESIGN "Latched means
latched: ... within `sweep_interval_s` otherwise").
"""

from __future__ import annotations

from pathlib import Path

from killswitch.model import Mode
from tests.conftest import eventually
from tests.fakes import MEXC_CAPS, FakeExchange
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import finished, kill_trigger, make_rig


async def test_a_latched_scope_is_swept_while_a_one_shot_cancel_runs(tmp_path: Path) -> None:
    binance = FakeExchange("binance", "b1")
    mexc = ReadsFake("mexc", "m1", MEXC_CAPS)
    mexc.place("BTCUSDT", "x-", n=2)
    rig = await make_rig(tmp_path, {"binance": binance, "mexc": mexc})
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        reads = mexc.reads

        mexc.hold_from = reads + 2  # the cancel's verification on MEXC is slow
        await rig.engine.submit(kill_trigger("c1", mode=Mode.CANCEL))
        await eventually(lambda: mexc.reads >= reads + 2)

        (rogue,) = binance.place("ETHUSDT", "rogue")  # in k1's latch; no stream shows it
        await rig.engine.sweep()  # what the sweeper does every `sweep_interval_s`
        assert ("ETHUSDT", rogue) not in binance.open_keys(), "the sweep skipped the latch"
    finally:
        mexc.release.set()
        await rig.engine.stop()
