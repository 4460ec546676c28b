"""The simulator's order book: placing, cancelling, lists, fills, history and its events."""

from __future__ import annotations

import itertools
from dataclasses import asdict, fields
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.sim.book import (
    AmbiguousOrder,
    BookEvent,
    BookEventKind,
    OrderSpec,
    SimBook,
    SimOrder,
    UnknownOrder,
)


def make_book(
    history_limit: int = 100_000, *, per_symbol: bool = False
) -> tuple[SimBook, list[BookEvent]]:
    ids = itertools.count(7_000_000_000_000_000_001)
    symbol_ids: dict[str, itertools.count[int]] = {}
    list_ids = itertools.count(1)
    clock = itertools.count(1_700_000_000_000)

    def per_symbol_id(symbol: str) -> str:
        return str(next(symbol_ids.setdefault(symbol, itertools.count(1))))

    if per_symbol:  # as Binance numbers orders: one counter per symbol
        book = SimBook(
            new_symbol_order_id=per_symbol_id,
            new_list_id=lambda: f"L{next(list_ids)}",
            now_ms=lambda: next(clock),
            history_limit=history_limit,
        )
    else:
        book = SimBook(
            new_order_id=lambda: str(next(ids)),
            new_list_id=lambda: f"L{next(list_ids)}",
            now_ms=lambda: next(clock),
            history_limit=history_limit,
        )
    events: list[BookEvent] = []
    book.subscribe(events.append)
    return book, events


def oco(symbol: str = "BTCUSDT", prefix: str = "x") -> list[OrderSpec]:
    return [
        OrderSpec(symbol, "SELL", "LIMIT_MAKER", Decimal(200), Decimal(1), f"{prefix}-above"),
        OrderSpec(symbol, "SELL", "STOP_LOSS_LIMIT", Decimal(50), Decimal(1), f"{prefix}-below"),
    ]


def test_place_uses_the_venue_id_factory_and_publishes_a_new_event() -> None:
    book, events = make_book()
    order = book.place(OrderSpec("BTCUSDT", "BUY", "LIMIT", Decimal("100.5"), Decimal(2), "c1"))
    assert order.order_id == "7000000000000000001"
    assert order.status == "NEW"
    assert order.is_open
    assert [e.kind for e in events] == [BookEventKind.NEW]
    assert events[0].order is not None
    assert events[0].order.order_id == order.order_id
    assert events[0].order.client_order_id == "c1"
    assert book.get_by_client_id("c1") is order


def test_place_without_client_id_mints_a_distinct_one_per_order() -> None:
    book, _ = make_book()
    a = book.place(OrderSpec("BTCUSDT"))
    b = book.place(OrderSpec("BTCUSDT"))
    assert a.client_order_id
    assert b.client_order_id
    assert a.client_order_id != b.client_order_id


def test_event_carries_a_copy_that_later_changes_do_not_rewrite() -> None:
    book, events = make_book()
    order = book.place(OrderSpec("BTCUSDT"))
    book.cancel(order.order_id)
    assert events[0].order is not None
    assert events[0].order.status == "NEW"
    assert events[1].order is not None
    assert events[1].order.status == "CANCELED"


def test_cancel_closes_the_order_keeps_it_queryable_and_publishes_canceled() -> None:
    book, events = make_book()
    order = book.place(OrderSpec("BTCUSDT", client_order_id="c1"))
    gone = book.cancel(order.order_id, cancel_client_order_id="kill-1")
    assert [o.order_id for o in gone] == [order.order_id]
    assert book.open_orders() == []
    closed = book.get(order.order_id)
    assert closed is not None
    assert closed.status == "CANCELED"
    assert closed.cancel_client_order_id == "kill-1"
    assert events[-1].kind is BookEventKind.CANCELED


def test_the_same_id_on_two_symbols_is_two_orders_and_closing_one_leaves_the_other() -> None:
    book, events = make_book(per_symbol=True)
    btc = book.place(OrderSpec("BTCUSDT", client_order_id="same"))
    eth = book.place(OrderSpec("ETHUSDT", client_order_id="same"))
    assert btc.order_id == eth.order_id == "1"
    assert set(book.open) == {("BTCUSDT", "1"), ("ETHUSDT", "1")}
    assert len(book.orders) == 2
    with pytest.raises(AmbiguousOrder):
        book.cancel("1")  # a bare id that two symbols share names no one order
    gone = book.cancel("1", symbol="BTCUSDT")
    assert [(o.symbol, o.order_id) for o in gone] == [("BTCUSDT", "1")]
    assert [o.symbol for o in book.open_orders()] == ["ETHUSDT"]
    assert book.get("1", "ETHUSDT") is eth
    assert eth.is_open
    closed = book.get("1", "BTCUSDT")
    assert closed is btc
    assert closed.status == "CANCELED"
    assert book.get_by_client_id("same", "BTCUSDT") is btc
    assert book.get_by_client_id("same", "ETHUSDT") is eth
    assert "1" in book.orders  # ETHUSDT's is still open
    book.fill("1", symbol="ETHUSDT")
    assert "1" not in book.orders
    assert [(e.kind, e.order.symbol) for e in events if e.order is not None][-2:] == [
        (BookEventKind.CANCELED, "BTCUSDT"),
        (BookEventKind.TRADE, "ETHUSDT"),
    ]


def test_ids_from_the_by_id_view_name_their_own_order_when_ids_collide() -> None:
    # Code written for bare ids (the sim's random-fill loop, BingX's dead-man's switch) walks
    # `book.orders` and hands each id back: with ids repeating across symbols, each must
    # still name exactly one order.
    book, _ = make_book(per_symbol=True)
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        book.place(OrderSpec(symbol))
        book.place(OrderSpec(symbol))
    ids = list(book.orders)
    assert sorted(ids) == ["1", "1", "1", "2", "2", "2"]  # still plain ids to compare
    for order_id in ids[:3]:
        assert order_id in book.orders
        assert book.orders[order_id].order_id == order_id
        book.fill(order_id)
    for order_id in list(book.orders):
        book.cancel(order_id)
    assert not book.open
    assert len(book.closed) == 6


def test_an_id_the_book_minted_names_its_own_order_when_handed_back() -> None:
    # The usual test and bench flow: place, keep `order.order_id`, cancel or fill by it.
    book, _ = make_book(per_symbol=True)
    btc = book.place(OrderSpec("BTCUSDT"))
    eth = book.place(OrderSpec("ETHUSDT"))
    assert btc.order_id == eth.order_id == "1"
    assert [o.symbol for o in book.cancel(eth.order_id)] == ["ETHUSDT"]
    assert book.fill(btc.order_id).symbol == "BTCUSDT"
    assert book.get(eth.order_id) is eth
    assert not book.open


def test_list_legs_are_looked_up_on_the_lists_symbol() -> None:
    book, _ = make_book(per_symbol=True)
    plain = book.place(OrderSpec("ETHUSDT"))
    lst = book.place_list(oco("BTCUSDT"))
    assert lst.order_ids[0] == plain.order_id  # "1" on both symbols
    book.cancel(plain.order_id, symbol="ETHUSDT")
    assert [x.list_id for x in book.open_lists()] == [lst.list_id]
    assert [o.order_id for o in book.legs(lst)] == lst.order_ids
    book.fill(lst.order_ids[0], symbol="BTCUSDT")
    assert book.open_lists() == []
    assert book.open_orders() == []


def test_cancelling_twice_raises_unknown_order_the_second_time() -> None:
    book, _ = make_book()
    order = book.place(OrderSpec("BTCUSDT"))
    book.cancel(order.order_id)
    with pytest.raises(UnknownOrder):
        book.cancel(order.order_id)
    with pytest.raises(UnknownOrder):
        book.cancel("no-such-id")


def test_cancelling_one_leg_cancels_the_whole_list_and_reports_all_done() -> None:
    book, events = make_book()
    lst = book.place_list(oco(), contingency_type="OCO", list_client_order_id="my-list")
    assert lst.list_client_order_id == "my-list"
    assert len(lst.order_ids) == 2
    assert [e.kind for e in events] == [
        BookEventKind.NEW,
        BookEventKind.NEW,
        BookEventKind.LIST_STATUS,
    ]
    gone = book.cancel(lst.order_ids[1])
    assert sorted(o.order_id for o in gone) == sorted(lst.order_ids)
    assert book.open_orders() == []
    assert book.open_lists() == []
    finished = book.get_list(lst.list_id)
    assert finished is not None
    assert not finished.open
    last = events[-1]
    assert last.kind is BookEventKind.LIST_STATUS
    assert last.order_list is not None
    assert not last.order_list.open


def test_cancel_list_of_an_unknown_or_finished_list_raises_unknown_order() -> None:
    book, _ = make_book()
    lst = book.place_list(oco())
    book.cancel_list(lst.list_id)
    with pytest.raises(UnknownOrder):
        book.cancel_list(lst.list_id)
    with pytest.raises(UnknownOrder):
        book.cancel_list("L999")


def test_place_list_without_legs_is_refused() -> None:
    book, _ = make_book()
    with pytest.raises(ValueError, match="legs"):
        book.place_list([])


def test_cancel_symbols_cancels_only_the_named_symbols_lists_included() -> None:
    book, _ = make_book()
    book.place(OrderSpec("BTCUSDT"))
    book.place(OrderSpec("ETHUSDT"))
    book.place_list(oco("BTCUSDT"))
    gone = book.cancel_symbols(["BTCUSDT"])
    assert len(gone) == 3
    assert {o.symbol for o in book.open_orders()} == {"ETHUSDT"}
    assert book.open_lists() == []


def test_cancel_symbols_without_lists_leaves_list_legs_working() -> None:
    book, _ = make_book()
    plain = book.place(OrderSpec("BTCUSDT"))
    lst = book.place_list(oco("BTCUSDT"))
    gone = book.cancel_symbols(None, include_lists=False)
    assert [o.order_id for o in gone] == [plain.order_id]
    assert sorted(o.order_id for o in book.open_orders()) == sorted(lst.order_ids)
    assert [x.list_id for x in book.open_lists()] == [lst.list_id]


def test_cancel_symbols_none_cancels_everything() -> None:
    book, _ = make_book()
    book.place(OrderSpec("BTCUSDT"))
    book.place(OrderSpec("ETHUSDT"))
    book.place_list(oco("SOLUSDT"))
    assert len(book.cancel_symbols(None)) == 4
    assert book.open_orders() == []
    assert book.open_lists() == []
    assert book.cancel_symbols(None) == []


def test_partial_fill_keeps_the_order_open_and_a_full_fill_closes_it() -> None:
    book, events = make_book()
    order = book.place(OrderSpec("BTCUSDT", price=Decimal(10), quantity=Decimal(3)))
    book.fill(order.order_id, Decimal(1))
    assert order.status == "PARTIALLY_FILLED"
    assert order.is_open
    assert events[-1].kind is BookEventKind.TRADE
    assert events[-1].last_qty == Decimal(1)
    assert events[-1].last_price == Decimal(10)
    book.fill(order.order_id, Decimal(99))  # capped at what remains
    assert order.status == "FILLED"
    assert order.executed_qty == Decimal(3)
    assert order.cum_quote_qty == Decimal(30)
    assert events[-1].last_qty == Decimal(2)
    assert book.open_orders() == []
    with pytest.raises(UnknownOrder):
        book.fill(order.order_id)


def test_filling_an_oco_leg_expires_its_sibling_and_ends_the_list() -> None:
    book, events = make_book()
    lst = book.place_list(oco())
    filled_id, sibling_id = lst.order_ids
    book.fill(filled_id)
    sibling = book.get(sibling_id)
    assert sibling is not None
    assert sibling.status == "EXPIRED"
    assert book.open_lists() == []
    assert events[-1].kind is BookEventKind.LIST_STATUS


def test_queries_filter_by_symbol() -> None:
    book, _ = make_book()
    book.place(OrderSpec("BTCUSDT"))
    book.place(OrderSpec("ETHUSDT"))
    book.place_list(oco("ETHUSDT"))
    assert {o.symbol for o in book.open_orders(["ETHUSDT"])} == {"ETHUSDT"}
    assert len(book.open_orders(["ETHUSDT"])) == 3
    assert len(book.open_lists(["BTCUSDT"])) == 0
    assert len(book.open_lists(["ETHUSDT"])) == 1
    assert book.symbols() == {"BTCUSDT", "ETHUSDT"}


def test_history_is_bounded_and_forgets_the_oldest_closed_orders() -> None:
    book, _ = make_book(history_limit=2)
    orders = [book.place(OrderSpec("BTCUSDT", client_order_id=f"c{i}")) for i in range(3)]
    for order in orders:
        book.cancel(order.order_id)
    assert book.get(orders[0].order_id) is None
    assert book.get_by_client_id("c0") is None
    assert book.get(orders[2].order_id) is not None
    assert book.get_by_client_id("c2") is orders[2]


def test_forgetting_an_old_order_keeps_a_newer_order_with_the_same_client_id() -> None:
    book, _ = make_book(history_limit=1)
    old = book.place(OrderSpec("BTCUSDT", client_order_id="reused"))
    book.cancel(old.order_id)
    new = book.place(OrderSpec("BTCUSDT", client_order_id="reused"))
    other = book.place(OrderSpec("BTCUSDT"))
    book.cancel(other.order_id)  # pushes `old` out of the history
    assert book.get(old.order_id) is None
    assert book.get_by_client_id("reused") is new


def test_an_unsubscribed_listener_hears_nothing_more() -> None:
    book, events = make_book()
    book.unsubscribe(events.append)
    book.unsubscribe(events.append)  # twice is harmless
    book.place(OrderSpec("BTCUSDT"))
    assert events == []


def replay(events: list[BookEvent]) -> tuple[set[tuple[str, str]], set[str]]:
    """What a stream client that saw only `events` believes is open (order keys, lists)."""
    orders: set[tuple[str, str]] = set()
    lists: set[str] = set()
    for event in events:
        if event.order is not None:
            key = (event.order.symbol, event.order.order_id)
            if event.order.is_open:
                orders.add(key)
            else:
                orders.discard(key)
        if event.order_list is not None:
            if event.order_list.open:
                lists.add(event.order_list.list_id)
            else:
                lists.discard(event.order_list.list_id)
    return orders, lists


OPS = st.lists(
    st.tuples(
        st.sampled_from(["place", "list", "cancel", "cancel_list", "fill", "partial", "sweep"]),
        st.integers(min_value=0, max_value=50),
        st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(OPS, st.booleans())
def test_the_event_stream_alone_reconstructs_the_open_book(
    ops: list[tuple[str, int, str]], per_symbol: bool
) -> None:
    book, events = make_book(per_symbol=per_symbol)
    for op, n, symbol in ops:
        open_keys = sorted(book.open)
        pick = open_keys[n % len(open_keys)] if open_keys else None
        list_ids = sorted(book.lists)
        if op == "place":
            book.place(OrderSpec(symbol, quantity=Decimal(2)))
        elif op == "list":
            book.place_list(oco(symbol, prefix=str(n)))
        elif op == "cancel" and pick:
            book.cancel(pick[1], symbol=pick[0])
        elif op == "cancel_list" and list_ids:
            book.cancel_list(list_ids[n % len(list_ids)])
        elif op == "fill" and pick:
            book.fill(pick[1], symbol=pick[0])
        elif op == "partial" and pick:
            book.fill(pick, Decimal(1))
        elif op == "sweep":
            book.cancel_symbols([symbol], include_lists=n % 2 == 0)
    orders, lists = replay(events)
    assert orders == set(book.open)
    assert lists == set(book.lists)
    for order_list in book.lists.values():
        assert all((order_list.symbol, oid) in book.open for oid in order_list.order_ids)
    for key, order in book.open.items():
        assert key == (order.symbol, order.order_id)
        assert order.list_id is None or order.list_id in book.lists
        assert key not in book.closed


def test_an_order_copy_carries_every_field() -> None:
    values = {}
    for i, f in enumerate(fields(SimOrder)):
        if f.type in ("Decimal",):
            values[f.name] = Decimal(i + 1)
        elif f.type in ("int",):
            values[f.name] = i + 1
        else:
            values[f.name] = f"v{i}"
    order = SimOrder(**values)
    copy = order.copy()
    assert copy is not order
    assert asdict(copy) == asdict(order) == values
