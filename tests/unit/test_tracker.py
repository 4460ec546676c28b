"""OrderTracker: snapshot plus events, ordering races, lists, counts, trust, reconciliation."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.model import AccountRef, ExecType, ListEvent, Order, OrderEvent, OrderList, Snapshot
from killswitch.streams.tracker import Divergence, OrderTracker

REF = AccountRef("binance", "mm-1")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def new(
    order_id: str, symbol: str = "BTCUSDT", *, t: int = 1, list_id: str | None = None
) -> OrderEvent:
    return OrderEvent(
        symbol=symbol,
        order_id=order_id,
        client_order_id=f"c{order_id}",
        exec_type=ExecType.NEW,
        status="NEW",
        is_open=True,
        event_time_ms=t,
        side="BUY",
        order_type="LIMIT",
        price="100",
        orig_qty="2",
        list_id=list_id,
    )


def cancel(order_id: str, symbol: str = "BTCUSDT", *, t: int = 2) -> OrderEvent:
    return OrderEvent(
        symbol=symbol,
        order_id=order_id,
        client_order_id=f"cancel-{order_id}",
        exec_type=ExecType.CANCELED,
        status="CANCELED",
        is_open=False,
        event_time_ms=t,
    )


def trade(order_id: str, qty: str, *, filled: bool, symbol: str = "BTCUSDT") -> OrderEvent:
    return OrderEvent(
        symbol=symbol,
        order_id=order_id,
        client_order_id=f"c{order_id}",
        exec_type=ExecType.TRADE,
        status="FILLED" if filled else "PARTIALLY_FILLED",
        is_open=not filled,
        event_time_ms=3,
        side="BUY",
        order_type="LIMIT",
        price="100",
        orig_qty="2",
        last_qty=qty,
        last_price="100",
    )


def order(order_id: str, symbol: str = "BTCUSDT", *, list_id: str | None = None) -> Order:
    return Order(symbol=symbol, order_id=order_id, client_order_id=f"c{order_id}", list_id=list_id)


def list_event(list_id: str, legs: tuple[str, ...], *, is_open: bool) -> ListEvent:
    return ListEvent(
        symbol="BTCUSDT",
        list_id=list_id,
        list_client_order_id=f"L{list_id}",
        is_open=is_open,
        order_ids=legs,
        event_time_ms=5,
    )


def ids(tracker: OrderTracker) -> set[str]:
    return {o.order_id for o in tracker.open_orders()}


def keys(tracker: OrderTracker) -> set[tuple[str, str]]:
    return {o.key for o in tracker.open_orders()}


def test_new_event_adds_an_open_order_and_cancel_removes_it() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1"))
    assert ids(tracker) == {"1"}
    assert len(tracker) == 1
    got = tracker.get(("BTCUSDT", "1"))
    assert got is not None
    assert (got.symbol, got.client_order_id, got.price, got.status) == (
        "BTCUSDT",
        "c1",
        "100",
        "NEW",
    )
    tracker.apply(cancel("1"))
    assert ids(tracker) == set()
    assert tracker.get(("BTCUSDT", "1")) is None
    assert tracker.is_closed(("BTCUSDT", "1"))


def test_the_same_order_id_on_two_symbols_is_two_orders() -> None:
    # Binance numbers orders per symbol [§1.6]: BTCUSDT and ETHUSDT can both have order 1.
    tracker = OrderTracker(REF)
    tracker.apply(new("1", "BTCUSDT"))
    tracker.apply(new("1", "ETHUSDT"))
    tracker.apply(cancel("1", "BTCUSDT"))
    assert keys(tracker) == {("ETHUSDT", "1")}  # the ETHUSDT order is still open
    assert tracker.count_by_symbol() == {"ETHUSDT": 1}
    assert tracker.is_closed(("BTCUSDT", "1"))
    assert not tracker.is_closed(("ETHUSDT", "1"))
    # A NEW for id 2 on ETHUSDT after BTCUSDT's order 2 closed is a new order, not a stale one.
    tracker.apply(new("2", "BTCUSDT"))
    tracker.apply(cancel("2", "BTCUSDT"))
    tracker.apply(new("2", "ETHUSDT"))
    assert keys(tracker) == {("ETHUSDT", "1"), ("ETHUSDT", "2")}
    assert tracker.stale_events == 0


def test_colliding_ids_in_a_snapshot_lists_and_divergence_stay_apart() -> None:
    clock = FakeClock()
    tracker = OrderTracker(REF, now=clock)
    tracker.reset(
        Snapshot(
            orders=(
                order("1", "BTCUSDT", list_id="7"),
                order("2", "BTCUSDT", list_id="7"),
                order("1", "ETHUSDT"),
                order("2", "ETHUSDT", list_id="7"),
            ),
            lists=(
                OrderList("BTCUSDT", "7", order_ids=("1", "2")),
                OrderList("ETHUSDT", "7", order_ids=("2",)),
            ),
        )
    )
    assert len(tracker) == 4
    assert len(tracker.open_lists()) == 2
    tracker.apply(cancel("1", "ETHUSDT"))
    tracker.apply(cancel("2", "ETHUSDT"))  # closes ETHUSDT's list 7, not BTCUSDT's
    assert keys(tracker) == {("BTCUSDT", "1"), ("BTCUSDT", "2")}
    assert [(lst.symbol, lst.list_id) for lst in tracker.open_lists()] == [("BTCUSDT", "7")]
    clock.t += 10
    venue = Snapshot(orders=(order("1", "BTCUSDT", list_id="7"), order("2", "SOLUSDT")))
    div = tracker.divergence(venue, held_before=clock())
    assert div == Divergence(missing=(("SOLUSDT", "2"),), extra=(("BTCUSDT", "2"),))
    assert "SOLUSDT:2" in div.describe()


def test_cancel_arriving_before_its_new_does_not_resurrect_the_order() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(cancel("7"))
    tracker.apply(new("7"))
    assert ("BTCUSDT", "7") not in tracker
    assert tracker.stale_events == 1


def test_duplicate_new_after_cancel_is_ignored_and_duplicate_new_while_open_is_idempotent() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1"))
    tracker.apply(new("1"))
    assert tracker.count_by_symbol() == {"BTCUSDT": 1}
    tracker.apply(cancel("1"))
    tracker.apply(new("1"))
    tracker.apply(cancel("1"))
    assert len(tracker) == 0
    assert tracker.count_by_symbol() == {}


def test_partial_fill_keeps_the_order_open_and_accumulates_executed_quantity() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1", t=10))
    tracker.apply(trade("1", "0.5", filled=False))
    tracker.apply(trade("1", "0.25", filled=False))
    got = tracker.get(("BTCUSDT", "1"))
    assert got is not None
    assert got.status == "PARTIALLY_FILLED"
    assert got.executed_qty == "0.75"
    assert got.time_ms == 10  # creation time kept, not the fill's
    tracker.apply(trade("1", "1.25", filled=True))
    assert ("BTCUSDT", "1") not in tracker


def test_counts_by_symbol_follow_adds_and_removes() -> None:
    tracker = OrderTracker(REF)
    for i in range(3):
        tracker.apply(new(f"a{i}", "BTCUSDT"))
    for i in range(2):
        tracker.apply(new(f"b{i}", "ETHUSDT"))
    tracker.apply(cancel("a0", "BTCUSDT"))
    tracker.apply(cancel("b0", "ETHUSDT"))
    tracker.apply(cancel("b1", "ETHUSDT"))
    tracker.apply(cancel("b1", "ETHUSDT"))  # duplicate cancel changes nothing
    assert tracker.count_by_symbol() == {"BTCUSDT": 2}
    assert tracker.symbols() == {"BTCUSDT"}


def test_tracker_is_untrusted_until_the_first_snapshot_and_after_a_gap() -> None:
    clock = FakeClock()
    tracker = OrderTracker(REF, now=clock)
    assert not tracker.trusted
    assert tracker.trusted_since is None
    assert tracker.gap_reason == "no snapshot yet"
    clock.t = 1234.5
    tracker.reset(Snapshot(orders=(order("1"),), server_time_ms=99))
    assert tracker.trusted
    assert tracker.trusted_since == 1234.5
    assert tracker.gap_reason is None
    tracker.mark_gap("ws dropped")
    assert not tracker.trusted
    assert tracker.trusted_since is None
    assert tracker.gap_reason == "ws dropped"
    assert ids(tracker) == {"1"}  # state kept for best effort, but not trusted


def test_reset_replaces_state_and_reapplies_events_buffered_during_the_read() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("old"))
    snapshot = Snapshot(orders=(order("1"), order("2"), order("3", "ETHUSDT")), server_time_ms=50)
    buffered = [cancel("2"), new("4", "ETHUSDT"), new("5"), cancel("5")]
    tracker.reset(snapshot, buffered=buffered)
    assert ids(tracker) == {"1", "3", "4"}
    assert tracker.count_by_symbol() == {"BTCUSDT": 1, "ETHUSDT": 2}
    assert tracker.trusted


def test_reset_does_not_reopen_an_order_the_stream_already_saw_closed() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1"))
    tracker.apply(cancel("1"))
    tracker.reset(Snapshot(orders=(order("1"), order("2"))))
    assert ids(tracker) == {"2"}


def test_closed_memory_is_bounded() -> None:
    tracker = OrderTracker(REF, closed_memory=3)
    for i in range(5):
        tracker.apply(cancel(str(i)))
    assert [tracker.is_closed(("BTCUSDT", str(i))) for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_list_event_tracks_a_list_and_all_done_closes_it() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1", list_id="L1"))
    tracker.apply(new("2", list_id="L1"))
    tracker.apply(list_event("L1", ("1", "2"), is_open=True))
    got = tracker.get_list(("BTCUSDT", "L1"))
    assert got is not None
    assert got.order_ids == ("1", "2")
    assert tracker.symbols() == {"BTCUSDT"}
    tracker.apply(list_event("L1", ("1", "2"), is_open=False))
    assert tracker.open_lists() == []
    tracker.apply(list_event("L1", ("1", "2"), is_open=True))  # late duplicate
    assert tracker.open_lists() == []


def test_list_closes_when_all_its_legs_close_without_a_list_event() -> None:
    tracker = OrderTracker(REF)
    tracker.reset(
        Snapshot(
            orders=(order("1", list_id="L1"), order("2", list_id="L1")),
            lists=(OrderList("BTCUSDT", "L1", order_ids=("1", "2")),),
        )
    )
    tracker.apply(cancel("1"))
    assert [lst.list_id for lst in tracker.open_lists()] == ["L1"]
    tracker.apply(cancel("2"))
    assert tracker.open_lists() == []
    assert tracker.symbols() == set()


def test_no_list_markers_from_venues_are_not_list_ids() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1", list_id="-1"))
    tracker.apply(new("2", list_id="0"))
    assert [tracker.get(("BTCUSDT", i)).list_id for i in ("1", "2")] == [None, None]  # type: ignore[union-attr]


def test_as_snapshot_round_trips_through_reset() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1"))
    tracker.apply(new("2", "ETHUSDT", list_id="L9"))
    tracker.apply(list_event("L9", ("2",), is_open=True))
    snap = tracker.as_snapshot()
    other = OrderTracker(REF)
    other.reset(snap)
    assert {o.order_id for o in other.open_orders()} == {"1", "2"}
    assert [lst.list_id for lst in other.open_lists()] == ["L9"]
    assert snap.server_time_ms == 5


def test_divergence_reports_missing_and_extra_orders_and_confirm_drops_explained_ones() -> None:
    clock = FakeClock()
    tracker = OrderTracker(REF, now=clock)
    tracker.reset(Snapshot(orders=(order("held"), order("gone"))))
    clock.t = 2000.0
    read_started = clock()
    clock.t = 2001.0
    tracker.apply(new("young"))  # arrived during the read: not comparable
    venue = Snapshot(orders=(order("held"), order("unseen"), order("inflight")))
    div = tracker.divergence(venue, held_before=read_started)
    assert div == Divergence(
        missing=(("BTCUSDT", "unseen"), ("BTCUSDT", "inflight")), extra=(("BTCUSDT", "gone"),)
    )
    assert "missing=2" in div.describe()
    tracker.apply(new("inflight"))  # the event was only late
    assert tracker.confirm(div) == Divergence(
        missing=(("BTCUSDT", "unseen"),), extra=(("BTCUSDT", "gone"),)
    )
    tracker.apply(cancel("gone"))
    tracker.apply(new("unseen"))
    assert not tracker.confirm(div)


def test_adopt_lists_takes_grouping_only_when_all_legs_are_tracked() -> None:
    tracker = OrderTracker(REF)
    tracker.apply(new("1"))
    tracker.apply(new("2"))
    lists = [
        OrderList("BTCUSDT", "L1", order_ids=("1", "2")),
        OrderList("BTCUSDT", "L2", order_ids=("3", "4")),
    ]
    assert tracker.adopt_lists(lists) == 1
    assert [lst.list_id for lst in tracker.open_lists()] == ["L1"]
    tracker.apply(cancel("1"))
    tracker.apply(cancel("2"))
    assert tracker.open_lists() == []


# A stream delivers each order's NEW and maybe its close, possibly twice, possibly out of order.
order_fates = st.lists(
    st.tuples(
        st.sampled_from(["BTCUSDT", "ETHUSDT", "BTC-USDT"]),
        st.booleans(),  # closed
        st.booleans(),  # NEW duplicated
        st.booleans(),  # close delivered before NEW
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(fates=order_fates, rng=st.randoms(use_true_random=False))
def test_open_set_and_counts_match_the_orders_never_closed_whatever_the_order(
    fates: list[tuple[str, bool, bool, bool]], rng: random.Random
) -> None:
    per_order: list[list[OrderEvent]] = []
    expected: Counter[str] = Counter()
    expected_keys: set[tuple[str, str]] = set()
    numbered: Counter[str] = Counter()
    for symbol, closed, dup, reorder in fates:
        oid = str(numbered[symbol])  # numbered per symbol, as Binance does: ids collide
        numbered[symbol] += 1
        news = [new(oid, symbol)] * (2 if dup else 1)
        if closed:
            per_order.append(
                [cancel(oid, symbol), *news] if reorder else [*news, cancel(oid, symbol)]
            )
        else:
            per_order.append(news)
            expected[symbol] += 1
            expected_keys.add((symbol, oid))
    tracker = OrderTracker(REF)
    # Interleave the orders at random; each order's own events stay in delivery order.
    pending = [seq for seq in per_order if seq]
    while pending:
        seq = rng.choice(pending)
        tracker.apply(seq.pop(0))
        if not seq:
            pending.remove(seq)
    assert keys(tracker) == expected_keys
    assert tracker.count_by_symbol() == dict(expected)
    assert len(tracker) == sum(expected.values())
