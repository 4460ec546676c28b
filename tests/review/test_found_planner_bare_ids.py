"""Review: the planner de-duplicates orders by bare order id (`planner._unique_orders`).

Binance numbers orders per symbol (reference §1.6), so two open orders on two symbols can share
an id. `_unique_orders` keeps one of them, so a stream burst that shows both new orders while
latched cancels only one at once; the other waits for the next sweep (DESIGN "Latched means
latched: at once when a stream shows it"). The same map drops one of them from a prefix-scoped
wave's plan.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.kill.planner import plan
from killswitch.model import AccountRef, ExecType, OrderEvent, Scope, Snapshot
from tests.fakes import BINANCE_CAPS, FakeExchange, _order
from tests.unit.test_engine import finished, kill_trigger, make_rig


def new_order(venue: FakeExchange, symbol: str, order_id: str) -> OrderEvent:
    order = venue.book.open[(symbol, order_id)]
    return OrderEvent(symbol, order_id, order.client_order_id, ExecType.NEW, "NEW", True, 0)


async def test_a_stream_burst_of_two_orders_sharing_an_id_cancels_both_at_once(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "b1", ids_per_symbol=True)
    rig = await make_rig(tmp_path, {"binance": venue})  # sweeps once an hour: none here
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        (btc,) = venue.place("BTCUSDT", "bot-a")
        (eth,) = venue.place("ETHUSDT", "bot-b")
        assert btc == eth  # numbered per symbol, as on Binance
        rig.engine.on_stream_event(ref, new_order(venue, "BTCUSDT", btc))
        rig.engine.on_stream_event(ref, new_order(venue, "ETHUSDT", eth))
        await rig.engine.wait_idle()
        assert venue.open_keys() == set(), f"left open while latched: {venue.open_keys()}"
    finally:
        await rig.engine.stop()


def test_a_plan_by_id_covers_two_orders_that_share_an_id_on_two_symbols() -> None:
    venue = FakeExchange("binance", "b1", ids_per_symbol=True)
    venue.place("BTCUSDT", "desk-a")
    venue.place("ETHUSDT", "desk-b")
    snap = Snapshot(tuple(_order(venue.book.open[k]) for k in sorted(venue.open_keys())))
    requests = plan(Scope.of(client_order_id_prefix="desk-"), None, snap, (), BINANCE_CAPS)
    covered = {(r.symbols[0], i) for r in requests for i in r.order_ids}
    assert covered == venue.open_keys()
