"""The simulator base against a running dialect: admin API, middleware faults, limits, lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.server import dialect_class
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings
from tests.conftest import eventually
from tests.fixtures.sim import (
    TINY_KEY_2,
    TINY_SECRET_2,
    TINY_WEIGHT_LIMIT,
    TinySim,
    admin,
    running,
    tiny_call,
    tiny_settings,
)


@pytest.fixture
async def sim() -> AsyncIterator[TinySim]:
    async with running(TinySim(tiny_settings(rate_limit_scale=100.0))) as venue:
        yield venue


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def open_ids(http: aiohttp.ClientSession, sim: SimVenue, account: str = "a") -> list[str]:
    status, book = await admin(http, sim, "GET", "book", account=account)
    assert status == 200
    return [o["orderId"] for o in book["orders"]]


async def test_seed_puts_orders_and_lists_in_the_named_account_only(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    status, body = await admin(
        http,
        sim,
        "POST",
        "seed",
        {
            "account": "a",
            "orders": [
                {"symbol": "BTCUSDT", "side": "SELL", "price": "101.5", "quantity": "0.25"},
                {"symbol": "ETHUSDT", "client_order_id": "strat7-1"},
            ],
            "lists": [
                {
                    "contingency_type": "OCO",
                    "list_client_order_id": "L-1",
                    "legs": [{"symbol": "BTCUSDT"}, {"symbol": "BTCUSDT"}],
                }
            ],
        },
    )
    assert (status, body) == (200, {"account": "a", "orders": 2, "lists": 1})
    status, book = await admin(http, sim, "GET", "book", account="a")
    assert status == 200
    assert len(book["orders"]) == 4
    first = book["orders"][0]
    assert first["symbol"] == "BTCUSDT"
    assert first["side"] == "SELL"
    assert first["price"] == "101.5"
    assert first["origQty"] == "0.25"
    assert first["status"] == "NEW"
    assert book["orders"][1]["clientOrderId"] == "strat7-1"
    [lst] = book["lists"]
    assert lst["listClientOrderId"] == "L-1"
    assert sorted(lst["orderIds"]) == sorted(o["orderId"] for o in book["orders"][2:])
    assert await open_ids(http, sim, "b") == []


async def test_seed_generates_a_workload_across_symbols_with_a_client_id_prefix(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    status, body = await admin(
        http,
        sim,
        "POST",
        "seed",
        {
            "account": "b",
            "generate": {
                "symbols": ["BTCUSDT", "ETHUSDT"],
                "per_symbol": 10,
                "list_fraction": 0.4,
                "client_id_prefix": "bot9-",
            },
        },
    )
    assert status == 200
    assert body["lists"] == 4  # 4 list legs per symbol -> 2 lists per symbol
    _, book = await admin(http, sim, "GET", "book", account="b")
    assert len(book["orders"]) == 20
    assert {o["symbol"] for o in book["orders"]} == {"BTCUSDT", "ETHUSDT"}
    assert all(o["clientOrderId"].startswith("bot9-") for o in book["orders"])


@pytest.mark.parametrize(
    "body",
    [
        {"account": "a", "orders": [{"side": "BUY"}]},
        {"account": "a", "orders": [{"symbol": "BTCUSDT", "price": "cheap"}]},
        {"account": "a", "orders": ["BTCUSDT"]},
        {"account": "a", "lists": [{"contingency_type": "OCO"}]},
        {"account": "a", "generate": {"per_symbol": 3}},
        ["not", "an", "object"],
    ],
)
async def test_a_malformed_seed_is_refused_with_400_and_changes_nothing(
    sim: TinySim, http: aiohttp.ClientSession, body: object
) -> None:
    status, _ = await admin(http, sim, "POST", "seed", body)
    assert status == 400
    assert await open_ids(http, sim) == []


async def test_an_unknown_account_is_404_naming_the_known_ones(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    status, text = await admin(http, sim, "GET", "book", account="nobody")
    assert status == 404
    assert "'a'" in text
    assert "'b'" in text


async def test_fill_fills_wholly_or_in_part_and_404s_an_unknown_order(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "seed", {"account": "a", "orders": [{"symbol": "X"}] * 2})
    first, second = await open_ids(http, sim)
    status, body = await admin(http, sim, "POST", "fill", {"account": "a", "order_id": first})
    assert (status, body) == (200, {"orderId": first, "status": "FILLED"})
    status, body = await admin(
        http, sim, "POST", "fill", {"account": "a", "order_id": second, "quantity": "0.5"}
    )
    assert (status, body["status"]) == (200, "PARTIALLY_FILLED")
    assert await open_ids(http, sim) == [second]
    status, _ = await admin(http, sim, "POST", "fill", {"account": "a", "order_id": first})
    assert status == 404


async def test_an_error_before_fault_answers_5xx_and_leaves_the_order_open(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "seed", {"account": "a", "orders": [{"symbol": "X"}]})
    [order_id] = await open_ids(http, sim)
    status, fault = await admin(
        http,
        sim,
        "POST",
        "faults",
        {"kind": "error_before", "endpoint": "/api/order", "http_status": 503, "count": 1},
    )
    assert status == 200
    assert fault["id"] >= 1
    status, _, body = await tiny_call(http, sim, "DELETE", "/api/order", {"orderId": order_id})
    assert status == 503
    assert body["code"] == -1007
    assert await open_ids(http, sim) == [order_id]
    status, _, _ = await tiny_call(http, sim, "DELETE", "/api/order", {"orderId": order_id})
    assert status == 200  # the fault was used up
    _, counters = await admin(http, sim, "GET", "counters")
    assert counters["faults error_before"] == 1


async def test_an_error_after_fault_applies_the_cancel_then_answers_5xx(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "seed", {"account": "a", "orders": [{"symbol": "X"}]})
    [order_id] = await open_ids(http, sim)
    await admin(http, sim, "POST", "faults", {"kind": "error_after", "http_status": 504})
    status, _, _ = await tiny_call(http, sim, "DELETE", "/api/order", {"orderId": order_id})
    assert status == 504
    assert await open_ids(http, sim) == []


async def test_faults_can_target_one_account(sim: TinySim, http: aiohttp.ClientSession) -> None:
    await admin(http, sim, "POST", "faults", {"kind": "error_before", "account": "b"})
    status, _, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
    assert status == 200
    status, _, _ = await tiny_call(
        http, sim, "GET", "/api/openOrders", key=TINY_KEY_2, secret=TINY_SECRET_2
    )
    assert status == 503


async def test_faults_are_listed_removed_by_id_and_cleared(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    _, first = await admin(http, sim, "POST", "faults", {"kind": "ws_silent", "account": "a"})
    _, second = await admin(http, sim, "POST", "faults", {"kind": "clock_skew", "skew_ms": 5})
    status, listed = await admin(http, sim, "GET", "faults")
    assert status == 200
    assert [f["kind"] for f in listed] == ["ws_silent", "clock_skew"]
    status, _ = await admin(http, sim, "DELETE", f"faults/{first['id']}")
    assert status == 200
    status, _ = await admin(http, sim, "DELETE", f"faults/{first['id']}")
    assert status == 404
    status, _ = await admin(http, sim, "DELETE", "faults/abc")
    assert status == 400
    _, listed = await admin(http, sim, "GET", "faults")
    assert [f["id"] for f in listed] == [second["id"]]
    status, _ = await admin(http, sim, "DELETE", "faults")
    assert status == 200
    _, listed = await admin(http, sim, "GET", "faults")
    assert listed == []


async def test_a_bad_fault_is_refused_naming_the_field(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    status, body = await admin(http, sim, "POST", "faults", {"kind": "latency", "latncy_ms": 5})
    assert status == 400
    assert "latncy_ms" in body["error"]
    status, _ = await admin(http, sim, "POST", "faults", None)
    assert status == 400
    _, listed = await admin(http, sim, "GET", "faults")
    assert listed == []


async def test_a_stall_holds_the_request_past_the_client_timeout(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "faults", {"kind": "stall", "stall_s": 60, "count": 1})
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(
            f"{sim.base_url}/api/time", timeout=aiohttp.ClientTimeout(total=0.2)
        ) as resp:
            await resp.read()
    _, counters = await admin(http, sim, "GET", "counters")
    assert counters["faults stall"] == 1


async def test_latency_delays_answers_past_a_short_client_timeout(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "faults", {"kind": "latency", "latency_ms": 60_000})
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(
            f"{sim.base_url}/api/time", timeout=aiohttp.ClientTimeout(total=0.2)
        ) as resp:
            await resp.read()
    status, _ = await admin(http, sim, "GET", "counters")  # admin is never delayed
    assert status == 200


async def test_clock_skew_moves_the_venue_clock_for_the_account() -> None:
    async with running(TinySim(tiny_settings())) as sim, aiohttp.ClientSession() as http:
        await admin(
            http,
            sim,
            "POST",
            "faults",
            {"kind": "clock_skew", "account": "a", "skew_ms": 3_600_000},
        )
        _, _, skewed = await tiny_call(http, sim, "GET", "/api/time")
        _, _, plain = await tiny_call(
            http, sim, "GET", "/api/time", key=TINY_KEY_2, secret=TINY_SECRET_2
        )
        assert skewed["serverTime"] - plain["serverTime"] > 3_500_000


async def test_a_429_storm_escalates_to_a_418_ban_and_reset_limits_lifts_it(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(
        http, sim, "POST", "faults", {"kind": "rate_limit", "retry_after_s": 30, "count": 1}
    )
    statuses = []
    for _ in range(4):
        status, headers, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
        statuses.append((status, headers.get("Retry-After")))
    assert statuses[0] == (429, "30")
    assert [s for s, _ in statuses[1:]] == [429, 429, 418]
    assert statuses[3][1] == "120"  # the first ban: first_ban_s
    status, _, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
    assert status == 418
    _, counters = await admin(http, sim, "GET", "counters")
    assert counters["http 429"] == 3
    assert counters["http 418"] == 2
    assert counters["faults rate_limit"] == 1
    status, _ = await admin(http, sim, "POST", "reset-limits")
    assert status == 200
    status, _, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
    assert status == 200


async def test_spending_the_weight_budget_gives_429_with_the_weight_headers() -> None:
    async with running(TinySim(tiny_settings())) as sim, aiohttp.ClientSession() as http:
        used = []
        status = 200
        while status == 200:
            status, headers, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
            used.append(headers.get("X-TINY-USED-WEIGHT-1M"))
        assert status == 429
        assert used[:-1] == [str(5 * i) for i in range(1, TINY_WEIGHT_LIMIT // 5 + 1)]
        assert int(headers["Retry-After"]) >= 1
        status, _, _ = await tiny_call(http, sim, "GET", "/api/time")  # weightless, but blocked
        assert status == 429
        await admin(http, sim, "POST", "reset-limits")
        status, _, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
        assert status == 200


async def test_bans_are_per_api_key(sim: TinySim, http: aiohttp.ClientSession) -> None:
    await admin(
        http, sim, "POST", "faults", {"kind": "rate_limit", "account": "a", "retry_after_s": 60}
    )
    for _ in range(4):
        await tiny_call(http, sim, "GET", "/api/openOrders")
    status, _, _ = await tiny_call(http, sim, "GET", "/api/openOrders")
    assert status == 418
    status, _, _ = await tiny_call(
        http, sim, "GET", "/api/openOrders", key=TINY_KEY_2, secret=TINY_SECRET_2
    )
    assert status == 200


async def test_admin_routes_are_never_faulted_or_limited(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    for kind in ("error_before", "error_after", "rate_limit"):
        await admin(http, sim, "POST", "faults", {"kind": kind})
    for _ in range(5):
        status, _ = await admin(http, sim, "GET", "book", account="a")
        assert status == 200


async def test_counters_and_log_record_each_request_by_endpoint_and_account(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await tiny_call(http, sim, "GET", "/api/openOrders")
    await tiny_call(http, sim, "GET", "/api/openOrders", key=TINY_KEY_2, secret=TINY_SECRET_2)
    await tiny_call(http, sim, "POST", "/api/order", {"symbol": "X"}, secret="wrong")
    _, counters = await admin(http, sim, "GET", "counters")
    assert counters["requests GET /api/openOrders"] == 2
    assert counters["requests POST /api/order"] == 1
    assert counters["signature_failures"] == 1
    status, entries = await admin(http, sim, "GET", "log", limit="2")
    assert status == 200
    assert [(e["method"], e["path"], e["account"]) for e in entries] == [
        ("GET", "/api/openOrders", "b"),
        ("POST", "/api/order", "a"),
    ]
    assert "signature=" in entries[1]["query"]
    status, _ = await admin(http, sim, "GET", "log", limit="lots")
    assert status == 400


async def test_websocket_upgrades_skip_the_request_faults(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    await admin(http, sim, "POST", "faults", {"kind": "error_before"})
    await admin(http, sim, "POST", "faults", {"kind": "stall", "stall_s": 60})
    async with http.ws_connect(f"{sim.ws_url}/ws?key=tiny-key-1") as ws:
        await admin(http, sim, "POST", "seed", {"account": "a", "orders": [{"symbol": "X"}]})
        message = await ws.receive_json(timeout=10)
        assert message["kind"] == "NEW"


async def test_a_ws_drop_fault_reaches_the_dialect_and_closes_its_streams(
    sim: TinySim, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{sim.ws_url}/ws?key=tiny-key-1") as ws:
        await eventually(lambda: sim.sockets)
        await admin(http, sim, "POST", "faults", {"kind": "ws_drop", "account": "a"})
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_the_fill_generator_fills_open_orders_over_time() -> None:
    settings = tiny_settings(fill_fraction=0.5, fill_interval_s=0.01, seed=7)
    async with running(TinySim(settings)) as sim, aiohttp.ClientSession() as http:
        await admin(http, sim, "POST", "seed", {"account": "a", "orders": [{"symbol": "X"}] * 40})
        book = sim.book(sim.accounts["a"])
        await eventually(lambda: len(book.open_orders()) < 40)
        closed = list(book.closed.values())
        assert closed
        assert {o.status for o in closed} == {"FILLED"}


async def test_faults_from_settings_apply_from_the_first_request() -> None:
    settings = tiny_settings(faults=[Fault(FaultKind.ERROR_BEFORE, endpoint="/api/time")])
    async with running(TinySim(settings)) as sim, aiohttp.ClientSession() as http:
        status, _, _ = await tiny_call(http, sim, "GET", "/api/time")
        assert status == 503


async def test_stop_returns_promptly_with_a_stalled_request_in_flight_and_twice() -> None:
    sim = TinySim(tiny_settings(faults=[Fault(FaultKind.STALL, stall_s=3600)]))
    await sim.start()
    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.get(f"{sim.base_url}/api/time"))
        await eventually(lambda: sim.counters["faults stall"] == 1)
        await asyncio.wait_for(sim.stop(), timeout=30)
        await sim.stop()
        with pytest.raises(aiohttp.ClientError):
            await request


# -- the same admin API on each real venue dialect --------------------------------------------

DIALECT_TIME = {
    "binance": "/api/v3/time",
    "mexc": "/api/v3/time",
    "bingx": "/openApi/spot/v1/server/time",
}


@pytest.fixture(params=sorted(DIALECT_TIME))
async def dialect(request: pytest.FixtureRequest) -> AsyncIterator[SimVenue]:
    cls = dialect_class(request.param, None)
    accounts = [
        SimAccount(name="a", api_key="dialect-key-a", secret="dialect-secret-a"),
        SimAccount(name="b", api_key="dialect-key-b", secret="dialect-secret-b"),
    ]
    async with running(cls(VenueSettings(accounts=accounts))) as venue:
        yield venue


async def test_each_dialect_seeds_lists_and_fills_through_the_admin_api(
    dialect: SimVenue, http: aiohttp.ClientSession
) -> None:
    symbol = "BTC-USDT" if dialect.name == "bingx" else "BTCUSDT"
    status, body = await admin(
        http,
        dialect,
        "POST",
        "seed",
        {
            "account": "b",
            "orders": [{"symbol": symbol, "price": "100", "quantity": "2"}],
            "generate": {"symbols": [symbol], "per_symbol": 6, "list_fraction": 0.34},
        },
    )
    assert status == 200
    with_lists = dialect.supports_lists()
    assert body == {"account": "b", "orders": 5 if with_lists else 7, "lists": int(with_lists)}
    _, book = await admin(http, dialect, "GET", "book", account="b")
    assert len(book["orders"]) == 7
    assert len(book["lists"]) == int(with_lists)
    assert await open_ids(http, dialect, "a") == []
    first = book["orders"][0]["orderId"]
    status, filled = await admin(
        http, dialect, "POST", "fill", {"account": "b", "order_id": first, "quantity": "0.5"}
    )
    assert (status, filled["status"]) == (200, "PARTIALLY_FILLED")
    status, filled = await admin(http, dialect, "POST", "fill", {"account": "b", "order_id": first})
    assert (status, filled["status"]) == (200, "FILLED")
    assert first not in await open_ids(http, dialect, "b")


async def test_each_dialect_escalates_a_429_storm_to_418_and_reset_limits_lifts_it(
    dialect: SimVenue, http: aiohttp.ClientSession
) -> None:
    url = f"{dialect.base_url}{DIALECT_TIME[dialect.name]}"
    status, fault = await admin(
        http, dialect, "POST", "faults", {"kind": "rate_limit", "retry_after_s": 60, "count": 1}
    )
    assert status == 200
    seen = []
    bodies = []
    for _ in range(4):
        async with http.get(url) as resp:
            seen.append((resp.status, resp.headers.get("Retry-After")))
            bodies.append(await resp.read())
    if dialect.name == "bingx":
        # BingX sends no Retry-After: the unblock time is an epoch in ms in the message
        # (reference §3.5, 100410).
        assert seen[0] == (429, None)
        first = orjson.loads(bodies[0])
        assert first["code"] == 100410
        unblock_ms = int(str(first["msg"]).rsplit(" ", 1)[-1])
        assert unblock_ms - time.time() * 1000 > 50_000  # about retry_after_s from now
    else:
        assert seen[0] == (429, "60")
        assert int(seen[-1][1] or 0) >= 60
    assert seen[-1][0] == 418
    _, counters = await admin(http, dialect, "GET", "counters")
    assert counters["http 418"] == 1
    assert counters["faults rate_limit"] == 1
    assert counters[f"requests GET {DIALECT_TIME[dialect.name]}"] == 4
    status, _ = await admin(http, dialect, "POST", "reset-limits")
    assert status == 200
    async with http.get(url) as resp:
        assert resp.status == 200
    _, entries = await admin(http, dialect, "GET", "log", limit="1")
    assert entries[0]["path"] == DIALECT_TIME[dialect.name]
    status, _ = await admin(http, dialect, "DELETE", f"faults/{fault['id']}")
    assert status == 200


async def test_each_dialect_answers_a_5xx_fault_in_its_own_words(
    dialect: SimVenue, http: aiohttp.ClientSession
) -> None:
    await admin(http, dialect, "POST", "faults", {"kind": "error_before", "http_status": 503})
    async with http.get(f"{dialect.base_url}{DIALECT_TIME[dialect.name]}") as resp:
        assert resp.status == 503
        body = orjson.loads(await resp.read())
    assert "code" in body
    assert "msg" in body
    await admin(http, dialect, "DELETE", "faults")
    async with http.get(f"{dialect.base_url}{DIALECT_TIME[dialect.name]}") as resp:
        assert resp.status == 200
