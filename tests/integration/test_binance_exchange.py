"""BinanceExchange against the Binance simulator: cancels, errors, limits, clock, streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from aiohttp import web

from killswitch.exchanges.base import (
    AlreadyGone,
    ClockSkew,
    Exchange,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
)
from killswitch.exchanges.binance import CAPABILITIES, RATE_LIMITS, BinanceExchange
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.model import (
    ExecType,
    ListEvent,
    OrderEvent,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.ratelimit import BanTracker
from tests.conftest import eventually
from tests.fakes import FakeClock
from tests.fixtures.answers import answers
from tests.fixtures.binance import BinanceVenue, binance_venue


@pytest.fixture(params=["hmac", "ed25519"])
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[BinanceVenue]:
    async with binance_venue(2, key_type=request.param) as running_venue:
        yield running_venue


@pytest.fixture
async def hmac_venue() -> AsyncIterator[BinanceVenue]:
    async with binance_venue(2) as running_venue:
        yield running_venue


def seed(venue: BinanceVenue, name: str = "acct0") -> None:
    """Two plain orders on BTCUSDT, one on ETHUSDT, and an OCO list on ETHUSDT."""
    legs = [
        OrderSpec("ETHUSDT", "SELL", "LIMIT_MAKER", Decimal(200), Decimal(1), "leg-a"),
        OrderSpec("ETHUSDT", "SELL", "STOP_LOSS_LIMIT", Decimal(50), Decimal(1), "leg-b"),
    ]
    venue.sim.seed(
        venue.sim.accounts[name],
        [
            OrderSpec("BTCUSDT", "BUY", price=Decimal(90), client_order_id="b1"),
            OrderSpec("BTCUSDT", "SELL", price=Decimal(110), client_order_id="b2"),
            OrderSpec("ETHUSDT", "BUY", price=Decimal(10), client_order_id="e1"),
        ],
        [(legs, "OCO", "list-1")],
    )


def book_ids(venue: BinanceVenue, name: str = "acct0") -> set[tuple[str, str]]:
    """(symbol, order id) of the sim's open orders: ids alone repeat across symbols."""
    return set(venue.sim.book(venue.sim.accounts[name]).open)


async def subscribed(venue: BinanceVenue, name: str = "acct0") -> None:
    await eventually(
        lambda: any(sub.account.name == name for c in venue.sim.conns for sub in c.subs.values())
    )


# -- lifecycle and capabilities -------------------------------------------------------------------
async def test_start_opens_a_warm_ws_api_session(venue: BinanceVenue) -> None:
    exchange = await venue.connect("acct0")
    assert isinstance(exchange, Exchange)
    assert exchange.session is not None
    assert exchange.session.up
    assert exchange.session.logged_on is (exchange.key_type == "ed25519")
    with pytest.raises(RuntimeError):
        await exchange.start()
    await exchange.close()
    await exchange.close()


def test_capabilities_state_binance_spot_facts() -> None:
    assert CAPABILITIES.cancel_all_max_symbols == 1
    assert not CAPABILITIES.cancel_all_without_symbol
    assert CAPABILITIES.cancel_all_covers_lists
    assert CAPABILITIES.batch_cancel_max == 0
    assert CAPABILITIES.open_orders_without_symbol
    assert not CAPABILITIES.dead_mans_switch
    assert (RATE_LIMITS.weight_per_window, RATE_LIMITS.window_s) == (6000, 60.0)
    assert (RATE_LIMITS.snapshot_weight, RATE_LIMITS.snapshot_symbol_weight) == (80, 6)


async def test_secrets_stay_out_of_repr_and_errors(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0")
    secret = hmac_venue.accounts["acct0"].api_secret
    with pytest.raises(AlreadyGone) as caught:
        await exchange.cancel_order("BTCUSDT", "1")
    for text in (repr(exchange), str(caught.value), str(caught.value.to_json())):
        assert secret not in text


async def test_there_is_no_dead_mans_switch(hmac_venue: BinanceVenue) -> None:
    exchange = hmac_venue.exchange("acct0")
    with pytest.raises(Fatal):
        await exchange.arm_dead_mans_switch(30)
    with pytest.raises(Fatal):
        await exchange.disarm_dead_mans_switch()


# -- cancels --------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_ws_api", [True, False])
async def test_cancelling_twice_gives_already_gone_the_second_time(
    venue: BinanceVenue, use_ws_api: bool
) -> None:
    exchange = await venue.connect("acct0", use_ws_api=use_ws_api)
    placed = await venue.place("acct0", "BTCUSDT")
    ack = await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert ack.cancelled == (("BTCUSDT", str(placed["orderId"])),)
    with pytest.raises(AlreadyGone) as caught:
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert (caught.value.code, caught.value.http_status) == (-2011, 400)
    path = "ws order.cancel" if use_ws_api else "DELETE /api/v3/order"
    assert caught.value.endpoint == path


@pytest.mark.parametrize("use_ws_api", [True, False])
async def test_cancel_all_twice_gives_an_empty_ack_the_second_time(
    venue: BinanceVenue, use_ws_api: bool
) -> None:
    seed(venue)
    exchange = await venue.connect("acct0", use_ws_api=use_ws_api)
    ack = await exchange.cancel_all(["ETHUSDT"])
    assert len(ack.cancelled) == 3
    assert len(ack.lists_cancelled) == 1
    assert not venue.sim.book(venue.sim.accounts["acct0"]).open_lists()
    again = await exchange.cancel_all(["ETHUSDT"])
    assert (again.cancelled, again.lists_cancelled) == ((), ())
    assert len(book_ids(venue)) == 2  # BTCUSDT untouched


async def test_cancel_all_without_symbols_sweeps_every_symbol_with_open_orders(
    hmac_venue: BinanceVenue,
) -> None:
    seed(hmac_venue)
    exchange = await hmac_venue.connect("acct0")
    ack = await exchange.cancel_all(None)
    assert len(ack.cancelled) == 5
    assert not book_ids(hmac_venue)


async def test_cancel_order_list_cancels_every_leg(venue: BinanceVenue) -> None:
    seed(venue)
    exchange = await venue.connect("acct0")
    (lst,) = venue.sim.book(venue.sim.accounts["acct0"]).open_lists()
    ack = await exchange.cancel_order_list("ETHUSDT", lst.list_id)
    assert ack.lists_cancelled == (("ETHUSDT", lst.list_id),)
    assert set(ack.cancelled) == {("ETHUSDT", oid) for oid in lst.order_ids}
    with pytest.raises(AlreadyGone):
        await exchange.cancel_order_list("ETHUSDT", lst.list_id)


async def test_cancel_orders_loops_single_cancels_and_sorts_the_outcomes(
    hmac_venue: BinanceVenue,
) -> None:
    seed(hmac_venue)
    exchange = await hmac_venue.connect("acct0")
    btc = sorted(
        o.order_id
        for o in hmac_venue.sim.book(hmac_venue.sim.accounts["acct0"]).open_orders(["BTCUSDT"])
    )
    result = await exchange.cancel_orders("BTCUSDT", [*btc, "999"])
    assert sorted(result.cancelled) == btc
    assert result.gone == ("999",)
    assert result.failed == ()


async def test_a_bad_key_is_fatal(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0", api_key="not-a-key")
    with pytest.raises(Fatal) as caught:
        await exchange.cancel_all(["BTCUSDT"])
    assert caught.value.code == -2015


# -- outcomes, limits and the clock ---------------------------------------------------------------
@pytest.mark.parametrize("use_ws_api", [True, False])
async def test_a_429_is_rate_limited_and_the_next_request_waits_retry_after(
    hmac_venue: BinanceVenue, use_ws_api: bool
) -> None:
    fake = FakeClock(time.time())
    budget = RateBudget(RATE_LIMITS, clock=fake.clock, sleep=fake.sleep)
    exchange = await hmac_venue.connect("acct0", use_ws_api=use_ws_api, budget=budget)
    placed = await hmac_venue.place("acct0", "BTCUSDT")
    endpoint = "order.cancel" if use_ws_api else "/api/v3/order"
    hmac_venue.sim.faults.add(
        Fault(FaultKind.RATE_LIMIT, endpoint=endpoint, retry_after_s=7, count=1)
    )
    with pytest.raises(RateLimited) as caught:
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert not isinstance(caught.value, IpBanned)
    assert caught.value.retry_after_s == pytest.approx(7.0, abs=0.01)
    assert fake.sleeps == []
    hmac_venue.sim.reset_limits()  # the venue's 7 s pass at once; ours pass in FakeClock
    await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert sum(fake.sleeps) == pytest.approx(7.0, abs=0.01)
    assert not book_ids(hmac_venue)


async def test_a_418_is_ip_banned_and_blocks_the_budget_for_the_ban(
    hmac_venue: BinanceVenue,
) -> None:
    exchange = await hmac_venue.connect("acct0")
    tracker = BanTracker()
    tracker.banned_until = time.monotonic() + 300
    hmac_venue.sim.bans[hmac_venue.accounts["acct0"].api_key] = tracker
    with pytest.raises(IpBanned) as caught:
        await exchange.cancel_all(["BTCUSDT"])
    assert 298 <= caught.value.retry_after_s <= 301
    assert exchange.budget.banned
    assert exchange.budget.delay_for(1, Priority.KILL) > 290


@pytest.mark.parametrize("use_ws_api", [True, False])
async def test_a_stall_past_the_timeout_is_outcome_unknown(
    hmac_venue: BinanceVenue, use_ws_api: bool
) -> None:
    exchange = await hmac_venue.connect("acct0", use_ws_api=use_ws_api, timeout_s=0.3)
    endpoint = "order.cancel" if use_ws_api else "/api/v3/order"
    hmac_venue.sim.faults.add(Fault(FaultKind.STALL, endpoint=endpoint, stall_s=3.0, count=1))
    with pytest.raises(OutcomeUnknown):
        await exchange.cancel_order("BTCUSDT", "1")


async def test_a_5xx_after_the_cancel_is_outcome_unknown_though_applied(
    venue: BinanceVenue,
) -> None:
    exchange = await venue.connect("acct0")
    placed = await venue.place("acct0", "BTCUSDT")
    venue.sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint="order.cancel", count=1))
    with pytest.raises(OutcomeUnknown) as caught:
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert caught.value.http_status == 503
    assert not book_ids(venue)


async def test_a_ws_api_request_in_flight_when_the_session_drops_is_outcome_unknown(
    hmac_venue: BinanceVenue,
) -> None:
    exchange = await hmac_venue.connect("acct0", timeout_s=5.0)
    hmac_venue.sim.faults.add(Fault(FaultKind.STALL, endpoint="order.cancel", stall_s=5.0))
    pending = asyncio.ensure_future(exchange.cancel_order("BTCUSDT", "1"))
    await eventually(lambda: hmac_venue.sim.counters["faults stall"] == 1)
    hmac_venue.sim.on_fault(Fault(FaultKind.WS_DROP))
    with pytest.raises(OutcomeUnknown):
        await pending


async def test_clock_skew_is_resynced_and_the_cancel_succeeds(venue: BinanceVenue) -> None:
    exchange = await venue.connect("acct0")
    placed = await venue.place("acct0", "BTCUSDT")
    venue.sim.faults.add(Fault(FaultKind.CLOCK_SKEW, skew_ms=-20_000))
    ack = await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert ack.cancelled == (("BTCUSDT", str(placed["orderId"])),)
    assert venue.sim.counters["requests GET /api/v3/time"] == 2  # start, then the resync
    assert exchange.clock.offset_ms == pytest.approx(-20_000, abs=2_000)


async def test_a_clock_skew_that_persists_after_resync_is_raised(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0", recv_window_ms=1000)
    resyncs: list[int] = []

    async def resync_that_cannot_cure() -> None:
        # A venue whose time endpoint disagrees with its timestamp check: resyncing does not
        # help, so the connector must retry once and then give up, not loop.
        resyncs.append(1)

    exchange.resync_clock = resync_that_cannot_cure  # type: ignore[method-assign]
    hmac_venue.sim.faults.add(Fault(FaultKind.CLOCK_SKEW, account="acct0", skew_ms=-20_000))
    with pytest.raises(ClockSkew):
        await exchange.cancel_all(["BTCUSDT"])
    assert resyncs == [1]


async def test_the_budget_follows_the_weight_the_venue_reports(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0", use_ws_api=False)
    sim = hmac_venue.sim
    key = f"ip:{hmac_venue.accounts['acct0'].api_key}"
    sim.spend(key, 500, 0.0)  # another process on the same IP used 500
    await exchange.snapshot(["BTCUSDT"])
    assert exchange.budget.used >= 500


async def test_the_kill_path_falls_back_to_rest_while_the_session_is_down(
    hmac_venue: BinanceVenue,
) -> None:
    exchange = await hmac_venue.connect("acct0")
    placed = await hmac_venue.place("acct0", "BTCUSDT")
    drop = hmac_venue.sim.faults.add(Fault(FaultKind.WS_DROP))  # and every reconnect
    hmac_venue.sim.on_fault(drop)
    await eventually(lambda: exchange.session is not None and not exchange.session.up)
    await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert hmac_venue.sim.counters["requests DELETE /api/v3/order"] == 1
    hmac_venue.sim.faults.remove(drop.id)
    await eventually(lambda: exchange.session is not None and exchange.session.up, timeout_s=20)


# -- answers the table does not know (issue 12 items 3, 4) ----------------------------------
@pytest.mark.parametrize("use_ws_api", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        {"list_unknown_message": "Unknown order list sent.", "empty_cancel_all": "unknown_order"},
        {"list_unknown_message": "Unknown order sent.", "empty_cancel_all": "empty_list"},
    ],
    ids=["as-reported", "other-reading"],
)
async def test_nothing_to_cancel_is_success_under_every_reading_of_the_venue(
    options: dict[str, str], use_ws_api: bool
) -> None:
    async with binance_venue(1, sim_options=options) as venue:
        seed(venue)
        exchange = await venue.connect("acct0", use_ws_api=use_ws_api)
        (lst,) = venue.sim.book(venue.sim.accounts["acct0"]).open_lists()
        assert (await exchange.cancel_all(["BTCUSDT"])).cancelled
        again = await exchange.cancel_all(["BTCUSDT"])  # nothing open there now
        assert (again.cancelled, again.lists_cancelled) == ((), ())
        await exchange.cancel_order_list("ETHUSDT", lst.list_id)
        with pytest.raises(AlreadyGone) as caught:
            await exchange.cancel_order_list("ETHUSDT", lst.list_id)
        assert caught.value.msg == options["list_unknown_message"]


async def test_a_list_already_gone_is_already_gone_and_sent_once(hmac_venue: BinanceVenue) -> None:
    seed(hmac_venue)
    exchange = await hmac_venue.connect("acct0", use_ws_api=False)
    (lst,) = hmac_venue.sim.book(hmac_venue.sim.accounts["acct0"]).open_lists()
    await exchange.cancel_order_list("ETHUSDT", lst.list_id)
    with pytest.raises(AlreadyGone) as caught:  # -2011 "Unknown order list sent." (was Transient)
        await exchange.cancel_order_list("ETHUSDT", lst.list_id)
    assert (caught.value.code, caught.value.msg) == (-2011, "Unknown order list sent.")
    assert hmac_venue.sim.counters["requests DELETE /api/v3/orderList"] == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"code": -1234, "msg": "A code errors.md does not list."}),
        (400, {"code": -2011, "msg": "Order cancel is being processed."}),  # -2011, new words
        (404, b"<html><body>Not Found</body></html>"),
    ],
)
async def test_an_answer_nobody_can_classify_is_outcome_unknown(
    hmac_venue: BinanceVenue, status: int, body: object
) -> None:
    placed = await hmac_venue.place("acct0", "BTCUSDT")
    exchange = await hmac_venue.connect("acct0", use_ws_api=False)
    answers(hmac_venue.sim).arm("DELETE", "/api/v3/order", status, body)
    # Re-read and decide from what the venue shows; never a blind Transient retry.
    with pytest.raises(OutcomeUnknown) as caught:
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert caught.value.http_status == status
    assert answers(hmac_venue.sim).served == [("DELETE", "/api/v3/order", status)]
    assert book_ids(hmac_venue) == {("BTCUSDT", str(placed["orderId"]))}  # still open


async def test_a_403_is_a_firewall_block_to_wait_out_not_a_bad_key(
    hmac_venue: BinanceVenue,
) -> None:
    placed = await hmac_venue.place("acct0", "BTCUSDT")
    fake = FakeClock(time.time())
    budget = RateBudget(RATE_LIMITS, clock=fake.clock, sleep=fake.sleep)
    exchange = await hmac_venue.connect("acct0", use_ws_api=False, budget=budget)
    answers(hmac_venue.sim).arm(
        "DELETE",
        "/api/v3/order",
        403,
        b"<html>Request blocked</html>",
        headers={"Retry-After": "9"},
    )
    with pytest.raises(RateLimited) as caught:  # was Fatal: the account given up
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert (caught.value.http_status, caught.value.retry_after_s) == (403, 9)
    ack = await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert ack.cancelled == (("BTCUSDT", str(placed["orderId"])),)
    assert sum(fake.sleeps) >= 9  # the retry waited the block out


@pytest.mark.parametrize("path", ["/api/v3/openOrders", "/api/v3/openOrderList"])
@pytest.mark.parametrize("shape", [{}, "", {"rows": []}, None])
async def test_a_read_of_an_unknown_shape_is_never_nothing_open(
    hmac_venue: BinanceVenue, path: str, shape: object
) -> None:
    exchange = await hmac_venue.connect("acct0", use_ws_api=False)
    answers(hmac_venue.sim).arm("GET", path, 200, shape)
    with pytest.raises(OutcomeUnknown):
        await exchange.snapshot()


# -- snapshots ------------------------------------------------------------------------------------
async def test_the_snapshot_equals_the_sims_book(venue: BinanceVenue) -> None:
    seed(venue)
    exchange = await venue.connect("acct0")
    snapshot = await exchange.snapshot()
    book = venue.sim.book(venue.sim.accounts["acct0"])
    assert {o.key for o in snapshot.orders} == set(book.open)
    for order in snapshot.orders:
        sim_order = book.open[order.key]
        assert isinstance(order.order_id, str)
        assert (order.symbol, order.client_order_id, order.side, order.status) == (
            sim_order.symbol,
            sim_order.client_order_id,
            sim_order.side,
            sim_order.status,
        )
        assert order.list_id == sim_order.list_id
        assert Decimal(order.price) == sim_order.price
    (lst,) = snapshot.lists
    (sim_list,) = book.open_lists()
    assert (lst.list_id, lst.list_client_order_id, lst.order_ids, lst.client_order_ids) == (
        sim_list.list_id,
        "list-1",
        tuple(sim_list.order_ids),
        ("leg-a", "leg-b"),
    )
    assert snapshot.server_time_ms > 0


async def test_a_snapshot_per_symbol_reads_only_those_symbols(hmac_venue: BinanceVenue) -> None:
    seed(hmac_venue)
    exchange = await hmac_venue.connect("acct0", use_ws_api=False)
    snapshot = await exchange.snapshot(["BTCUSDT"])
    assert {o.symbol for o in snapshot.orders} == {"BTCUSDT"}
    assert len(snapshot.orders) == 2
    assert snapshot.lists == ()
    assert hmac_venue.sim.counters["requests GET /api/v3/openOrders"] == 1


# -- the user-data stream ------------------------------------------------------------------------
async def next_event(stream: AsyncIterator[StreamEvent]) -> StreamEvent:
    return await asyncio.wait_for(anext(stream), 5)


async def test_the_stream_yields_orders_placed_and_cancelled_by_another_client(
    venue: BinanceVenue,
) -> None:
    exchange = await venue.connect("acct0")
    stream = exchange.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(venue)
    placed = await venue.place("acct0", "BTCUSDT", client_order_id="bot-7")
    event = await asyncio.wait_for(first, 5)
    assert isinstance(event, OrderEvent)
    assert (event.order_id, event.client_order_id, event.exec_type, event.is_open) == (
        str(placed["orderId"]),
        "bot-7",
        ExecType.NEW,
        True,
    )
    await venue.rest(
        "acct0",
        "DELETE",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "orderId": str(placed["orderId"]), "newClientOrderId": "x"},
    )
    gone = await next_event(stream)
    assert isinstance(gone, OrderEvent)
    assert (gone.client_order_id, gone.status, gone.is_open) == ("bot-7", "CANCELED", False)
    await stream.aclose()


async def test_the_stream_reports_lists_opening_and_closing(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0")
    stream = exchange.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(hmac_venue)
    seed(hmac_venue)
    events = [await asyncio.wait_for(first, 5)] + [await next_event(stream) for _ in range(5)]
    lists = [e for e in events if isinstance(e, ListEvent)]
    assert len(lists) == 1
    assert lists[0].is_open
    assert lists[0].list_client_order_id == "list-1"
    legs = [e for e in events if isinstance(e, OrderEvent) and e.list_id is not None]
    assert {e.list_id for e in legs} == {lists[0].list_id}
    await exchange.cancel_order_list("ETHUSDT", lists[0].list_id)
    closing = [await next_event(stream) for _ in range(3)]
    done = closing[-1]
    assert isinstance(done, ListEvent)
    assert not done.is_open
    await stream.aclose()


async def test_a_dropped_stream_raises_transient(venue: BinanceVenue) -> None:
    exchange = await venue.connect("acct0")
    stream = exchange.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(venue)
    venue.sim.on_fault(Fault(FaultKind.WS_DROP, account="acct0"))
    with pytest.raises(Transient):
        await asyncio.wait_for(first, 10)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (FaultKind.SERVER_SHUTDOWN, "serverShutdown"),
        (FaultKind.LISTEN_KEY_EXPIRY, "eventStreamTerminated"),
    ],
)
async def test_the_stream_ends_with_stream_terminated(
    venue: BinanceVenue, kind: FaultKind, reason: str
) -> None:
    exchange = await venue.connect("acct0")
    stream = exchange.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(venue)
    venue.sim.on_fault(Fault(kind, account="acct0"))
    assert await asyncio.wait_for(first, 5) == StreamTerminated(reason)
    with pytest.raises(StopAsyncIteration):
        await next_event(stream)


async def test_a_silent_stream_stays_connected_with_no_events(hmac_venue: BinanceVenue) -> None:
    exchange = await hmac_venue.connect("acct0")
    stream = exchange.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(hmac_venue)
    hmac_venue.sim.faults.add(silent := Fault(FaultKind.WS_SILENT, account="acct0"))
    await hmac_venue.place("acct0", "BTCUSDT")
    await eventually(lambda: hmac_venue.sim.counters["ws events silenced"] == 1)
    assert not first.done()
    hmac_venue.sim.faults.remove(silent.id)
    await hmac_venue.place("acct0", "ETHUSDT")
    event = await asyncio.wait_for(first, 5)
    assert isinstance(event, OrderEvent)
    assert event.symbol == "ETHUSDT"
    await stream.aclose()


async def test_two_accounts_get_only_their_own_events(hmac_venue: BinanceVenue) -> None:
    mine = await hmac_venue.connect("acct0")
    stream = mine.user_stream()
    assert await next_event(stream) == StreamSubscribed()
    first = asyncio.ensure_future(anext(stream))
    await subscribed(hmac_venue)
    await hmac_venue.place("acct1", "BTCUSDT")
    placed = await hmac_venue.place("acct0", "ETHUSDT")
    event = await asyncio.wait_for(first, 5)
    assert isinstance(event, OrderEvent)
    assert event.order_id == str(placed["orderId"])
    await stream.aclose()


async def test_an_unanswered_ws_api_request_retires_the_session_for_rest(
    hmac_venue: BinanceVenue,
) -> None:
    exchange = await hmac_venue.connect("acct0", timeout_s=0.3)
    first = exchange.session
    placed = await hmac_venue.place("acct0", "BTCUSDT")
    hmac_venue.sim.faults.add(Fault(FaultKind.STALL, endpoint="order.cancel", stall_s=3.0))
    with pytest.raises(OutcomeUnknown):
        await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    # The same cancel again goes over REST (the stall fault only matches the ws-api method).
    await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert hmac_venue.sim.counters["requests DELETE /api/v3/order"] == 1
    await eventually(lambda: exchange.session is not first and exchange.session is not None)


async def test_server_shutdown_on_the_kill_session_opens_a_fresh_one(venue: BinanceVenue) -> None:
    exchange = await venue.connect("acct0")
    first = exchange.session
    venue.sim.on_fault(Fault(FaultKind.SERVER_SHUTDOWN))
    await eventually(lambda: exchange.session is not first)
    session = exchange.session
    assert session is not None
    assert session.up
    assert session.logged_on is (exchange.key_type == "ed25519")
    placed = await venue.place("acct0", "BTCUSDT")
    await exchange.cancel_order("BTCUSDT", str(placed["orderId"]))
    assert venue.sim.counters["requests ws order.cancel"] == 1


async def test_a_success_answer_that_cannot_be_read_is_outcome_unknown() -> None:
    async def garbled(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"<html>proxy says hi</html>")

    async def server_time(request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    app = web.Application()
    app.router.add_get("/api/v3/time", server_time)
    app.router.add_delete("/api/v3/order", garbled)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    exchange = BinanceExchange(
        account="a",
        api_key="k",
        api_secret="s",
        rest_url=f"http://127.0.0.1:{port}",
        ws_url=f"ws://127.0.0.1:{port}",
        use_ws_api=False,
    )
    try:
        await exchange.start()
        with pytest.raises(OutcomeUnknown):
            await exchange.cancel_order("BTCUSDT", "1")
    finally:
        await exchange.close()
        await runner.cleanup()
