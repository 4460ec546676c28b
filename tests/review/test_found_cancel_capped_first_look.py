"""Review: a one-shot `cancel` whose first look was a capped page forgets what the page hid.

A prefix-scoped cancel on BingX reads all symbols; the page is capped (2,000 rows of another
desk's orders), so it shows none of the scope's orders and is marked incomplete. The cancel's
targets are fixed from that first look (`waves._account_waves`: `targets = set(result.known)`).
When a later read is complete (the other desk's orders dropped below the cap), it shows the
in-scope orders, which were open at the trigger, but `_only(verify, targets, ...)` filters them
out and the empty remainder "proves" flat.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from killswitch.kill.record import KillState
from killswitch.model import Mode, Snapshot
from tests.fakes import BINGX_CAPS
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import kill_trigger, make_rig


async def test_a_cancel_whose_first_page_was_capped_is_not_flat_with_its_orders_open(
    tmp_path: Path,
) -> None:
    venue = ReadsFake("bingx", "x1", BINGX_CAPS)
    venue.place("BTC-USDT", "other-", n=5)  # stands for 2,000 rows of another desk
    mine = venue.place("ETH-USDT", "desk9-", n=3)

    def capped(n: int, symbols: Sequence[str] | None, snap: Snapshot) -> Snapshot:
        if n == 1 and symbols is None:
            # The first all-symbols page is full of BTC-USDT rows: cut short, says so.
            rows = tuple(o for o in snap.orders if o.symbol == "BTC-USDT")
            return Snapshot(rows, (), snap.server_time_ms, complete=False)
        return snap

    venue.rewrite = capped
    rig = await make_rig(tmp_path, {"bingx": venue})
    try:
        await rig.engine.submit(
            kill_trigger("c1", mode=Mode.CANCEL, venues=["bingx"], client_order_id_prefix="desk9-")
        )
        kill = rig.engine.kill_for("c1")
        assert kill is not None
        await kill.finished.wait()

        left = {k for k in venue.open_keys() if k[0] == "ETH-USDT"}
        # Open since before the trigger, hidden only by the cut-short first page: the cancel's
        # business, cancelled by it, and only then flat.
        assert not left, f"cancel reported {kill.state} with {sorted(left)} open"
        assert kill.state is KillState.FLAT
        (result,) = kill.accounts.values()
        assert {("ETH-USDT", i) for i in mine} <= result.cancelled
    finally:
        await rig.engine.stop()
