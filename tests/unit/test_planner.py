"""The planner: the fewest requests that cover a scope, from capabilities, never from names."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from killswitch.exchanges.base import Capabilities
from killswitch.model import Order, OrderList, Scope, Snapshot
from killswitch.planner import CancelRequest, RequestKind, plan
from tests.fakes import BINANCE_CAPS, BINGX_CAPS, MEXC_CAPS


def order(symbol: str, order_id: str, client_id: str = "", list_id: str | None = None) -> Order:
    return Order(symbol=symbol, order_id=order_id, client_order_id=client_id, list_id=list_id)


def snap(*orders: Order, lists: tuple[OrderList, ...] = ()) -> Snapshot:
    return Snapshot(orders=orders, lists=lists)


EVERYTHING = Scope()


def test_binance_gets_one_cancel_all_per_symbol_with_open_orders() -> None:
    venue = snap(order("BTCUSDT", "1"), order("BTCUSDT", "2"), order("ETHUSDT", "3"))
    requests = plan(EVERYTHING, None, venue, (), BINANCE_CAPS)
    assert requests == [
        CancelRequest(RequestKind.CANCEL_ALL, ("BTCUSDT",)),
        CancelRequest(RequestKind.CANCEL_ALL, ("ETHUSDT",)),
    ]


def test_symbol_set_is_the_union_of_tracker_snapshot_and_configuration() -> None:
    tracked = snap(order("AAAUSDT", "1"))
    venue = snap(order("BBBUSDT", "2"))
    requests = plan(EVERYTHING, tracked, venue, ["CCCUSDT"], BINANCE_CAPS)
    assert {r.symbols for r in requests} == {("AAAUSDT",), ("BBBUSDT",), ("CCCUSDT",)}


def test_mexc_packs_up_to_five_symbols_per_cancel_all() -> None:
    symbols = [f"S{i:02d}USDT" for i in range(12)]
    venue = snap(*(order(s, str(i)) for i, s in enumerate(symbols)))
    requests = plan(EVERYTHING, None, venue, (), MEXC_CAPS)
    assert [len(r.symbols) for r in requests] == [5, 5, 2]
    assert sorted(s for r in requests for s in r.symbols) == sorted(symbols)


def test_bingx_whole_account_uses_one_cancel_all_without_symbol_plus_its_lists() -> None:
    oco = OrderList("BTC-USDT", "L1", "lc", ("7", "8"), ("a", "b"))
    venue = snap(order("BTC-USDT", "1"), order("ETH-USDT", "2"), lists=(oco,))
    requests = plan(EVERYTHING, None, venue, (), BINGX_CAPS)
    assert requests == [
        CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT),
        CancelRequest(RequestKind.CANCEL_LIST, ("BTC-USDT",), list_id="L1"),
    ]


def test_symbol_scoped_kill_never_uses_a_cancel_all_without_symbol() -> None:
    venue = snap(order("BTC-USDT", "1"), order("ETH-USDT", "2"))
    requests = plan(Scope.of(symbols=["BTCUSDT"]), None, venue, (), BINGX_CAPS)
    assert requests == [CancelRequest(RequestKind.CANCEL_ALL, ("BTC-USDT",))]


def test_binance_cancel_all_covers_lists_so_no_list_request_is_planned() -> None:
    oco = OrderList("BTCUSDT", "L1", "lc", ("7", "8"), ("a", "b"))
    venue = snap(order("BTCUSDT", "7", "a", "L1"), order("BTCUSDT", "8", "b", "L1"), lists=(oco,))
    assert plan(EVERYTHING, None, venue, (), BINANCE_CAPS) == [
        CancelRequest(RequestKind.CANCEL_ALL, ("BTCUSDT",))
    ]


def test_prefix_scope_cancels_exactly_the_matching_orders_in_batches() -> None:
    venue = snap(
        order("BTC-USDT", "1", "strat7-a"),
        order("BTC-USDT", "2", "strat7-b"),
        order("BTC-USDT", "3", "other-c"),
        order("ETH-USDT", "4", "strat7-d"),
    )
    requests = plan(Scope.of(client_order_id_prefix="strat7-"), None, venue, (), BINGX_CAPS)
    assert requests == [
        CancelRequest(RequestKind.CANCEL_ORDERS, ("BTC-USDT",), ("1", "2")),
        CancelRequest(RequestKind.CANCEL_ORDER, ("ETH-USDT",), ("4",)),
    ]


def test_prefix_scope_without_batch_cancels_one_by_one() -> None:
    venue = snap(order("BTCUSDT", "1", "s-a"), order("BTCUSDT", "2", "s-b"), order("X", "3", "t"))
    requests = plan(Scope.of(client_order_id_prefix="s-"), None, venue, ["X"], BINANCE_CAPS)
    assert requests == [
        CancelRequest(RequestKind.CANCEL_ORDER, ("BTCUSDT",), ("1",)),
        CancelRequest(RequestKind.CANCEL_ORDER, ("BTCUSDT",), ("2",)),
    ]


def test_prefix_scope_cancels_a_list_whose_leg_matches_and_not_its_legs_one_by_one() -> None:
    oco = OrderList("BTCUSDT", "L1", "other", ("7", "8"), ("s-a", "s-b"))
    venue = snap(
        order("BTCUSDT", "7", "s-a", "L1"), order("BTCUSDT", "8", "s-b", "L1"), lists=(oco,)
    )
    requests = plan(Scope.of(client_order_id_prefix="s-"), None, venue, (), BINANCE_CAPS)
    assert requests == [CancelRequest(RequestKind.CANCEL_LIST, ("BTCUSDT",), list_id="L1")]


def test_requests_already_sent_are_not_planned_again() -> None:
    first = plan(EVERYTHING, snap(order("AUSDT", "1")), None, ["BUSDT"], BINANCE_CAPS)
    venue = snap(order("AUSDT", "1"), order("CUSDT", "2"))
    extra = plan(EVERYTHING, None, venue, (), BINANCE_CAPS, already=first)
    assert extra == [CancelRequest(RequestKind.CANCEL_ALL, ("CUSDT",))]


def test_nothing_known_on_a_per_symbol_venue_plans_nothing() -> None:
    assert plan(EVERYTHING, None, Snapshot(), (), BINANCE_CAPS) == []


symbols_st = st.sampled_from(["AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT", "FUSDT", "GUSDT"])
orders_st = st.lists(
    st.tuples(symbols_st, st.sampled_from(["s7-", "s8-", ""])), min_size=0, max_size=40
)
caps_st = st.sampled_from([BINANCE_CAPS, MEXC_CAPS, BINGX_CAPS])


@given(orders_st, caps_st, st.sampled_from([None, "s7-"]), st.sets(symbols_st, max_size=2))
def test_every_order_in_scope_is_covered_and_none_outside_it(
    raw: list[tuple[str, str]], caps: object, prefix: str | None, scope_symbols: set[str]
) -> None:
    assert isinstance(caps, Capabilities)
    orders = [order(s, str(i), f"{p}{i}") for i, (s, p) in enumerate(raw)]
    scope = Scope.of(symbols=scope_symbols, client_order_id_prefix=prefix)
    requests = plan(scope, None, snap(*orders), (), caps)
    for o in orders:
        covered = any(
            r.kind is RequestKind.CANCEL_ALL_ACCOUNT
            or (r.kind is RequestKind.CANCEL_ALL and o.symbol in r.symbols)
            or o.order_id in r.order_ids
            for r in requests
        )
        assert covered == scope.covers_order(o)
    for r in requests:
        assert len(r.symbols) <= max(1, caps.cancel_all_max_symbols)
        if scope.symbols or prefix:
            assert r.kind is not RequestKind.CANCEL_ALL_ACCOUNT
        if r.kind is RequestKind.CANCEL_ORDERS:
            assert len(r.order_ids) <= caps.batch_cancel_max
