"""The BingX connector against the BingX simulator on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from killswitch.exchanges.base import (
    AlreadyGone,
    Exchange,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
)
from killswitch.exchanges.bingx import BingxExchange
from killswitch.model import (
    ExecType,
    ListEvent,
    OrderEvent,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)
from killswitch.sim.bingx import BingxSim
from tests.conftest import eventually
from tests.fakes import FakeClock
from tests.fixtures.bingx import ExchangeFactory, bingx_venue, bx_call, oco_params
from tests.fixtures.sim import admin

SPOT = "/openApi/spot/v1"
CANCEL = f"{SPOT}/trade/cancel"
CANCEL_OPEN = f"{SPOT}/trade/cancelOpenOrders"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@asynccontextmanager
async def started(**options: Any) -> AsyncIterator[tuple[BingxSim, BingxExchange, ExchangeFactory]]:
    """A sim plus a started connector for `bx0`; exchange overrides prefixed `ex_`."""
    ex_kw = {k[3:]: v for k, v in options.items() if k.startswith("ex_")}
    sim_kw = {k: v for k, v in options.items() if not k.startswith("ex_")}
    async with bingx_venue(**sim_kw) as (sim, make):
        exchange = make("bx0", **ex_kw)
        await exchange.start()
        yield sim, exchange, make


async def place(
    session: aiohttp.ClientSession,
    sim: BingxSim,
    symbol: str = "BTC-USDT",
    account: str = "bx0",
    **kw: str,
) -> str:
    params = {"symbol": symbol, "side": "BUY", "type": "LIMIT", "price": "100", "quantity": "1"}
    _, _, body = await bx_call(
        session, sim, "POST", f"{SPOT}/trade/order", {**params, **kw}, account=account
    )
    assert body["code"] == 0, body
    return str(body["data"]["orderId"])


async def place_oco(session: aiohttp.ClientSession, sim: BingxSim, symbol: str = "ETH-USDT") -> str:
    _, _, body = await bx_call(session, sim, "POST", f"{SPOT}/oco/order", oco_params(symbol))
    assert body["code"] == 0, body
    return str(body["data"][0]["orderListId"])


def open_ids(sim: BingxSim, account: str = "bx0") -> set[str]:
    return set(sim.book(sim.accounts[account]).orders)


class Consumer:
    """Drain `user_stream()` into a queue in the background; keep how it ended."""

    def __init__(self, exchange: BingxExchange) -> None:
        self.events: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.error: BaseException | None = None
        self.ended = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(exchange))

    async def _run(self, exchange: BingxExchange) -> None:
        try:
            async for event in exchange.user_stream():
                self.events.put_nowait(event)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def next_order_event(self) -> OrderEvent:
        while True:
            event = await asyncio.wait_for(self.events.get(), 10)
            if isinstance(event, OrderEvent):
                return event

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task])


async def connected(sim: BingxSim, account: str = "bx0", count: int = 1) -> None:
    """Wait until `count` streams of `account` are subscribed on the sim."""
    await eventually(lambda: sim.subscribed_count(account) >= count)


# -- lifecycle --------------------------------------------------------------------------------


async def test_the_connector_implements_the_exchange_protocol_and_closes_twice() -> None:
    async with bingx_venue() as (sim, make):
        exchange = make("bx0")
        assert isinstance(exchange, Exchange)
        assert exchange.venue == "bingx"
        await exchange.start()
        with pytest.raises(RuntimeError):
            await exchange.start()
        await exchange.close()
        await exchange.close()
        assert sim.counters["requests GET /openApi/spot/v1/server/time"] >= 2  # sync + warm-up


async def test_start_measures_the_server_time_offset() -> None:
    async with started() as (_, exchange, _):
        assert abs(exchange.clock.offset_ms) < 1000
        assert abs(await exchange.server_time_ms() - int(time.time() * 1000)) < 1000


async def test_capabilities_describe_no_symbol_cancel_all_batches_and_the_switch() -> None:
    async with bingx_venue() as (_, make):
        caps = make("bx0").capabilities
        assert caps.cancel_all_without_symbol
        assert not caps.cancel_all_covers_lists
        assert caps.cancel_all_max_symbols == 1
        assert caps.batch_cancel_max > 0
        assert caps.dead_mans_switch
        assert caps.dead_mans_switch_range_s == (10, 120)
        # Corrected limits (reference §3.2): cancel-all and batch cancel 2/s per UID.
        assert caps.rate_limits.max_requests_per_s == 2.0
        assert caps.rate("cancel_all_account") is not None


def test_only_hmac_keys_are_accepted() -> None:
    with pytest.raises(ValueError, match="HMAC"):
        BingxExchange(
            account="a",
            api_key="k",
            api_secret="s",
            key_type="ed25519",
            rest_url="http://127.0.0.1:1",
            ws_url="ws://127.0.0.1:1",
        )


# -- cancels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gone_style", ["codes", "docs_table"])
async def test_cancelling_twice_gives_already_gone_the_second_time(
    session: aiohttp.ClientSession, gone_style: str
) -> None:
    async with started(gone_style=gone_style) as (sim, exchange, _):
        order_id = await place(session, sim)
        ack = await exchange.cancel_order("BTC-USDT", order_id)
        assert ack.cancelled == (("BTC-USDT", order_id),)
        with pytest.raises(AlreadyGone) as caught:
            await exchange.cancel_order("BTC-USDT", order_id)
        assert caught.value.account == "bx0"
        with pytest.raises(AlreadyGone):
            await exchange.cancel_order("BTC-USDT", "1976495057808000001")


async def test_cancel_of_a_filled_order_is_already_gone(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, _):
        order_id = await place(session, sim)
        await admin(session, sim, "POST", "fill", {"account": "bx0", "order_id": order_id})
        with pytest.raises(AlreadyGone):
            await exchange.cancel_order("BTC-USDT", order_id)


async def test_cancel_all_without_symbol_clears_every_symbol_and_twice_is_an_empty_ack(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        ids = {(s, await place(session, sim, s)) for s in ("BTC-USDT", "SOL-USDT", "XRP-USDT")}
        first = await exchange.cancel_all(None)
        second = await exchange.cancel_all(None)
        assert set(first.cancelled) == ids
        assert second.cancelled == ()
        assert not open_ids(sim)
        requests = sim.counters["requests POST /openApi/spot/v1/trade/cancelOpenOrders"]
        assert requests == 2  # one call each, no symbol


async def test_cancel_all_per_symbol_leaves_other_symbols_and_empty_symbols_are_fine(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        btc = await place(session, sim, "BTC-USDT")
        sol = await place(session, sim, "SOL-USDT")
        ack = await exchange.cancel_all(["BTC-USDT", "DOGE-USDT"])
        assert ack.cancelled == (("BTC-USDT", btc),)
        assert open_ids(sim) == {sol}


async def test_batch_cancel_reports_cancelled_and_already_gone_ids_across_chunks(
    session: aiohttp.ClientSession,
) -> None:
    async with started(rate_limit_scale=10) as (sim, exchange, _):  # 25 orders placed quickly
        ids = [await place(session, sim) for _ in range(25)]
        await exchange.cancel_order("BTC-USDT", ids[0])
        result = await exchange.cancel_orders("BTC-USDT", [*ids, "1976495057808000001"])
        assert set(result.cancelled) == set(ids[1:])
        assert set(result.gone) == {ids[0], "1976495057808000001"}
        assert result.failed == ()
        assert not open_ids(sim)
        chunks = sim.counters["requests POST /openApi/spot/v1/trade/cancelOrders"]
        assert chunks == 3  # 26 ids, 10 per call


async def test_an_oco_list_is_cancelled_whole_and_then_is_already_gone(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        list_id = await place_oco(session, sim)
        other = await place(session, sim, "ETH-USDT")
        ack = await exchange.cancel_order_list("ETH-USDT", list_id)
        assert ack.lists_cancelled == (("ETH-USDT", list_id),)
        assert len(ack.cancelled) == 2
        assert open_ids(sim) == {other}
        with pytest.raises(AlreadyGone):
            await exchange.cancel_order_list("ETH-USDT", list_id)


async def test_cancel_all_leaves_oco_legs_as_capabilities_say(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        await place_oco(session, sim)
        await exchange.cancel_all(None)
        snap = await exchange.snapshot()
        assert not exchange.capabilities.cancel_all_covers_lists
        assert len(snap.lists) == 1
        await exchange.cancel_order_list(snap.lists[0].symbol, snap.lists[0].list_id)
        assert (await exchange.snapshot()).empty


# -- snapshots --------------------------------------------------------------------------------


async def test_snapshot_equals_the_sim_book_exactly(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, _):
        await admin(
            session,
            sim,
            "POST",
            "seed",
            {
                "account": "bx0",
                "generate": {
                    "symbols": ["BTC-USDT", "ETH-USDT", "SUI-USDT"],
                    "per_symbol": 40,
                    "list_fraction": 0.5,
                    "client_id_prefix": "strat7-",
                },
            },
        )
        snap = await exchange.snapshot()
        book = sim.book(sim.accounts["bx0"])
        assert {o.order_id for o in snap.orders} == set(book.orders)
        for order in snap.orders:
            mine = book.orders[order.order_id]
            assert (order.symbol, order.client_order_id, order.side) == (
                mine.symbol,
                mine.client_order_id,
                mine.side,
            )
            assert (order.price, order.orig_qty) == (
                format(mine.price, "f"),
                format(mine.orig_qty, "f"),
            )
            assert order.list_id == mine.list_id
        assert {(lst.list_id, lst.order_ids) for lst in snap.lists} == {
            (lst.list_id, tuple(lst.order_ids)) for lst in book.lists.values()
        }
        assert len(snap.lists) == 30  # 10 two-leg lists per symbol
        assert all(int(o.order_id) > 2**53 for o in snap.orders)


async def test_snapshot_of_some_symbols_reads_only_those(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, _):
        btc = await place(session, sim, "BTC-USDT")
        await place(session, sim, "SOL-USDT")
        list_id = await place_oco(session, sim, "ETH-USDT")
        snap = await exchange.snapshot(["BTC-USDT", "ETH-USDT"])
        assert {o.symbol for o in snap.orders} == {"BTC-USDT", "ETH-USDT"}
        assert btc in {o.order_id for o in snap.orders}
        assert [lst.list_id for lst in snap.lists] == [list_id]


async def test_snapshot_reads_past_the_2000_order_cap_symbol_by_symbol(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        await admin(
            session,
            sim,
            "POST",
            "seed",
            {
                "account": "bx0",
                "generate": {"symbols": ["BTC-USDT", "ETH-USDT"], "per_symbol": 1050},
            },
        )
        snap = await exchange.snapshot()
        assert len(snap.orders) == 2100
        assert {o.order_id for o in snap.orders} == open_ids(sim)


async def test_oco_lists_over_several_pages_are_all_read(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, _):
        await admin(
            session,
            sim,
            "POST",
            "seed",
            {
                "account": "bx0",
                "generate": {"symbols": ["BTC-USDT"], "per_symbol": 140, "list_fraction": 1.0},
            },
        )
        snap = await exchange.snapshot()
        assert len(snap.lists) == 70  # 140 legs over pages of 100
        assert snap.complete
        # Pages 1 and 2, then page 1 again: it shows page 1's legs still open when page 2 was
        # read, so no list can have moved past the page boundary unseen.
        assert sim.counters["requests GET /openApi/spot/v1/oco/openOrderList"] == 3


# -- failures ---------------------------------------------------------------------------------


async def test_a_429_raises_rate_limited_and_the_next_request_waits_it_out(
    session: aiohttp.ClientSession,
) -> None:
    fake = FakeClock(1_000_000.0)
    async with started(ex_budget_clock=fake.clock, ex_budget_sleep=fake.sleep) as (
        sim,
        exchange,
        _,
    ):
        order_id = await place(session, sim)
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "rate_limit", "endpoint": CANCEL, "retry_after_s": 3, "count": 1},
        )
        with pytest.raises(RateLimited) as caught:
            await exchange.cancel_order("BTC-USDT", order_id)
        # No Retry-After header: the wait is read from the epoch in the 100410's text.
        assert caught.value.retry_after_s == pytest.approx(3, abs=0.5)
        assert fake.sleeps == []
        sent = sim.counters[f"requests POST {CANCEL}"]
        await admin(session, sim, "POST", "reset-limits")  # the venue's 3 s have passed too
        await exchange.cancel_order("BTC-USDT", order_id)
        assert sum(fake.sleeps) >= 2.5
        assert sim.counters[f"requests POST {CANCEL}"] == sent + 1
        assert sim.counters["http 418"] == 0


async def test_a_429_on_one_api_does_not_hold_up_the_others(
    session: aiohttp.ClientSession,
) -> None:
    fake = FakeClock(1_000_000.0)
    async with started(ex_budget_clock=fake.clock, ex_budget_sleep=fake.sleep) as (
        sim,
        exchange,
        _,
    ):
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "rate_limit", "endpoint": f"{SPOT}/trade/openOrders", "retry_after_s": 300},
        )
        with pytest.raises(RateLimited):
            await exchange.snapshot()
        await place(session, sim)
        await exchange.cancel_all(None)
        assert fake.sleeps == []
        assert not open_ids(sim)


async def test_a_418_stops_all_traffic_until_the_ban_expires(
    session: aiohttp.ClientSession,
) -> None:
    fake = FakeClock(1_000_000.0)
    async with started(
        rate_limit_scale=0.2, ex_budget_clock=fake.clock, ex_budget_sleep=fake.sleep
    ) as (sim, exchange, _):
        # A careless bot on the same key hammers cancelOpenOrders into a ban.
        for _ in range(10):
            status, _, _ = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
            if status == 418:
                break
        with pytest.raises(IpBanned) as caught:
            await exchange.cancel_all(None)
        assert caught.value.retry_after_s >= 60
        assert exchange.group_budget.banned
        await admin(session, sim, "POST", "reset-limits")
        sent = sum(v for k, v in sim.counters.items() if k.startswith("requests "))
        # Nothing is sent while the ban lasts: each request is refused at once (review 30).
        with pytest.raises(IpBanned):
            await exchange.snapshot()
        assert sum(v for k, v in sim.counters.items() if k.startswith("requests ")) == sent
        fake.now += caught.value.retry_after_s
        await exchange.snapshot()


async def test_a_stall_past_the_timeout_is_outcome_unknown(session: aiohttp.ClientSession) -> None:
    async with started(ex_timeout_s=1.0) as (sim, exchange, _):
        order_id = await place(session, sim)
        await admin(
            session, sim, "POST", "faults", {"kind": "stall", "endpoint": CANCEL, "stall_s": 5}
        )
        with pytest.raises(OutcomeUnknown):
            await exchange.cancel_order("BTC-USDT", order_id)


@pytest.mark.parametrize(("kind", "applied"), [("error_after", True), ("error_before", False)])
async def test_a_5xx_is_outcome_unknown_whether_or_not_the_cancel_was_applied(
    session: aiohttp.ClientSession, kind: str, applied: bool
) -> None:
    async with started() as (sim, exchange, _):
        order_id = await place(session, sim)
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": kind, "endpoint": CANCEL, "http_status": 504, "count": 1},
        )
        with pytest.raises(OutcomeUnknown) as caught:
            await exchange.cancel_order("BTC-USDT", order_id)
        assert caught.value.http_status == 504
        snap = await exchange.snapshot()
        assert (order_id not in {o.order_id for o in snap.orders}) is applied


async def test_a_clock_skew_is_resynced_and_the_cancel_succeeds(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        order_id = await place(session, sim)
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "clock_skew", "account": "bx0", "skew_ms": 20_000},
        )
        ack = await exchange.cancel_order("BTC-USDT", order_id)
        assert ack.cancelled == (("BTC-USDT", order_id),)
        assert sim.counters["timestamp_failures"] == 1
        assert 15_000 < exchange.clock.offset_ms < 25_000


async def test_a_bad_secret_is_fatal(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, make):
        exchange = make("bx0", api_secret="wrong")
        await exchange.start()  # server time is public: start works
        with pytest.raises(Fatal) as caught:
            await exchange.cancel_all(None)
        assert caught.value.code == 100001
        assert "wrong" not in str(caught.value)
        assert sim.counters["signature_failures"] == 1


# -- dead man's switch ------------------------------------------------------------------------


async def test_the_dead_mans_switch_fires_and_cancels_everything(
    session: aiohttp.ClientSession,
) -> None:
    async with started(dead_mans_switch_time_scale=0.01) as (sim, exchange, _):
        for symbol in ("BTC-USDT", "ETH-USDT"):
            await place(session, sim, symbol)
        state = await exchange.arm_dead_mans_switch(10)
        assert state.active
        assert state.trigger_time_s is not None
        await eventually(lambda: not open_ids(sim))
        assert sim.counters["dead_mans_switch fired"] == 1


async def test_a_disarmed_switch_does_not_fire(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, _):
        await exchange.arm_dead_mans_switch(60)
        state = await exchange.disarm_dead_mans_switch()
        assert not state.active
        assert not sim.dead_mans_switch_armed("bx0")


async def test_arming_outside_10_to_120_seconds_is_refused_without_a_request() -> None:
    async with started() as (sim, exchange, _):
        for bad in (5, 121):
            with pytest.raises(Fatal):
                await exchange.arm_dead_mans_switch(bad)
        assert sim.counters[f"requests POST {SPOT}/trade/cancelAllAfter"] == 0


# -- the user stream --------------------------------------------------------------------------


async def test_the_stream_yields_an_order_placed_by_another_client_and_its_cancel(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        order_id = await place(session, sim, newClientOrderId="bot7_1")
        new = await consumer.next_order_event()
        await exchange.cancel_order("BTC-USDT", order_id)
        gone = await consumer.next_order_event()
        await consumer.stop()
        assert (new.order_id, new.client_order_id, new.symbol) == (order_id, "bot7_1", "BTC-USDT")
        assert (new.exec_type, new.status, new.is_open) == (ExecType.NEW, "NEW", True)
        assert (new.price, new.orig_qty) == ("100", "1")
        assert (gone.exec_type, gone.is_open) == (ExecType.CANCELED, False)


async def test_the_stream_answers_pings_and_stays_up() -> None:
    async with started(ping_interval_s=0.05, max_missed_pongs=4) as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        await eventually(lambda: sim.counters["stream pongs"] >= 10)
        assert not consumer.ended.is_set()
        assert sim.counters["streams dropped for missed pongs"] == 0
        assert sim.stream_count("bx0") == 1
        await consumer.stop()


async def test_a_dropped_stream_raises_transient() -> None:
    async with started() as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        async with aiohttp.ClientSession() as s:
            await admin(s, sim, "POST", "faults", {"kind": "ws_drop", "count": 1})
        await asyncio.wait_for(consumer.ended.wait(), 10)
        assert isinstance(consumer.error, Transient)


async def test_a_binary_frame_that_is_not_gzip_json_raises_transient() -> None:
    async with started() as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        [stream] = sim._streams["bx0"]
        stream.queue.put_nowait(b"\x1f\x8b\x08\x00not a deflate stream")
        await asyncio.wait_for(consumer.ended.wait(), 10)
        assert isinstance(consumer.error, Transient)
        assert "undecodable" in consumer.error.msg


async def test_a_stream_without_server_pings_raises_transient() -> None:
    async with started(ping_interval_s=60.0, ex_heartbeat_timeout_s=0.3) as (_, exchange, _):
        consumer = Consumer(exchange)
        await asyncio.wait_for(consumer.ended.wait(), 10)
        assert isinstance(consumer.error, Transient)
        assert "no server ping" in consumer.error.msg


async def test_listen_key_expiry_ends_the_stream_with_stream_terminated(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        await admin(session, sim, "POST", "faults", {"kind": "listen_key_expiry"})
        await asyncio.wait_for(consumer.ended.wait(), 10)
        assert consumer.error is None
        events = []
        while not consumer.events.empty():
            events.append(consumer.events.get_nowait())
        assert events == [StreamSubscribed(), StreamTerminated("listenKey expired")]


async def test_the_listen_key_is_kept_alive_past_its_validity(
    session: aiohttp.ClientSession,
) -> None:
    # The listenKey calls are 2/s per UID (review 30): a background refresh takes one a second.
    async with started(
        listen_key_ttl_s=2.0, ping_interval_s=0.05, ex_listen_key_refresh_s=0.25
    ) as (sim, exchange, _):
        consumer = Consumer(exchange)
        await connected(sim)
        extended = "requests PUT /openApi/user/auth/userDataStream"
        await eventually(lambda: sim.counters[extended] >= 4)  # twice the key's validity
        order_id = await place(session, sim)
        event = await consumer.next_order_event()
        assert event.order_id == order_id
        assert not consumer.ended.is_set()
        await consumer.stop()


async def test_a_cancelled_oco_leg_closes_its_list_on_the_stream(
    session: aiohttp.ClientSession,
) -> None:
    async with started() as (sim, exchange, _):
        list_id = await place_oco(session, sim)
        await exchange.snapshot()  # the connector learns the legs of the list
        consumer = Consumer(exchange)
        await connected(sim)
        await exchange.cancel_order_list("ETH-USDT", list_id)
        seen: list[StreamEvent] = []
        while not any(isinstance(e, ListEvent) for e in seen):
            event = await asyncio.wait_for(consumer.events.get(), 10)
            if not isinstance(event, StreamSubscribed):
                seen.append(event)
        await consumer.stop()
        closing = [e for e in seen if isinstance(e, ListEvent)]
        assert closing[0].list_id == list_id
        assert not closing[0].is_open
        assert isinstance(seen[0], OrderEvent)
        assert seen[0].list_id == list_id


async def test_two_accounts_stream_their_own_orders_only(session: aiohttp.ClientSession) -> None:
    async with started() as (sim, exchange, make):
        other = make("bx1")
        await other.start()
        mine, theirs = Consumer(exchange), Consumer(other)
        await connected(sim, "bx0")
        await connected(sim, "bx1")
        theirs_id = await place(session, sim, account="bx1")
        mine_id = await place(session, sim, account="bx0")
        assert (await mine.next_order_event()).order_id == mine_id
        assert (await theirs.next_order_event()).order_id == theirs_id
        await mine.stop()
        await theirs.stop()
