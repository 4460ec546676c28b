"""MexcExchange against the MEXC simulator on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio

from killswitch.exchanges.base import (
    AlreadyGone,
    Exchange,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
    VenueError,
)
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.mexc import MexcExchange
from killswitch.model import ExecType, OrderEvent, StreamEvent, StreamSubscribed, StreamTerminated
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.mexc import MexcSim
from tests.conftest import eventually
from tests.fakes import FakeClock
from tests.fixtures.answers import answers
from tests.fixtures.mexc import ConnectorFactory, MexcRawClient, mexc_sim

SYMBOLS = ["BTCUSDT", "ETHUSDT", "MXUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "LTCUSDT"]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[tuple[MexcSim, ConnectorFactory]]:
    async with mexc_sim(accounts=2) as made:
        yield made


@pytest_asyncio.fixture
async def started(
    env: tuple[MexcSim, ConnectorFactory],
) -> tuple[MexcSim, MexcExchange]:
    sim, connect = env
    exchange = connect("acct0")
    await exchange.start()
    return sim, exchange


def open_ids(sim: MexcSim, account: str = "acct0") -> set[str]:
    return set(sim.book(sim.accounts[account]).orders)


def requests(sim: MexcSim, endpoint: str) -> int:
    return sim.counters[f"requests {endpoint}"]


class Collector:
    """Drain a user stream in the background; keep its events and how it ended."""

    def __init__(self, stream: AsyncIterator[StreamEvent]) -> None:
        self.events: list[StreamEvent] = []
        self.error: VenueError | None = None
        self.ended = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(stream))

    async def _run(self, stream: AsyncIterator[StreamEvent]) -> None:
        try:
            async for event in stream:
                self.events.append(event)
        except VenueError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def orders(self) -> list[OrderEvent]:
        return [e for e in self.events if isinstance(e, OrderEvent)]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])


@pytest_asyncio.fixture
async def collectors() -> AsyncIterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        await collector.stop()


async def subscribed(sim: MexcSim, count: int = 1) -> None:
    await eventually(lambda: sum(1 for c in sim.conns if c.channels) >= count)


# -- lifecycle ---------------------------------------------------------------------------------
async def test_connector_satisfies_the_exchange_protocol(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    _, exchange = started
    assert isinstance(exchange, Exchange)
    assert exchange.venue == "mexc"
    assert exchange.capabilities.cancel_all_max_symbols == 5
    assert exchange.capabilities.cancel_all_covers_lists is True
    assert exchange.capabilities.batch_cancel_max == 0
    assert exchange.capabilities.dead_mans_switch is False


async def test_start_syncs_the_clock_and_warms_connections(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    assert requests(sim, "GET /api/v3/time") == 1
    assert requests(sim, "GET /api/v3/ping") == 3
    assert abs(await exchange.server_time_ms() - time.time() * 1000) < 5_000


async def test_start_refuses_twice_and_close_is_safe_twice(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    _, exchange = started
    with pytest.raises(RuntimeError):
        await exchange.start()
    await exchange.close()
    await exchange.close()


# -- snapshot -------------------------------------------------------------------------------------
async def test_snapshot_equals_the_sims_book_with_string_ids(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    account = sim.accounts["acct0"]
    sim.seed(
        account, [OrderSpec(s, price=Decimal("1.25"), client_order_id=f"c-{s}") for s in SYMBOLS]
    )
    legs = [OrderSpec("BTCUSDT", "SELL", "LIMIT_MAKER", Decimal(200)), OrderSpec("BTCUSDT", "SELL")]
    sim.seed(account, [], [(legs, "OCO", "oco-1")])
    sim.book(sim.accounts["acct1"]).place(OrderSpec("BTCUSDT"))  # another account's order
    snapshot = await exchange.snapshot()
    book = sim.book(account)
    assert {
        (
            o.order_id,
            o.symbol,
            o.client_order_id,
            o.side,
            o.order_type,
            o.price,
            o.orig_qty,
            o.status,
            o.list_id,
        )
        for o in snapshot.orders
    } == {
        (
            o.order_id,
            o.symbol,
            o.client_order_id,
            o.side,
            o.order_type,
            str(o.price),
            str(o.orig_qty),
            o.status,
            o.list_id,
        )
        for o in book.orders.values()
    }
    assert all(isinstance(o.order_id, str) for o in snapshot.orders)
    assert snapshot.lists == ()
    assert abs(snapshot.server_time_ms - time.time() * 1000) < 5_000


async def test_snapshot_of_many_symbols_reads_five_per_request_once_a_list_answered_each(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    sim.seed(sim.accounts["acct0"], [OrderSpec(s) for s in SYMBOLS])
    snapshot = await exchange.snapshot(SYMBOLS[:6])
    assert {o.symbol for o in snapshot.orders} == set(SYMBOLS[:6])
    # one per request, and a probe list of five beside them (review 42: only a changelog says
    # a list answers each symbol it names); it did, so lists of five are trusted from now on
    assert requests(sim, "GET /api/v3/openOrders") == 7
    await exchange.snapshot(SYMBOLS[:6])
    assert requests(sim, "GET /api/v3/openOrders") == 9


async def test_snapshot_falls_back_to_known_symbols_when_a_symbol_is_required() -> None:
    async with mexc_sim(open_orders_requires_symbol=True) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS[:6])
        await exchange.start()
        sim.seed(sim.accounts["acct0"], [OrderSpec(s) for s in SYMBOLS])
        snapshot = await exchange.snapshot()
        # LTCUSDT is in no hint, no stream event, no earlier read: the fallback cannot see it,
        # so the read proves nothing flat (it said complete before).
        assert {o.symbol for o in snapshot.orders} == set(SYMBOLS[:6])
        assert not snapshot.complete
        assert exchange.capabilities.open_orders_without_symbol is False
        # refused, then one per symbol and a probe list beside them (review 42)
        assert requests(sim, "GET /api/v3/openOrders") == 8
        await exchange.snapshot()
        # no second attempt without symbol; 5 + 1 symbols, the probe's lesson
        assert requests(sim, "GET /api/v3/openOrders") == 10
        assert (await exchange.snapshot(SYMBOLS)).complete  # every symbol asked for was read


async def test_fallback_snapshot_covers_symbols_seen_on_the_stream(
    collectors: list[Collector],
) -> None:
    async with mexc_sim(open_orders_requires_symbol=True) as (sim, connect):
        exchange = connect("acct0")
        await exchange.start()
        collector = Collector(exchange.user_stream())
        collectors.append(collector)
        await subscribed(sim)
        async with MexcRawClient(sim) as bot:
            placed = await bot.place("SOLUSDT")
        await eventually(lambda: collector.orders())
        snapshot = await exchange.snapshot()
        assert [o.order_id for o in snapshot.orders] == [placed["orderId"]]


# -- cancels ------------------------------------------------------------------------------------
async def test_cancel_twice_gives_already_gone_the_second_time(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    ack = await exchange.cancel_order("BTCUSDT", order.order_id)
    assert ack.cancelled == (("BTCUSDT", order.order_id),)
    assert open_ids(sim) == set()
    with pytest.raises(AlreadyGone) as info:
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert info.value.code == -2011


async def test_cancel_all_twice_gives_an_empty_ack_the_second_time(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    sim.seed(sim.accounts["acct0"], [OrderSpec("BTCUSDT"), OrderSpec("ETHUSDT")])
    first = await exchange.cancel_all(["BTCUSDT", "ETHUSDT"])
    assert len(first.cancelled) == 2
    second = await exchange.cancel_all(["BTCUSDT", "ETHUSDT"])
    assert second.cancelled == ()


async def test_cancel_all_splits_more_than_five_symbols_and_covers_oco_legs(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    account = sim.accounts["acct0"]
    sim.seed(account, [OrderSpec(s) for s in SYMBOLS])
    legs = [OrderSpec("LTCUSDT", "SELL", "LIMIT_MAKER", Decimal(200)), OrderSpec("LTCUSDT", "SELL")]
    sim.seed(account, [], [(legs, "OCO", "oco-1")])
    ack = await exchange.cancel_all(SYMBOLS)
    assert len(ack.cancelled) == len(SYMBOLS) + 2
    assert open_ids(sim) == set()
    assert not sim.book(account).lists
    assert requests(sim, "DELETE /api/v3/openOrders") == 2


async def test_cancel_all_without_symbols_reads_the_open_symbols_first(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    sim.seed(sim.accounts["acct0"], [OrderSpec(s) for s in SYMBOLS[:3]])
    ack = await exchange.cancel_all(None)
    assert len(ack.cancelled) == 3
    assert open_ids(sim) == set()


async def test_cancel_orders_sorts_ids_into_cancelled_and_gone(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    book = sim.book(sim.accounts["acct0"])
    live = [book.place(OrderSpec("BTCUSDT")).order_id for _ in range(3)]
    book.cancel(live[0])
    result = await exchange.cancel_orders("BTCUSDT", live)
    assert set(result.cancelled) == set(live[1:])
    assert result.gone == (live[0],)
    assert result.failed == ()


async def test_order_lists_and_dead_mans_switch_are_refused_as_fatal(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    _, exchange = started
    with pytest.raises(Fatal):
        await exchange.cancel_order_list("BTCUSDT", "1")
    with pytest.raises(Fatal):
        await exchange.arm_dead_mans_switch(30)
    with pytest.raises(Fatal):
        await exchange.disarm_dead_mans_switch()


# -- failures -----------------------------------------------------------------------------------
async def test_rate_limit_raises_with_retry_after_and_the_next_request_waits_it(
    env: tuple[MexcSim, ConnectorFactory],
) -> None:
    sim, connect = env
    fake = FakeClock(1_000_000.0)
    exchange = connect("acct0", budget_clock=fake.clock, budget_sleep=fake.sleep)
    await exchange.start()
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=3, count=1))
    with pytest.raises(RateLimited) as info:
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert not isinstance(info.value, IpBanned)
    assert info.value.retry_after_s == 3.0
    assert fake.sleeps == []
    sim.bans.clear()  # the sim's real-time block ends while our fake clock stands still
    # Another endpoint is blocked too: MEXC bans clients that keep sending after a 429.
    await exchange.cancel_all(["ETHUSDT"])
    assert fake.sleeps == [pytest.approx(3.0)]
    await exchange.cancel_order("BTCUSDT", order.order_id)
    assert fake.sleeps == [pytest.approx(3.0)]  # waited once, not twice
    assert open_ids(sim) == set()
    assert requests(sim, "DELETE /api/v3/order") == 2
    assert sim.counters["http 429"] == 1


async def test_ban_raises_ip_banned_and_blocks_every_endpoint(
    env: tuple[MexcSim, ConnectorFactory],
) -> None:
    sim, connect = env
    fake = FakeClock(1_000_000.0)
    exchange = connect("acct0", budget_clock=fake.clock, budget_sleep=fake.sleep)
    await exchange.start()
    sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/openOrders", retry_after_s=50))
    with pytest.raises(RateLimited):
        await exchange.snapshot(["BTCUSDT"])
    sim.faults.clear()
    # A client that ignored the Retry-After (not this one) would now be banned: force it.
    sim.bans["mx0key0"].banned_until = time.monotonic() + 300
    sim.bans["mx0key0"].blocked_until = 0
    fake.now += 60  # past the 429's block
    with pytest.raises(IpBanned) as info:
        await exchange.cancel_all(["BTCUSDT"])
    assert info.value.retry_after_s >= 290
    waited = sum(fake.sleeps)
    sim.bans.clear()
    with pytest.raises(AlreadyGone):
        await exchange.cancel_order("BTCUSDT", "C02__1")
    assert sum(fake.sleeps) - waited >= 290


async def test_stall_past_the_timeout_is_outcome_unknown(
    env: tuple[MexcSim, ConnectorFactory],
) -> None:
    sim, connect = env
    exchange = connect("acct0", timeout_s=0.3)
    await exchange.start()
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    sim.faults.add(Fault(FaultKind.STALL, endpoint="/api/v3/order", stall_s=1.0, count=1))
    with pytest.raises(OutcomeUnknown):
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert open_ids(sim) == {order.order_id}
    await exchange.cancel_order("BTCUSDT", order.order_id)
    assert open_ids(sim) == set()


async def test_5xx_after_the_cancel_is_outcome_unknown_and_the_order_is_gone(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint="/api/v3/order", http_status=504, count=1))
    with pytest.raises(OutcomeUnknown) as info:
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert info.value.http_status == 504
    assert open_ids(sim) == set()
    with pytest.raises(AlreadyGone):
        await exchange.cancel_order("BTCUSDT", order.order_id)


async def test_clock_skew_is_resynced_and_the_cancel_succeeds(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    sim.faults.add(Fault(FaultKind.CLOCK_SKEW, account="acct0", skew_ms=20_000))
    ack = await exchange.cancel_order("BTCUSDT", order.order_id)
    assert ack.cancelled == (("BTCUSDT", order.order_id),)
    assert sim.counters["timestamp_failures"] == 1
    assert requests(sim, "GET /api/v3/time") == 2  # start, then the resync


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"code": 123456, "msg": "a code MEXC never documented"}),
        (400, {"code": -2011, "msg": "Order is being processed"}),  # -2011 in new words
        (404, b"<html>Not Found</html>"),
    ],
)
async def test_an_answer_nobody_can_classify_is_outcome_unknown_not_fatal(
    started: tuple[MexcSim, MexcExchange], status: int, body: object
) -> None:
    sim, exchange = started
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    answers(sim).arm("DELETE", "/api/v3/order", status, body)
    with pytest.raises(OutcomeUnknown) as info:  # re-read and decide; was Fatal (given up)
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert info.value.http_status == status
    assert open_ids(sim) == {order.order_id}
    ack = await exchange.cancel_order("BTCUSDT", order.order_id)  # the account is not lost
    assert ack.cancelled == (("BTCUSDT", order.order_id),)


async def test_a_403_is_the_firewall_to_wait_out_not_a_bad_key(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    answers(sim).arm(
        "DELETE", "/api/v3/order", 403, b"<html>blocked</html>", headers={"Retry-After": "0"}
    )
    with pytest.raises(RateLimited) as info:  # was Fatal
        await exchange.cancel_order("BTCUSDT", order.order_id)
    assert (info.value.http_status, info.value.retry_after_s) == (403, 0)
    await exchange.cancel_order("BTCUSDT", order.order_id)
    assert open_ids(sim) == set()


@pytest.mark.parametrize("shape", [{}, "", {"orders": []}])
async def test_a_read_of_an_unknown_shape_is_never_nothing_open(
    started: tuple[MexcSim, MexcExchange], shape: object
) -> None:
    sim, exchange = started
    answers(sim).arm("GET", "/api/v3/openOrders", 200, shape)
    with pytest.raises(OutcomeUnknown):
        await exchange.snapshot(["BTCUSDT"])
    answers(sim).arm("GET", "/api/v3/openOrders", 200, shape)
    with pytest.raises(OutcomeUnknown):
        await exchange.snapshot()


async def test_a_wrong_secret_is_fatal_and_never_shows_the_secret(
    env: tuple[MexcSim, ConnectorFactory],
) -> None:
    _sim, connect = env
    secret = "ffffffffffffffffffffffffffffffff"
    exchange = connect("acct0", api_secret=secret)
    await exchange.start()  # time and ping are not signed
    with pytest.raises(Fatal) as info:
        await exchange.cancel_all(["BTCUSDT"])
    assert info.value.code == 700002
    for text in (str(info.value), repr(info.value), repr(exchange), str(info.value.to_json())):
        assert secret not in text


async def test_an_unknown_key_is_fatal(env: tuple[MexcSim, ConnectorFactory]) -> None:
    _, connect = env
    exchange = connect("acct0", api_key="mx0nobody")
    await exchange.start()
    with pytest.raises(Fatal) as info:
        await exchange.snapshot()
    assert info.value.code == 10072


# -- user stream ----------------------------------------------------------------------------------
async def test_stream_yields_an_order_placed_by_another_client_and_its_cancel(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    sim, exchange = started
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    async with MexcRawClient(sim) as bot:
        placed = await bot.place("MXUSDT", price="0.5", quantity="20", newClientOrderId="bot-7")
    await eventually(lambda: collector.orders())
    (new,) = collector.orders()
    assert (new.symbol, new.order_id, new.client_order_id) == ("MXUSDT", placed["orderId"], "bot-7")
    assert (new.exec_type, new.status, new.is_open) == (ExecType.NEW, "NEW", True)
    assert (new.side, new.order_type, new.price, new.orig_qty) == ("BUY", "LIMIT", "0.5", "20")
    await exchange.cancel_order("MXUSDT", placed["orderId"])
    await eventually(lambda: len(collector.orders()) == 2)
    gone = collector.orders()[1]
    assert (gone.order_id, gone.exec_type, gone.is_open) == (
        placed["orderId"],
        ExecType.CANCELED,
        False,
    )


async def test_stream_reports_fills(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    sim, exchange = started
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    book = sim.book(sim.accounts["acct0"])
    order = book.place(OrderSpec("BTCUSDT", quantity=Decimal(2)))
    book.fill(order.order_id, Decimal("0.5"))
    book.fill(order.order_id)
    await eventually(lambda: len(collector.orders()) == 3)
    partial, filled = collector.orders()[1:]
    assert (partial.exec_type, partial.status, partial.is_open, partial.last_qty) == (
        ExecType.TRADE,
        "PARTIALLY_FILLED",
        True,
        "0.5",
    )
    assert (filled.status, filled.is_open, filled.last_qty) == ("FILLED", False, "1.5")


async def test_a_dropped_connection_makes_the_iterator_raise_transient(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    sim, exchange = started
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    sim.on_fault(sim.faults.add(Fault(FaultKind.WS_DROP, account="acct0", count=1)))
    await asyncio.wait_for(collector.ended.wait(), 5)
    assert isinstance(collector.error, Transient)


async def test_a_silent_stream_keeps_answering_pings_and_yields_nothing(
    env: tuple[MexcSim, ConnectorFactory], collectors: list[Collector]
) -> None:
    sim, connect = env
    exchange = connect("acct0", stream_ping_interval_s=0.05, stream_pong_timeout_s=1.0)
    await exchange.start()
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    sim.faults.add(Fault(FaultKind.WS_SILENT, account="acct0"))
    sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    pings = sim.counters["ws pings"]
    await eventually(lambda: sim.counters["ws pings"] >= pings + 3)
    assert collector.events == [StreamSubscribed()]
    assert not collector.ended.is_set()
    assert sim.counters["ws silenced_events"] == 1


async def test_no_pong_to_our_ping_raises_transient(
    env: tuple[MexcSim, ConnectorFactory], collectors: list[Collector]
) -> None:
    sim, connect = env
    exchange = connect("acct0", stream_ping_interval_s=0.05, stream_pong_timeout_s=0.1)
    await exchange.start()
    sim.answer_pings = False
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await asyncio.wait_for(collector.ended.wait(), 5)
    assert isinstance(collector.error, Transient)
    assert "PONG" in collector.error.msg


async def test_listen_key_expiry_ends_the_stream_with_stream_terminated(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    sim, exchange = started
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    sim.on_fault(sim.faults.add(Fault(FaultKind.LISTEN_KEY_EXPIRY, account="acct0")))
    await asyncio.wait_for(collector.ended.wait(), 5)
    assert collector.error is None
    assert isinstance(collector.events[-1], StreamTerminated)
    sim.faults.clear()
    # The next stream gets a fresh key and works.
    again = Collector(exchange.user_stream())
    collectors.append(again)
    await subscribed(sim)
    order = sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    await eventually(lambda: [e.order_id for e in again.orders()] == [order.order_id])
    assert requests(sim, "POST /api/v3/userDataStream") == 2


async def test_keepalive_extends_the_key_and_a_dead_key_ends_the_stream(
    env: tuple[MexcSim, ConnectorFactory], collectors: list[Collector]
) -> None:
    sim, connect = env
    exchange = connect("acct0", listen_key_keepalive_s=0.05)
    await exchange.start()
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    await eventually(lambda: requests(sim, "PUT /api/v3/userDataStream") >= 2)
    assert not collector.ended.is_set()
    sim.listen_keys.clear()  # the venue forgets the key without closing the socket
    await asyncio.wait_for(collector.ended.wait(), 5)
    assert collector.error is None
    assert collector.events == [StreamSubscribed(), StreamTerminated("listenKey expired")]


async def test_a_bad_listen_key_at_connect_ends_with_stream_terminated(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    _sim, exchange = started
    exchange._listen_key = "not-a-key"  # a key the venue has since dropped
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await asyncio.wait_for(collector.ended.wait(), 5)
    assert len(collector.events) == 1
    assert isinstance(collector.events[0], StreamTerminated)
    assert exchange._listen_key is None


async def test_close_deletes_the_listen_key(
    started: tuple[MexcSim, MexcExchange], collectors: list[Collector]
) -> None:
    sim, exchange = started
    collector = Collector(exchange.user_stream())
    collectors.append(collector)
    await subscribed(sim)
    await exchange.close()
    assert sim.listen_keys == {}
    await asyncio.wait_for(collector.ended.wait(), 5)


async def test_background_priority_is_accepted_by_reads_and_cancels(
    started: tuple[MexcSim, MexcExchange],
) -> None:
    sim, exchange = started
    sim.seed(sim.accounts["acct0"], [OrderSpec("BTCUSDT")])
    snapshot = await exchange.snapshot(priority=Priority.BACKGROUND)
    assert len(snapshot.orders) == 1
    ack = await exchange.cancel_all(["BTCUSDT"], priority=Priority.BACKGROUND)
    assert len(ack.cancelled) == 1


async def test_a_failed_warm_up_does_not_fail_the_start_nor_stop_the_clock_refresh(
    env: tuple[MexcSim, ConnectorFactory],
) -> None:
    """The start's warm-up pings only open pooled connections: one refused must not fail the
    start, or the background clock refresh would never be started."""
    sim, connect = env
    sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint="/api/v3/ping", http_status=503, count=1))
    exchange = connect("acct0", clock_refresh_s=0.05)
    await exchange.start()
    synced = exchange.clock.synced_at
    await eventually(lambda: exchange.clock.synced_at > synced)
