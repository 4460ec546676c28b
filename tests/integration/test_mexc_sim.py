"""The MEXC simulator over real HTTP and websockets: bodies, auth, limits, faults, pushes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.signing import mexc_hmac_signature
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.mexc import MexcSim
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.conftest import eventually
from tests.fixtures.mexc import MexcRawClient, account_settings, mexc_sim

Env = tuple[MexcSim, MexcRawClient]


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    async with mexc_sim(accounts=2) as (sim, _), MexcRawClient(sim, "acct0") as client:
        yield sim, client


def book_ids(sim: MexcSim, account: str = "acct0") -> set[str]:
    return set(sim.book(sim.accounts[account]).orders)


async def add_fault(sim: MexcSim, **data: Any) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/_sim/faults", data=orjson.dumps(data)) as resp,
    ):
        assert resp.status == 200


# -- public endpoints ---------------------------------------------------------------------------
async def test_time_and_ping_answer_documented_bodies(env: Env) -> None:
    _sim, client = env
    status, data, _ = await client.raw("GET", "/api/v3/time")
    assert status == 200
    assert set(data) == {"serverTime"}
    assert abs(data["serverTime"] - time.time() * 1000) < 60_000
    assert (await client.raw("GET", "/api/v3/ping"))[:2] == (200, {})


async def test_exchange_info_lists_symbols_and_filters_by_symbols(env: Env) -> None:
    _sim, client = env
    _, everything, _ = await client.raw("GET", "/api/v3/exchangeInfo")
    assert {"timezone", "serverTime", "rateLimits", "exchangeFilters", "symbols"} <= set(everything)
    assert "BTCUSDT" in {s["symbol"] for s in everything["symbols"]}
    _, two, _ = await client.raw("GET", "/api/v3/exchangeInfo", "symbols=BTCUSDT,MXUSDT")
    assert [s["symbol"] for s in two["symbols"]] == ["BTCUSDT", "MXUSDT"]
    assert two["symbols"][0]["quoteAsset"] == "USDT"
    status, bad, _ = await client.raw("GET", "/api/v3/exchangeInfo", "symbol=NOPEUSDT")
    assert (status, bad) == (400, {"code": 30014, "msg": "invalid symbol"})


# -- placing and reading --------------------------------------------------------------------------
async def test_place_order_answers_with_a_string_id_and_the_documented_fields(env: Env) -> None:
    sim, client = env
    data = await client.place("MXUSDT", price="0.1", quantity="50", newClientOrderId="bot-1")
    assert set(data) == {
        "symbol",
        "orderId",
        "orderListId",
        "price",
        "origQty",
        "type",
        "side",
        "transactTime",
    }
    assert isinstance(data["orderId"], str)
    assert data["orderId"].startswith("C02__")
    assert (data["symbol"], data["price"], data["origQty"]) == ("MXUSDT", "0.1", "50")
    assert data["orderListId"] == -1
    assert data["orderId"] in book_ids(sim)


async def test_place_order_without_price_is_refused_with_mandatory_parameter_error(
    env: Env,
) -> None:
    sim, client = env
    status, data, _ = await client.request(
        "POST", "/api/v3/order", [("symbol", "BTCUSDT"), ("side", "BUY"), ("type", "LIMIT")]
    )
    assert status == 400
    assert data["code"] == 700004
    assert book_ids(sim) == set()


async def test_account_holds_at_most_the_configured_open_orders() -> None:
    async with mexc_sim(max_open_orders=2) as (sim, _), MexcRawClient(sim) as client:
        await client.place("BTCUSDT")
        await client.place("BTCUSDT")
        status, data, _ = await client.request(
            "POST",
            "/api/v3/order",
            [
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("type", "LIMIT"),
                ("quantity", "1"),
                ("price", "1"),
            ],
        )
        assert (status, data) == (
            400,
            {"code": 30029, "msg": "Cannot exceed the maximum order limit"},
        )


async def test_market_order_fills_and_ioc_expires_at_once(env: Env) -> None:
    sim, client = env
    params = [("symbol", "BTCUSDT"), ("side", "BUY"), ("quantity", "1")]
    _, market, _ = await client.request("POST", "/api/v3/order", [*params, ("type", "MARKET")])
    _, ioc, _ = await client.request(
        "POST", "/api/v3/order", [*params, ("type", "IMMEDIATE_OR_CANCEL"), ("price", "2")]
    )
    assert book_ids(sim) == set()
    _, filled, _ = await client.request(
        "GET", "/api/v3/order", [("symbol", "BTCUSDT"), ("orderId", market["orderId"])]
    )
    _, expired, _ = await client.request(
        "GET", "/api/v3/order", [("symbol", "BTCUSDT"), ("orderId", ioc["orderId"])]
    )
    assert (filled["status"], expired["status"]) == ("FILLED", "CANCELED")


async def test_open_orders_with_and_without_symbol_return_documented_rows(env: Env) -> None:
    _sim, client = env
    placed = [await client.place(s) for s in ("BTCUSDT", "ETHUSDT", "MXUSDT")]
    status, rows, _ = await client.request("GET", "/api/v3/openOrders")
    assert status == 200
    assert {r["orderId"] for r in rows} == {p["orderId"] for p in placed}
    assert set(rows[0]) == {
        "symbol",
        "orderId",
        "orderListId",
        "clientOrderId",
        "price",
        "origQty",
        "executedQty",
        "cummulativeQuoteQty",
        "status",
        "timeInForce",
        "type",
        "side",
        "stopPrice",
        "icebergQty",
        "time",
        "updateTime",
        "isWorking",
        "origQuoteOrderQty",
    }
    _, two, _ = await client.request("GET", "/api/v3/openOrders", [("symbol", "BTCUSDT,MXUSDT")])
    assert {r["symbol"] for r in two} == {"BTCUSDT", "MXUSDT"}


async def test_open_orders_without_symbol_is_refused_when_configured() -> None:
    async with (
        mexc_sim(open_orders_requires_symbol=True) as (sim, _),
        MexcRawClient(sim) as client,
    ):
        status, data, _ = await client.request("GET", "/api/v3/openOrders")
        assert status == 400
        assert data["code"] == 700004
        assert "'symbol'" in data["msg"]


async def test_query_order_finds_open_and_closed_orders_and_reports_unknown(env: Env) -> None:
    _sim, client = env
    placed = await client.place("BTCUSDT", newClientOrderId="q-1")
    _, by_client, _ = await client.request(
        "GET", "/api/v3/order", [("symbol", "BTCUSDT"), ("origClientOrderId", "q-1")]
    )
    assert (by_client["orderId"], by_client["status"]) == (placed["orderId"], "NEW")
    status, data, _ = await client.request(
        "GET", "/api/v3/order", [("symbol", "BTCUSDT"), ("orderId", "C02__1")]
    )
    assert (status, data) == (400, {"code": -2013, "msg": "Order does not exist."})


# -- cancels ------------------------------------------------------------------------------------
async def test_cancel_order_answers_the_documented_body_and_then_unknown_order(env: Env) -> None:
    _sim, client = env
    placed = await client.place("BTCUSDT", price="2", newClientOrderId="myOrder1")
    params = [("symbol", "BTCUSDT"), ("orderId", placed["orderId"])]
    status, data, _ = await client.request(
        "DELETE", "/api/v3/order", [*params, ("newClientOrderId", "cancelMyOrder1")]
    )
    assert status == 200
    assert data == {
        "symbol": "BTCUSDT",
        "origClientOrderId": "myOrder1",
        "orderId": placed["orderId"],
        "clientOrderId": "cancelMyOrder1",
        "price": "2",
        "origQty": "1",
        "executedQty": "0",
        "cummulativeQuoteQty": "0",
        "status": "CANCELED",
        "timeInForce": "GTC",
        "type": "LIMIT",
        "side": "BUY",
    }
    again = await client.request("DELETE", "/api/v3/order", params)
    assert again[:2] == (400, {"code": -2011, "msg": "Unknown order sent"})


async def test_cancel_by_client_id_works_and_without_any_id_is_refused(env: Env) -> None:
    _sim, client = env
    await client.place("BTCUSDT", newClientOrderId="by-cid")
    status, data, _ = await client.request(
        "DELETE", "/api/v3/order", [("symbol", "BTCUSDT"), ("origClientOrderId", "by-cid")]
    )
    assert (status, data["origClientOrderId"]) == (200, "by-cid")
    status, data, _ = await client.request("DELETE", "/api/v3/order", [("symbol", "BTCUSDT")])
    assert (status, data["code"]) == (400, 700004)
    assert data["msg"].startswith("Param 'origClientOrderId' or 'orderId' must be sent")


async def test_cancel_with_the_wrong_symbol_is_unknown_order(env: Env) -> None:
    sim, client = env
    placed = await client.place("BTCUSDT")
    status, data, _ = await client.request(
        "DELETE", "/api/v3/order", [("symbol", "ETHUSDT"), ("orderId", placed["orderId"])]
    )
    assert (status, data["code"]) == (400, -2011)
    assert placed["orderId"] in book_ids(sim)


async def test_cancel_all_takes_five_symbols_and_includes_oco_legs(env: Env) -> None:
    sim, client = env
    account = sim.accounts["acct0"]
    symbols = ["BTCUSDT", "ETHUSDT", "MXUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"]
    sim.seed(account, [OrderSpec(s) for s in symbols])
    legs = [OrderSpec("BTCUSDT", "SELL", "LIMIT_MAKER", Decimal(200)), OrderSpec("BTCUSDT", "SELL")]
    sim.seed(account, [], [(legs, "OCO", "oco-1")])
    status, rows, _ = await client.request(
        "DELETE", "/api/v3/openOrders", [("symbol", ",".join(symbols[:5]))]
    )
    assert status == 200
    assert len(rows) == 7  # five singles and both OCO legs
    assert {r["status"] for r in rows} == {"CANCELED"}
    assert sum(1 for r in rows if r["orderListId"] != -1) == 2
    assert {o.symbol for o in sim.book(account).orders.values()} == {"ADAUSDT"}
    assert not sim.book(account).lists
    status, data, _ = await client.request(
        "DELETE", "/api/v3/openOrders", [("symbol", ",".join(symbols))]
    )
    assert status == 400
    assert data["code"] == 33333


async def test_cancel_all_on_a_symbol_with_nothing_open_returns_an_empty_list(env: Env) -> None:
    _sim, client = env
    status, data, _ = await client.request("DELETE", "/api/v3/openOrders", [("symbol", "BTCUSDT")])
    assert (status, data) == (200, [])


async def test_cancel_all_orders_endpoint_clears_every_symbol(env: Env) -> None:
    sim, client = env
    await client.place("BTCUSDT")
    await client.place("ETHUSDT")
    status, data, _ = await client.request("DELETE", "/api/v3/order/all")
    assert status == 200
    assert (data["code"], data["msg"]) == (200, "success")
    assert book_ids(sim) == set()


async def test_cancels_touch_only_the_callers_account(env: Env) -> None:
    sim, client = env
    sim.seed(sim.accounts["acct1"], [OrderSpec("BTCUSDT")])
    await client.request("DELETE", "/api/v3/openOrders", [("symbol", "BTCUSDT")])
    assert len(book_ids(sim, "acct1")) == 1


# -- authentication -----------------------------------------------------------------------------
async def test_docs_example_3_request_is_accepted_verbatim() -> None:
    doc = SimAccount("doc", api_key="mx0aBYs33eIilxBWC5", secret="45d0b3c26f2644f19bfb98b07741b2f5")
    async with mexc_sim(settings=VenueSettings(accounts=[doc])) as (sim, _):
        # Run the sim's clock at the example's timestamp so the time window passes.
        skew = 1644489390087 - int(time.time() * 1000) + 100
        sim.faults.add(Fault(FaultKind.CLOCK_SKEW, skew_ms=skew))
        async with MexcRawClient(sim, "doc") as client:
            status, data, _ = await client.raw(
                "POST",
                "/api/v3/order",
                "symbol=BTCUSDT&side=BUY&type=LIMIT",
                body=b"quantity=1&price=11&recvWindow=5000&timestamp=1644489390087"
                b"&signature=d1a676610ceb39174c8039b3f548357994b2a34139a8addd33baadba65684592",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
    assert status == 200, data
    assert (data["symbol"], data["price"], data["origQty"]) == ("BTCUSDT", "11", "1")


async def test_docs_example_1_signature_is_rejected_as_the_reference_notes() -> None:
    doc = SimAccount("doc", api_key="mx0aBYs33eIilxBWC5", secret="45d0b3c26f2644f19bfb98b07741b2f5")
    async with mexc_sim(settings=VenueSettings(accounts=[doc])) as (sim, _):
        async with MexcRawClient(sim, "doc") as client:
            status, data, _ = await client.raw(
                "POST",
                "/api/v3/order",
                "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=11&recvWindow=5000"
                "&timestamp=1644489390087"
                "&signature=323c96ab85a745712e95e63cad28903dd8292e4a905e99c4ee3932023843a117",
            )
        assert (status, data["code"]) == (400, 700002)
        assert sim.counters["signature_failures"] == 1


async def test_missing_and_unknown_api_keys_get_mexc_errors(env: Env) -> None:
    _sim, client = env
    query = client.signed_query([("symbol", "BTCUSDT")])
    status, data, _ = await client.raw("GET", "/api/v3/openOrders", query, with_key=False)
    assert (status, data) == (400, {"code": 400, "msg": "api key required"})
    status, data, _ = await client.raw(
        "GET", "/api/v3/openOrders", query, with_key=False, headers={"X-MEXC-APIKEY": "nope"}
    )
    assert (status, data) == (400, {"code": 10072, "msg": "invalid access key"})


async def test_bad_missing_and_uppercase_signatures_are_refused_and_counted(env: Env) -> None:
    sim, client = env
    good = client.signed_query([("symbol", "BTCUSDT")])
    tampered = good.replace("symbol=BTCUSDT", "symbol=ETHUSDT")
    status, data, _ = await client.raw("GET", "/api/v3/openOrders", tampered)
    assert (status, data) == (
        400,
        {"code": 700002, "msg": "Signature for this request is not valid."},
    )
    head, signature = good.rsplit("=", 1)
    status, data, _ = await client.raw("GET", "/api/v3/openOrders", f"{head}={signature.upper()}")
    assert (status, data["code"]) == (400, 700002)
    status, data, _ = await client.raw("GET", "/api/v3/openOrders", good.rsplit("&", 1)[0])
    assert (status, data["code"]) == (400, 700004)
    assert "'signature'" in data["msg"]
    assert sim.counters["signature_failures"] == 2


@pytest.mark.parametrize("offset_ms", [-6_000, 1_500])
async def test_timestamps_outside_the_window_are_refused_both_ways(
    env: Env, offset_ms: int
) -> None:
    _sim, client = env
    stamp = int(time.time() * 1000) + offset_ms
    status, data, _ = await client.request("GET", "/api/v3/openOrders", timestamp_ms=stamp)
    assert (status, data) == (
        400,
        {"code": 700003, "msg": "Timestamp for this request is outside of the recvWindow."},
    )


async def test_recv_window_widens_the_window_up_to_its_maximum(env: Env) -> None:
    _sim, client = env
    old = int(time.time() * 1000) - 6_000
    status, _, _ = await client.request(
        "GET", "/api/v3/openOrders", timestamp_ms=old, recv_window_ms=10_000
    )
    assert status == 200
    status, data, _ = await client.request("GET", "/api/v3/openOrders", recv_window_ms=60_001)
    assert (status, data) == (400, {"code": 700005, "msg": "recvWindow must less than 60000"})


async def test_parameters_in_a_json_body_are_signed_after_the_query(env: Env) -> None:
    _sim, client = env
    stamp = int(time.time() * 1000)
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT"
    body = orjson.dumps({"quantity": "1", "price": "3", "timestamp": stamp}).decode()
    signature = mexc_hmac_signature(client.secret, query + body)
    status, data, _ = await client.raw(
        "POST",
        "/api/v3/order",
        f"{query}&signature={signature}",
        body=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200, data
    assert data["price"] == "3"


# -- rate limits ----------------------------------------------------------------------------------
async def test_endpoint_budget_gives_429_with_retry_after_then_418_for_persisting(
    env: Env,
) -> None:
    sim, client = env
    sim.settings.rate_limit_scale = 0.01  # 5 weight per 10 s per endpoint
    answers = [(await client.request("DELETE", "/api/v3/order/all"))[0] for _ in range(5)]
    assert answers == [200] * 5
    status, data, headers = await client.request("DELETE", "/api/v3/order/all")
    assert (status, data) == (429, {"code": 429, "msg": "Too Many Requests"})
    assert 1 <= int(headers["Retry-After"]) <= 10
    # Other endpoints have their own budget, but the client was told to back off.
    statuses = [(await client.request("GET", "/api/v3/openOrders"))[0] for _ in range(3)]
    assert statuses[:2] == [429, 429]
    assert statuses[2] == 418
    status, data, headers = await client.request("GET", "/api/v3/openOrders")
    assert status == 418
    assert int(headers["Retry-After"]) >= 60
    assert sim.counters["http 429"] >= 3
    assert sim.counters["http 418"] >= 2


async def test_reset_limits_also_clears_the_endpoint_windows(env: Env) -> None:
    sim, client = env
    sim.settings.rate_limit_scale = 0.02  # 10 weight per 10 s per endpoint
    statuses = [(await client.request("GET", "/api/v3/openOrders"))[0] for _ in range(4)]
    assert statuses[-1] == 429
    sim.reset_limits()
    status, _, _ = await client.request("GET", "/api/v3/openOrders")
    assert status == 200


async def test_open_orders_reads_spend_their_documented_weight_of_three(env: Env) -> None:
    sim, client = env
    sim.settings.rate_limit_scale = 0.02  # 10 weight per 10 s per endpoint
    statuses = [(await client.request("GET", "/api/v3/openOrders"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_rate_limit_storm_fault_answers_429_with_its_retry_after(env: Env) -> None:
    sim, client = env
    await add_fault(sim, kind="rate_limit", endpoint="/api/v3/openOrders", retry_after_s=7)
    status, data, headers = await client.request("DELETE", "/api/v3/openOrders", [("symbol", "X1")])
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert data == {"code": 429, "msg": "Too Many Requests"}


# -- faults ------------------------------------------------------------------------------------
async def test_error_before_answers_503_and_leaves_the_order(env: Env) -> None:
    sim, client = env
    placed = await client.place("BTCUSDT")
    await add_fault(sim, kind="error_before", endpoint="/api/v3/order", http_status=503, count=1)
    status, data, _ = await client.request(
        "DELETE", "/api/v3/order", [("symbol", "BTCUSDT"), ("orderId", placed["orderId"])]
    )
    assert (status, data) == (503, {"code": 503, "msg": "service not available, please try again"})
    assert placed["orderId"] in book_ids(sim)


async def test_error_after_answers_504_but_the_cancel_was_applied(env: Env) -> None:
    sim, client = env
    placed = await client.place("BTCUSDT")
    await add_fault(sim, kind="error_after", endpoint="/api/v3/order", http_status=504, count=1)
    status, data, _ = await client.request(
        "DELETE", "/api/v3/order", [("symbol", "BTCUSDT"), ("orderId", placed["orderId"])]
    )
    assert (status, data) == (504, {"code": 504, "msg": "Gateway Time-out"})
    assert placed["orderId"] not in book_ids(sim)


async def test_latency_fault_holds_answers_past_a_short_client_timeout(env: Env) -> None:
    sim, client = env
    await add_fault(sim, kind="latency", endpoint="/api/v3/time", latency_ms=3000)
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        async with client.session.get(f"{sim.base_url}/api/v3/time", timeout=timeout):
            pass
    status, _, _ = await client.raw("GET", "/api/v3/ping")
    assert status == 200


async def test_stall_fault_never_answers_within_the_client_timeout(env: Env) -> None:
    sim, client = env
    await add_fault(sim, kind="stall", endpoint="/api/v3/openOrders", stall_s=2.0, count=1)
    timeout = aiohttp.ClientTimeout(total=0.2)
    url = f"{sim.base_url}/api/v3/openOrders?{client.signed_query()}"
    with pytest.raises(asyncio.TimeoutError):
        async with client.session.get(
            url, headers={"X-MEXC-APIKEY": client.api_key}, timeout=timeout
        ):
            pass
    assert sim.counters["faults stall"] == 1


async def test_clock_skew_fault_moves_server_time_and_refuses_local_timestamps(env: Env) -> None:
    sim, client = env
    await add_fault(sim, kind="clock_skew", skew_ms=30_000)
    _, data, _ = await client.raw("GET", "/api/v3/time")
    assert data["serverTime"] - time.time() * 1000 > 25_000
    status, data, _ = await client.request("GET", "/api/v3/openOrders")
    assert (status, data["code"]) == (400, 700003)
    status, _, _ = await client.request(
        "GET", "/api/v3/openOrders", timestamp_ms=int(time.time() * 1000) + 30_000
    )
    assert status == 200


# -- listenKeys ---------------------------------------------------------------------------------
async def test_listen_key_create_list_extend_and_delete(env: Env) -> None:
    _sim, client = env
    status, created, _ = await client.request("POST", "/api/v3/userDataStream")
    assert status == 200
    key = created["listenKey"]
    assert len(key) == 64
    _, listed, _ = await client.request("GET", "/api/v3/userDataStream")
    assert listed == {"listenKey": [key]}
    extended = await client.request("PUT", "/api/v3/userDataStream", [("listenKey", key)])
    assert extended[:2] == (200, {"listenKey": key})
    status, data, _ = await client.request("DELETE", "/api/v3/userDataStream", [("listenKey", key)])
    assert (status, data) == (200, {"listenKey": key})
    status, data, _ = await client.request("PUT", "/api/v3/userDataStream", [("listenKey", key)])
    assert (status, data) == (400, {"code": "730708", "msg": "listen key information error"})


async def test_listen_keys_expire_after_their_ttl_unless_extended() -> None:
    async with mexc_sim(listen_key_ttl_s=0.3) as (sim, _), MexcRawClient(sim) as client:
        _, created, _ = await client.request("POST", "/api/v3/userDataStream")
        key = created["listenKey"]
        await eventually(lambda: key not in sim.listen_keys, timeout_s=5)
        status, data, _ = await client.request(
            "PUT", "/api/v3/userDataStream", [("listenKey", key)]
        )
        assert (status, data["code"]) == (400, "730708")


async def test_an_account_holds_at_most_the_configured_listen_keys() -> None:
    async with mexc_sim(max_listen_keys=2) as (sim, _), MexcRawClient(sim) as client:
        for _ in range(2):
            assert (await client.request("POST", "/api/v3/userDataStream"))[0] == 200
        status, data, _ = await client.request("POST", "/api/v3/userDataStream")
        assert status == 400
        assert data["code"] == 730003


# -- websocket --------------------------------------------------------------------------------
class WsClient:
    """A bare user-data websocket client: what any MEXC client sends, nothing more."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def json(self) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return dict(orjson.loads(msg.data))

    async def push(self) -> Any:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        return pb.PushDataV3ApiWrapper.FromString(msg.data)

    async def subscribe(self, channel: str = pb.ORDERS_CHANNEL) -> None:
        await self.ws.send_str(
            orjson.dumps({"method": "SUBSCRIPTION", "params": [channel]}).decode()
        )
        assert await self.json() == {"id": 0, "code": 0, "msg": channel}

    async def closed(self) -> aiohttp.WSMessage:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 5)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return msg


async def open_ws(sim: MexcSim, client: MexcRawClient) -> tuple[WsClient, str]:
    _, created, _ = await client.request("POST", "/api/v3/userDataStream")
    key = created["listenKey"]
    ws = await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}")
    return WsClient(ws), key


async def test_bad_listen_key_gets_invalid_listen_key_text_and_a_close(env: Env) -> None:
    sim, client = env
    ws = await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey=nope")
    msg = await ws.receive()
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "Invalid listen key")
    assert (await WsClient(ws).closed()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_subscription_is_acked_and_ping_answers_pong(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    await ws.ws.send_str('{"method":"PING"}')
    assert await ws.json() == {"id": 0, "code": 0, "msg": "PONG"}
    await ws.ws.close()


async def test_order_placed_over_rest_is_pushed_as_protobuf_then_its_cancel(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    placed = await client.place("MXUSDT", price="3.5", quantity="2", newClientOrderId="pb-1")
    new = await ws.push()
    assert new.channel == pb.ORDERS_CHANNEL
    assert new.symbol == "MXUSDT"
    assert new.sendTime > 0
    assert new.WhichOneof("body") == "privateOrders"
    o = new.privateOrders
    assert (o.id, o.clientId, o.price, o.quantity) == (placed["orderId"], "pb-1", "3.5", "2")
    assert (o.status, o.orderType, o.tradeType, o.remainQuantity) == (1, 1, 1, "2")
    await client.request(
        "DELETE", "/api/v3/order", [("symbol", "MXUSDT"), ("orderId", placed["orderId"])]
    )
    cancelled = await ws.push()
    assert (cancelled.privateOrders.id, cancelled.privateOrders.status) == (placed["orderId"], 4)
    await ws.ws.close()


async def test_admin_seeds_and_fills_appear_on_the_stream(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    await ws.subscribe(pb.DEALS_CHANNEL)
    account = sim.accounts["acct0"]
    (order,) = [sim.book(account).place(OrderSpec("BTCUSDT", quantity=Decimal(2)))]
    assert (await ws.push()).privateOrders.status == 1
    sim.book(account).fill(order.order_id, Decimal(1))
    partial = await ws.push()
    assert (partial.privateOrders.status, partial.privateOrders.lastDealQuantity) == (3, "1")
    deal = await ws.push()
    assert deal.WhichOneof("body") == "privateDeals"
    assert (deal.privateDeals.orderId, deal.privateDeals.quantity) == (order.order_id, "1")
    await ws.ws.close()


async def test_other_accounts_events_are_not_pushed(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    sim.book(sim.accounts["acct1"]).place(OrderSpec("BTCUSDT"))
    mine = sim.book(sim.accounts["acct0"]).place(OrderSpec("ETHUSDT"))
    assert (await ws.push()).privateOrders.id == mine.order_id
    await ws.ws.close()


async def test_unknown_channel_is_not_subscribed(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.ws.send_str('{"method":"SUBSCRIPTION","params":["spot@private.nope.v3.api.pb"]}')
    reply = await ws.json()
    assert reply["msg"].startswith("Not Subscribed successfully!")
    await ws.ws.close()


async def test_connection_without_subscription_and_idle_connection_are_closed() -> None:
    async with (
        mexc_sim(ws_no_subscription_timeout_s=0.2, ws_idle_timeout_s=0.4) as (sim, _),
        MexcRawClient(sim) as client,
    ):
        lazy, _ = await open_ws(sim, client)
        await lazy.closed()
        idle, _ = await open_ws(sim, client)
        await idle.subscribe()
        await idle.closed()
        assert sim.counters["ws closed no_subscription"] == 1
        assert sim.counters["ws closed idle"] == 1


async def test_connections_are_closed_at_their_lifetime_cap() -> None:
    async with mexc_sim(ws_max_lifetime_s=0.3) as (sim, _), MexcRawClient(sim) as client:
        ws, _ = await open_ws(sim, client)
        await ws.subscribe()
        await ws.closed()
        assert sim.counters["ws closed lifetime"] == 1


async def test_ccxt_market_loading_endpoints_answer(env: Env) -> None:
    _, client = env
    status, data, _ = await client.raw("GET", "/api/v1/contract/detail")
    assert (status, data) == (200, {"success": True, "code": 0, "data": []})
    status, data, _ = await client.request("GET", "/api/v3/capital/config/getall")
    assert (status, data) == (200, [])


async def test_a_listen_key_serves_at_most_five_connections(env: Env) -> None:
    sim, client = env
    first, key = await open_ws(sim, client)
    others = [await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}") for _ in range(4)]
    await eventually(lambda: len(sim.conns) == 5)
    sixth = await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}")
    msg = await sixth.receive()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1008
    for ws in [first.ws, *others]:
        await ws.close()


async def test_flooding_more_than_100_messages_a_second_disconnects(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    for _ in range(150):
        await ws.ws.send_str('{"method":"PING"}')
    await ws.closed()
    assert sim.counters["ws over_limit"] == 1


async def test_ws_drop_closes_streams_and_refuses_new_ones_while_active(env: Env) -> None:
    sim, client = env
    ws, key = await open_ws(sim, client)
    await ws.subscribe()
    await add_fault(sim, kind="ws_drop", account="acct0")
    assert (await ws.closed()).data == 1011
    again = await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}")
    assert (await again.receive()).type is aiohttp.WSMsgType.CLOSE
    sim.faults.clear(FaultKind.WS_DROP)
    fresh = WsClient(await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}"))
    await fresh.subscribe()
    await fresh.ws.close()


async def test_a_ws_drop_with_a_count_of_one_drops_once_and_allows_reconnects(env: Env) -> None:
    sim, client = env
    ws, key = await open_ws(sim, client)
    await ws.subscribe()
    await add_fault(sim, kind="ws_drop", account="acct0", count=1)
    await ws.closed()
    again = WsClient(await client.session.ws_connect(f"{sim.ws_url}/ws?listenKey={key}"))
    await again.subscribe()
    await again.ws.close()


async def test_silent_stream_answers_pong_but_delivers_no_events(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    await add_fault(sim, kind="ws_silent", account="acct0")
    sim.book(sim.accounts["acct0"]).place(OrderSpec("BTCUSDT"))
    await ws.ws.send_str('{"method":"PING"}')
    assert await ws.json() == {"id": 0, "code": 0, "msg": "PONG"}  # no push came first
    assert sim.counters["ws silenced_events"] == 1
    sim.faults.clear(FaultKind.WS_SILENT)
    placed = sim.book(sim.accounts["acct0"]).place(OrderSpec("ETHUSDT"))
    assert (await ws.push()).privateOrders.id == placed.order_id
    await ws.ws.close()


async def test_listen_key_expiry_fault_ends_the_stream_and_the_key(env: Env) -> None:
    sim, client = env
    ws, key = await open_ws(sim, client)
    await ws.subscribe()
    await add_fault(sim, kind="listen_key_expiry", account="acct0")
    msg = await asyncio.wait_for(ws.ws.receive(), 5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "Invalid listen key")
    await ws.closed()
    status, data, _ = await client.request("PUT", "/api/v3/userDataStream", [("listenKey", key)])
    assert (status, data["code"]) == (400, "730708")


async def test_server_shutdown_fault_closes_with_going_away(env: Env) -> None:
    sim, client = env
    ws, _ = await open_ws(sim, client)
    await ws.subscribe()
    await add_fault(sim, kind="server_shutdown")
    assert (await ws.closed()).data == 1001


async def test_deleting_the_listen_key_closes_its_streams(env: Env) -> None:
    sim, client = env
    ws, key = await open_ws(sim, client)
    await ws.subscribe()
    await client.request("DELETE", "/api/v3/userDataStream", [("listenKey", key)])
    await ws.closed()


async def test_exchange_info_lists_the_configured_symbols() -> None:
    settings = account_settings(1, symbols=["PEPEUSDT"])
    async with mexc_sim(settings=settings) as (sim, _), MexcRawClient(sim) as client:
        _, info, _ = await client.raw("GET", "/api/v3/exchangeInfo")
        assert [s["symbol"] for s in info["symbols"]] == ["PEPEUSDT"]
        await client.place("BTCUSDT")
        _, info, _ = await client.raw("GET", "/api/v3/exchangeInfo")
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "PEPEUSDT"]


def test_settings_helper_names_accounts_and_keys() -> None:
    settings = account_settings(3)
    assert [a.name for a in settings.accounts] == ["acct0", "acct1", "acct2"]
    assert [a.api_key for a in settings.accounts] == ["mx0key0", "mx0key1", "mx0key2"]
