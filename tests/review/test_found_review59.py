"""Review 59: Binance as it really is.

1. An amended order (`PUT /api/v3/order/amend/keepPriority`) gets a new client order id
   ("By default, amended orders get a random new client order ID", faqs/
   order_amend_keep_priority.md), told on the stream as an executionReport with x=REPLACED
   and `c` the new id. The tracker kept the old id (a cancel's `c` is the cancel's own id,
   and that rule took in amends too), so a kill by the old prefix planned from the tracker
   cancelled an order amended out of its scope. A list leg amended so kept the list's old
   leg ids.
"""

from __future__ import annotations

from typing import Any

from killswitch.exchanges.binance.parse import execution_report_event, list_status_event
from killswitch.model import AccountRef, OrderList, Scope, Snapshot
from killswitch.streams.tracker import OrderTracker


def report(x: str, c: str, orig: str, *, list_id: int = -1, order_id: int = 7) -> dict[str, Any]:
    return {
        "e": "executionReport",
        "E": 1,
        "s": "BTCUSDT",
        "c": c,
        "S": "BUY",
        "o": "LIMIT",
        "q": "0.5",
        "p": "100",
        "g": list_id,
        "C": orig,
        "x": x,
        "X": "NEW" if x != "CANCELED" else "CANCELED",
        "i": order_id,
        "l": "0",
        "z": "0",
        "L": "0",
        "T": 1,
    }


def test_an_amended_order_carries_its_new_client_id_a_cancelled_one_its_own() -> None:
    tracker = OrderTracker(AccountRef("binance", "b1"))
    tracker.apply(execution_report_event(report("NEW", "strat7-a", "")))
    tracker.apply(execution_report_event(report("REPLACED", "strat8-a", "strat7-a")))
    (order,) = tracker.open_orders()
    assert order.client_order_id == "strat8-a"
    assert not Scope(client_order_id_prefix="strat7-").covers_order(order)
    # A cancel's `c` is the cancel request's own id: the order keeps its id until it closes.
    tracker.apply(execution_report_event(report("NEW", "strat9-b", "", order_id=8)))
    tracker.apply(execution_report_event(report("TRADE", "cancel-req-1", "", order_id=8)))
    assert {o.client_order_id for o in tracker.open_orders()} == {"strat8-a", "strat9-b"}


def test_an_amended_leg_changes_the_leg_ids_its_list_is_scoped_by() -> None:
    tracker = OrderTracker(AccountRef("binance", "b1"))
    legs = OrderList("BTCUSDT", "5", "strat7-L", ("7", "8"), ("strat7-a", "strat7-b"))
    tracker.reset(Snapshot(lists=(legs,)))
    for order_id, c in ((7, "strat7-a"), (8, "strat7-b")):
        tracker.apply(execution_report_event(report("NEW", c, "", list_id=5, order_id=order_id)))
    for order_id, c, orig in ((7, "strat8-a", "strat7-a"), (8, "strat8-b", "strat7-b")):
        tracker.apply(
            execution_report_event(report("REPLACED", c, orig, list_id=5, order_id=order_id))
        )
    (order_list,) = tracker.open_lists()
    assert order_list.client_order_ids == ("strat8-a", "strat8-b")
    status = {
        "e": "listStatus",
        "E": 2,
        "s": "BTCUSDT",
        "g": 5,
        "c": "OCO",
        "l": "UPDATED",
        "L": "EXECUTING",
        "r": "NONE",
        "C": "strat7-L",
        "T": 2,
        "O": [{"s": "BTCUSDT", "i": 7, "c": "strat8-a"}, {"s": "BTCUSDT", "i": 8, "c": "strat8-b"}],
    }
    tracker.apply(list_status_event(status))
    (order_list,) = tracker.open_lists()
    assert order_list.client_order_ids == ("strat8-a", "strat8-b")
