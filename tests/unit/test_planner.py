"""The planner: the fewest requests that cover a scope, from capabilities, never from names."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from killswitch.exchanges.base import Capabilities
from killswitch.exchanges.bingx import CAPABILITIES as BINGX_CONNECTOR_CAPS
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.bingx.venue import CANCEL as BX_CANCEL
from killswitch.exchanges.bingx.venue import CANCEL_ORDERS as BX_CANCEL_ORDERS
from killswitch.exchanges.bingx.venue import IP_RPS as BX_IP_RPS
from killswitch.exchanges.bingx.venue import OCO_CANCEL as BX_OCO_CANCEL
from killswitch.exchanges.paths import PathCapabilities
from killswitch.kill.planner import CancelRequest, RequestKind, in_scope, plan, plan_time_s
from killswitch.model import UNREAD_CLIENT_ID, Order, OrderList, Scope, Snapshot
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
    assert requests[0] == CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    # ... and one request for the list: its legs' ids in a batch or oco/cancel, whichever the
    # planner times faster under BingX's limits.
    assert requests[1:] in (
        [CancelRequest(RequestKind.CANCEL_ORDERS, ("BTC-USDT",), ("7", "8"))],
        [CancelRequest(RequestKind.CANCEL_LIST, ("BTC-USDT",), list_id="L1")],
    )


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
caps_st = st.sampled_from([BINANCE_CAPS, MEXC_CAPS, BINGX_CAPS, BINGX_CONNECTOR_CAPS])


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


# -- BingX: plans chosen by their time under the limits, from what the account taught us ----

BX = BINGX_CONNECTOR_CAPS


def bx_caps(coverage: bool | None = None, legs: bool | None = None) -> PathCapabilities:
    return replace(
        BX,
        lists_coverage=coverage,
        cancel_all_covers_lists=coverage is True,
        list_legs_by_batch=legs,
    )


def ocos(n: int, symbol: str = "ETH-USDT") -> tuple[list[Order], tuple[OrderList, ...]]:
    legs: list[Order] = []
    lists: list[OrderList] = []
    for i in range(n):
        a, b = f"{i}1", f"{i}2"
        legs += [order(symbol, a, list_id=f"L{i}"), order(symbol, b, list_id=f"L{i}")]
        lists.append(OrderList(symbol, f"L{i}", "", (a, b), ("", "")))
    return legs, tuple(lists)


def kinds(requests: list[CancelRequest]) -> Counter[RequestKind]:
    return Counter(r.kind for r in requests)


def test_bingx_first_look_sends_the_account_cancel_all_and_lets_lists_wait_while_unknown() -> None:
    legs, lists = ocos(30)
    tracked = snap(order("BTC-USDT", "1"), *legs, lists=lists)
    assert plan(EVERYTHING, tracked, None, (), bx_caps()) == [
        CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    ]


def test_bingx_first_look_sends_a_few_lists_at_once_when_that_costs_no_time() -> None:
    legs, lists = ocos(3)
    tracked = snap(order("BTC-USDT", "1"), *legs, lists=lists)
    requests = plan(EVERYTHING, tracked, None, (), bx_caps())
    assert requests[0] == CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    assert {i for r in requests for i in r.order_ids} == {o.order_id for o in legs}
    assert plan_time_s(requests, BX) == 0


def test_bingx_lists_left_after_the_cancel_all_go_by_leg_batches_not_one_by_one() -> None:
    legs, lists = ocos(30)
    requests = plan(EVERYTHING, None, snap(*legs, lists=lists), (), bx_caps(coverage=False))
    by_batch = [r for r in requests if r.kind is RequestKind.CANCEL_ORDERS]
    by_list = {r.list_id for r in requests if r.kind is RequestKind.CANCEL_LIST}
    by_leg = {i for r in requests if r.kind is RequestKind.CANCEL_ORDER for i in r.order_ids}
    covered = {i for r in by_batch for i in r.order_ids}
    covered |= {
        i for x in lists if x.list_id in by_list or by_leg & set(x.order_ids) for i in x.order_ids
    }
    assert covered == {o.order_id for o in legs}
    assert all(len(r.order_ids) <= BX.batch_cancel_max for r in by_batch)
    slow = [CancelRequest(RequestKind.CANCEL_LIST, ("ETH-USDT",), list_id=x.list_id) for x in lists]
    all_batches = [
        CancelRequest(RequestKind.CANCEL_ORDERS, ("ETH-USDT",), ("x",)) for _ in range(6)
    ]  # 60 legs, 10 a batch
    # Batches carry most lists; oco/cancel and single leg cancels, each on its own budget,
    # take some side by side.
    assert len(by_batch) >= len(by_list) / 5
    assert plan_time_s(requests, BX) < plan_time_s(all_batches, BX) < plan_time_s(slow, BX)


def test_bingx_lists_on_many_symbols_use_both_list_paths_at_once() -> None:
    legs: list[Order] = []
    lists: list[OrderList] = []
    for i, symbol in enumerate(["A-USDT", "B-USDT", "C-USDT", "D-USDT"]):
        a, b, list_id = f"{i}a", f"{i}b", f"L{i}"
        legs += [order(symbol, a, list_id=list_id), order(symbol, b, list_id=list_id)]
        lists.append(OrderList(symbol, list_id, "", (a, b), ("", "")))
    requests = plan(EVERYTHING, None, snap(*legs, lists=tuple(lists)), (), bx_caps(False))
    # One batch a symbol would queue the third and fourth behind the 2/s limit.
    assert kinds(requests) == Counter({RequestKind.CANCEL_ORDERS: 2, RequestKind.CANCEL_LIST: 2})
    assert plan_time_s(requests, BX) == 0


def test_bingx_lists_go_one_by_one_once_leg_ids_were_refused() -> None:
    legs, lists = ocos(4)
    requests = plan(EVERYTHING, None, snap(*legs, lists=lists), (), bx_caps(False, legs=False))
    assert kinds(requests) == Counter({RequestKind.CANCEL_LIST: 4})


def test_bingx_a_cancel_all_that_covers_lists_is_all_a_known_account_needs() -> None:
    legs, lists = ocos(5)
    tracked = snap(order("BTC-USDT", "1"), *legs, lists=lists)
    assert plan(EVERYTHING, tracked, None, (), bx_caps(coverage=True)) == [
        CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    ]
    verify = snap(*legs, lists=lists)
    assert plan(EVERYTHING, None, verify, (), bx_caps(coverage=True)) == [
        CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    ]


def test_bingx_learned_lists_go_with_the_cancel_all_at_first_look() -> None:
    legs, lists = ocos(2)
    tracked = snap(*legs, lists=lists)
    requests = plan(EVERYTHING, tracked, None, (), bx_caps(coverage=False, legs=True))
    assert kinds(requests) == Counter(
        {RequestKind.CANCEL_ALL_ACCOUNT: 1, RequestKind.CANCEL_ORDERS: 1}
    )


def test_bingx_an_incomplete_snapshot_showing_nothing_still_gets_the_cancel_all() -> None:
    incomplete = Snapshot(complete=False)
    assert plan(EVERYTHING, None, incomplete, (), bx_caps()) == [
        CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT)
    ]
    assert plan(EVERYTHING, None, Snapshot(), (), bx_caps()) == []


def test_bingx_symbol_scope_mixes_request_kinds_to_finish_sooner_than_cancel_all_each() -> None:
    symbols = [f"S{i}-USDT" for i in range(8)]
    venue = snap(*(order(s, f"{s}-{j}") for s in symbols for j in range(3)))
    scope = Scope.of(symbols=symbols)
    requests = plan(scope, None, venue, (), BX)
    each = [CancelRequest(RequestKind.CANCEL_ALL, (s,)) for s in symbols]
    assert plan_time_s(requests, BX) < plan_time_s(each, BX)
    assert len(kinds(requests)) >= 2
    covered = {i for r in requests for i in r.order_ids} | {
        o.order_id
        for o in venue.orders
        if any(o.symbol in r.symbols for r in requests if r.kind is RequestKind.CANCEL_ALL)
    }
    assert covered == {o.order_id for o in venue.orders}


def test_bingx_a_symbol_whose_orders_are_not_known_is_cancelled_whole() -> None:
    scope = Scope.of(symbols=["ETH-USDT", "BTC-USDT"])
    tracked = snap(order("BTC-USDT", "1"))
    requests = plan(scope, tracked, None, ["ETH-USDT"], BX)
    assert CancelRequest(RequestKind.CANCEL_ALL, ("ETH-USDT",)) in requests
    # A complete snapshot that shows nothing on a configured symbol costs it nothing.
    assert plan(scope, None, snap(order("BTC-USDT", "1")), ["ETH-USDT"], BX) == [
        CancelRequest(RequestKind.CANCEL_ALL, ("BTC-USDT",))
    ]


def test_bingx_prefix_scope_cancels_matching_lists_by_their_leg_ids() -> None:
    legs, lists = ocos(2)
    tagged = tuple(replace(x, list_client_order_id="strat7-L") for x in lists)
    venue = snap(
        order("ETH-USDT", "9", "strat7-a"), order("ETH-USDT", "8", "other"), *legs, lists=tagged
    )
    requests = plan(Scope.of(client_order_id_prefix="strat7-"), None, venue, (), BX)
    ids = {i for r in requests for i in r.order_ids}
    assert ids == {"9"} | {o.order_id for o in legs}
    assert "8" not in ids
    assert RequestKind.CANCEL_LIST not in kinds(requests)


def test_a_list_whose_client_id_was_not_read_leaves_a_prefix_scope_unproved() -> None:
    unread = OrderList("ETH-USDT", "L1", UNREAD_CLIENT_ID, ("7", "8"), ("", ""))
    venue = Snapshot(lists=(unread,))
    prefix = in_scope(Scope.of(client_order_id_prefix="strat7-"), venue)
    assert prefix.lists == ()
    assert not prefix.complete
    assert not prefix.proves_flat
    assert in_scope(
        Scope.of(client_order_id_prefix="strat7-", symbols=["BTC-USDT"]), venue
    ).complete
    assert in_scope(EVERYTHING, venue).lists == (unread,)
    # A leg with the prefix puts the list in scope whatever its own id.
    tagged = replace(unread, client_order_ids=("strat7-a", ""))
    assert in_scope(Scope.of(client_order_id_prefix="strat7-"), Snapshot(lists=(tagged,))).complete


def one_list_a_symbol(n: int) -> tuple[list[Order], tuple[OrderList, ...]]:
    legs: list[Order] = []
    lists: list[OrderList] = []
    for i in range(n):
        symbol, a, b, list_id = f"S{i}-USDT", f"{i}a", f"{i}b", f"L{i}"
        legs += [order(symbol, a, list_id=list_id), order(symbol, b, list_id=list_id)]
        lists.append(OrderList(symbol, list_id, "", (a, b), ("", "")))
    return legs, tuple(lists)


async def test_bingx_accounts_behind_one_ip_plan_lists_for_their_share_of_its_budgets() -> None:
    # Workload L's BingX shape: two accounts behind our IP, a list on each of 100 symbols. The
    # three list paths' per-IP budgets (batch 3/s, single cancel 3/s, oco/cancel 2/s) carry
    # 8 lists a second for both accounts together: 25 s for 200 lists. Planned as if each
    # account had the IP alone, single cancels (5/s by UID) took most lists, the IP's 3/s held
    # them for 37 s, and the batch and oco/cancel budgets idled for the last 12.
    connectors = [
        BingxExchange(
            account=f"mm-{i}",
            api_key="k",
            api_secret="s",
            rest_url="http://127.0.0.1:1",
            ws_url="ws://127.0.0.1:1",
        )
        for i in (1, 2)
    ]
    try:
        legs, lists = one_list_a_symbol(100)
        sent: Counter[RequestKind] = Counter()
        for connector in connectors:
            caps = replace(connector.capabilities, lists_coverage=False, list_legs_by_batch=True)
            sent += kinds(plan(EVERYTHING, None, snap(*legs, lists=lists), (), caps))
    finally:
        for connector in connectors:
            await connector.close()
    per_ip = {
        RequestKind.CANCEL_ORDERS: BX_IP_RPS[BX_CANCEL_ORDERS],
        RequestKind.CANCEL_ORDER: BX_IP_RPS[BX_CANCEL],
        RequestKind.CANCEL_LIST: BX_IP_RPS[BX_OCO_CANCEL],
    }
    assert sum(sent.values()) == 200
    seconds = max(sent[kind] / rps for kind, rps in per_ip.items())
    assert seconds <= 200 / sum(per_ip.values()) + 1


async def test_a_bingx_account_alone_behind_its_ip_plans_with_the_whole_ip_budget() -> None:
    connector = BingxExchange(
        account="solo",
        api_key="k",
        api_secret="s",
        rest_url="http://127.0.0.2:1",
        ws_url="ws://127.0.0.2:1",
    )
    try:
        assert connector.capabilities.rates == BX.rates
    finally:
        await connector.close()


def test_a_client_id_one_source_did_not_read_is_taken_from_the_other() -> None:
    # The tracker saw the order on a stream without its client id; the venue's read shows it.
    tracked = snap(order("BTC-USDT", "1", UNREAD_CLIENT_ID))
    venue = snap(order("BTC-USDT", "1", "strat7-a"))
    scope = Scope.of(client_order_id_prefix="strat7-")
    requests = plan(scope, tracked, venue, (), BX)
    assert [i for r in requests for i in r.order_ids] == ["1"]
