"""The Binance simulator dialect against Binance's documented behaviour (REST and ws-api)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from yarl import URL

from killswitch.sim.binance import BinanceSim
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.ratelimit import BanTracker
from killswitch.sim.rogue import RogueBot
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.conftest import eventually
from tests.fixtures.binance import BinanceVenue, binance_venue, make_account, ws_api, ws_signed
from tests.fixtures.sim import running

# The example key, secret and signatures published in Binance's docs [BN-REST], [BN-WS].
DOC_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_TS = 1499827319559
DOC_QUERY = (
    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
    "&recvWindow=5000&timestamp=1499827319559"
)
DOC_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
DOC_MIXED_QUERY = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC"
DOC_MIXED_BODY = "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
DOC_MIXED_SIGNATURE = "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
DOC_UNICODE_QUERY = (
    "symbol=%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96&side=BUY&type=LIMIT"
    "&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
)
DOC_UNICODE_SIGNATURE = "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3"
DOC_WS_TS = 1645423376532
DOC_WS_SIGNATURE = "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a"


@pytest.fixture
async def venue() -> AsyncIterator[BinanceVenue]:
    async with binance_venue(2) as running_venue:
        yield running_venue


@pytest.fixture
async def doc_sim() -> AsyncIterator[tuple[BinanceSim, aiohttp.ClientSession]]:
    """A sim whose one account holds the key and secret from Binance's docs."""
    account = SimAccount(name="doc", api_key=DOC_KEY, secret=DOC_SECRET)
    sim = BinanceSim(VenueSettings(accounts=[account]))
    async with running(sim), aiohttp.ClientSession() as http:
        yield sim, http


def skew_to(sim: BinanceSim, target_ms: int) -> None:
    """Set the sim's clock so that it reads `target_ms` now."""
    sim.faults.clear(FaultKind.CLOCK_SKEW)
    sim.faults.add(Fault(FaultKind.CLOCK_SKEW, skew_ms=target_ms - int(time.time() * 1000)))


async def raw_request(
    http: aiohttp.ClientSession,
    sim: BinanceSim,
    method: str,
    path: str,
    query: str,
    body: str | None = None,
    key: str | None = DOC_KEY,
) -> tuple[int, dict[str, str], Any]:
    headers = {"X-MBX-APIKEY": key} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    url = URL(f"{sim.base_url}{path}?{query}", encoded=True)
    async with http.request(
        method, url, data=body.encode() if body is not None else None, headers=headers
    ) as resp:
        return resp.status, dict(resp.headers), orjson.loads(await resp.read())


# -- signatures and the time window ------------------------------------------------------------
async def test_the_documented_rest_request_is_accepted_with_its_published_signature(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    skew_to(sim, DOC_TS + 100)
    status, _, body = await raw_request(
        http, sim, "POST", "/api/v3/order", f"{DOC_QUERY}&signature={DOC_SIGNATURE}"
    )
    assert status == 200, body
    assert body["symbol"] == "LTCBTC"
    assert body["status"] == "NEW"
    assert [o.symbol for o in sim.book(sim.accounts["doc"]).open_orders()] == ["LTCBTC"]


async def test_a_signature_over_query_then_body_is_accepted_as_published(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    skew_to(sim, DOC_TS + 100)
    status, _, body = await raw_request(
        http,
        sim,
        "POST",
        "/api/v3/order",
        DOC_MIXED_QUERY,
        f"{DOC_MIXED_BODY}&signature={DOC_MIXED_SIGNATURE}",
    )
    assert status == 200, body
    assert body["origQty"] == "1.00000000"


async def test_a_non_ascii_symbol_is_signed_percent_encoded_as_published(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    skew_to(sim, DOC_TS + 100)
    status, _, body = await raw_request(
        http, sim, "POST", "/api/v3/order", f"{DOC_UNICODE_QUERY}&signature={DOC_UNICODE_SIGNATURE}"
    )
    assert status == 200, body
    assert body["symbol"] == "１２３４５６"


async def test_a_wrong_signature_answers_1022_and_is_counted(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    skew_to(sim, DOC_TS + 100)
    bad = DOC_SIGNATURE[:-1] + "0"
    status, _, body = await raw_request(
        http, sim, "POST", "/api/v3/order", f"{DOC_QUERY}&signature={bad}"
    )
    assert (status, body) == (
        400,
        {"code": -1022, "msg": "Signature for this request is not valid."},
    )
    assert sim.counters["signature_failures"] == 1
    assert not sim.book(sim.accounts["doc"]).open_orders()


async def test_a_missing_or_unknown_api_key_answers_with_binance_codes(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    query = f"{DOC_QUERY}&signature={DOC_SIGNATURE}"
    status, _, body = await raw_request(http, sim, "GET", "/api/v3/openOrders", query, key=None)
    assert (status, body) == (401, {"code": -2014, "msg": "API-key format invalid."})
    status, _, body = await raw_request(http, sim, "GET", "/api/v3/openOrders", query, key="nope")
    assert (status, body) == (
        401,
        {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    )


@pytest.mark.parametrize(
    ("offset_ms", "msg"),
    [
        (1500, "Timestamp for this request was 1000ms ahead of the server's time."),
        (-6000, "Timestamp for this request is outside of the recvWindow."),
    ],
)
async def test_a_timestamp_outside_the_window_answers_1021(
    venue: BinanceVenue, offset_ms: int, msg: str
) -> None:
    skew_to(venue.sim, int(time.time() * 1000) - offset_ms)
    status, _, body = await venue.rest("acct0", "GET", "/api/v3/openOrders")
    assert (status, body) == (400, {"code": -1021, "msg": msg})


async def test_a_recv_window_above_60000_is_refused(venue: BinanceVenue) -> None:
    status, _, body = await venue.rest(
        "acct0", "GET", "/api/v3/openOrders", {"recvWindow": "60001"}
    )
    assert status == 400
    assert body["code"] == -1102


async def test_an_ed25519_key_signs_rest_requests() -> None:
    async with binance_venue(1, key_type="ed25519") as venue:
        order = await venue.place("acct0", "BTCUSDT")
        assert order["status"] == "NEW"
        acct = venue.accounts["acct0"]
        url = f"{venue.sim.base_url}/api/v3/openOrders?timestamp={int(time.time() * 1000)}"
        async with venue.http.get(
            url + "&signature=AAAA", headers={"X-MBX-APIKEY": acct.api_key}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == -1022


# -- endpoints --------------------------------------------------------------------------------
async def test_orders_are_placed_listed_and_rendered_with_numeric_ids(venue: BinanceVenue) -> None:
    placed = await venue.place("acct0", "BTCUSDT", price="101.5", client_order_id="bot-1")
    assert placed["clientOrderId"] == "bot-1"
    assert placed["orderListId"] == -1
    assert placed["fills"] == []
    assert isinstance(placed["orderId"], int)
    status, headers, rows = await venue.rest(
        "acct0", "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}
    )
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"].isdigit()
    (row,) = rows
    assert row["orderId"] == placed["orderId"]
    assert row["price"] == "101.50000000"
    assert row["status"] == "NEW"
    assert row["isWorking"] is True
    status, _, one = await venue.rest(
        "acct0", "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
    )
    assert (status, one["clientOrderId"]) == (200, "bot-1")


async def test_a_cancel_answers_the_documented_body_and_a_second_cancel_is_unknown(
    venue: BinanceVenue,
) -> None:
    placed = await venue.place("acct0", "BTCUSDT", client_order_id="bot-2")
    params = {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
    status, _, body = await venue.rest("acct0", "DELETE", "/api/v3/order", params)
    assert status == 200
    assert set(body) >= {
        "symbol",
        "origClientOrderId",
        "orderId",
        "orderListId",
        "clientOrderId",
        "transactTime",
        "price",
        "origQty",
        "executedQty",
        "origQuoteOrderQty",
        "cummulativeQuoteQty",
        "status",
        "timeInForce",
        "type",
        "side",
        "selfTradePreventionMode",
    }
    assert (body["status"], body["origClientOrderId"]) == ("CANCELED", "bot-2")
    status, _, body = await venue.rest("acct0", "DELETE", "/api/v3/order", params)
    assert (status, body) == (400, {"code": -2011, "msg": "Unknown order sent."})


async def test_orders_are_numbered_per_symbol_and_one_symbols_cancel_leaves_the_other(
    venue: BinanceVenue,
) -> None:
    # Binance's orderId is unique per symbol only [§1.6]: the sim numbers each symbol alone.
    btc = await venue.place("acct0", "BTCUSDT", client_order_id="bot-btc")
    eth = await venue.place("acct0", "ETHUSDT", client_order_id="bot-eth")
    assert btc["orderId"] == eth["orderId"]
    order_id = str(btc["orderId"])
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id}
    )
    assert (status, body["symbol"], body["status"]) == (200, "BTCUSDT", "CANCELED")
    status, _, rows = await venue.rest("acct0", "GET", "/api/v3/openOrders")
    assert [(r["symbol"], str(r["orderId"])) for r in rows] == [("ETHUSDT", order_id)]
    status, _, body = await venue.rest(
        "acct0", "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id}
    )
    assert (status, body["status"]) == (200, "CANCELED")
    status, _, body = await venue.rest(
        "acct0", "GET", "/api/v3/order", {"symbol": "ETHUSDT", "origClientOrderId": "bot-eth"}
    )
    assert (status, body["status"], str(body["orderId"])) == (200, "NEW", order_id)
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": order_id}
    )
    assert (status, body) == (400, {"code": -2011, "msg": "Unknown order sent."})
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "ETHUSDT", "origClientOrderId": "bot-eth"}
    )
    assert (status, body["symbol"], str(body["orderId"])) == (200, "ETHUSDT", order_id)


async def test_a_rogue_bot_on_two_symbols_meets_the_same_ids_and_keys_them_apart(
    venue: BinanceVenue,
) -> None:
    acct = venue.accounts["acct0"]
    rogue = RogueBot(
        venue="binance",
        rest_url=venue.sim.base_url,
        api_key=acct.api_key,
        api_secret=acct.api_secret,
        symbols=["BTCUSDT", "ETHUSDT"],
        rate_per_s=200.0,
    )
    async with rogue:
        async with asyncio.timeout(30):
            await rogue.wait_placed(6)
    book = venue.sim.book(venue.sim.accounts["acct0"])
    assert set(rogue.placed_keys) == set(book.open)
    assert len(set(rogue.placed_ids)) < len(rogue.placed_keys)  # ids repeat across symbols


async def test_cancel_by_both_ids_must_match_one_order(venue: BinanceVenue) -> None:
    placed = await venue.place("acct0", "BTCUSDT", client_order_id="mine")
    params = {"symbol": "BTCUSDT", "orderId": str(placed["orderId"]), "origClientOrderId": "x"}
    status, _, body = await venue.rest("acct0", "DELETE", "/api/v3/order", params)
    assert (status, body["code"]) == (400, -2011)
    status, _, body = await venue.rest("acct0", "DELETE", "/api/v3/order", {"symbol": "BTCUSDT"})
    assert (status, body["code"]) == (400, -1102)
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "mine"}
    )
    assert (status, body["orderId"]) == (200, placed["orderId"])


async def test_cancel_restrictions_are_checked_with_the_documented_errors(
    venue: BinanceVenue,
) -> None:
    placed = await venue.place("acct0", "BTCUSDT")
    base = {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {**base, "cancelRestrictions": "NOPE"}
    )
    assert (status, body) == (400, {"code": -1145, "msg": "Invalid cancelRestrictions"})
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {**base, "cancelRestrictions": "ONLY_PARTIALLY_FILLED"}
    )
    assert (status, body) == (
        400,
        {"code": -2011, "msg": "Order was not canceled due to cancel restrictions."},
    )
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {**base, "cancelRestrictions": "ONLY_NEW"}
    )
    assert (status, body["status"]) == (200, "CANCELED")


def seed_symbol_with_list(venue: BinanceVenue, symbol: str = "ETHUSDT") -> None:
    legs = [
        OrderSpec(symbol, "SELL", "LIMIT_MAKER", Decimal(200), Decimal(1), "leg-a"),
        OrderSpec(symbol, "SELL", "STOP_LOSS_LIMIT", Decimal(50), Decimal(1), "leg-b"),
    ]
    venue.sim.seed(
        venue.sim.accounts["acct0"],
        [OrderSpec(symbol, "BUY", price=Decimal(90)), OrderSpec(symbol, "BUY", price=Decimal(91))],
        [(legs, "OCO", "list-1")],
    )


async def test_cancel_all_on_a_symbol_cancels_list_legs_and_answers_a_mixed_array(
    venue: BinanceVenue,
) -> None:
    seed_symbol_with_list(venue)
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/openOrders", {"symbol": "ETHUSDT"}
    )
    assert status == 200
    plain = [item for item in body if "orderReports" not in item]
    lists = [item for item in body if "orderReports" in item]
    assert len(plain) == 2
    assert all(item["status"] == "CANCELED" for item in plain)
    (lst,) = lists
    assert lst["listStatusType"] == "ALL_DONE"
    assert lst["listOrderStatus"] == "ALL_DONE"
    assert lst["listClientOrderId"] == "list-1"
    assert sorted(r["origClientOrderId"] for r in lst["orderReports"]) == ["leg-a", "leg-b"]
    assert not venue.sim.book(venue.sim.accounts["acct0"]).open_orders()


async def test_cancel_all_on_an_empty_symbol_answers_unknown_order(venue: BinanceVenue) -> None:
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"}
    )
    assert (status, body) == (400, {"code": -2011, "msg": "Unknown order sent."})


async def test_switches_pick_the_other_reading_of_empty_cancel_all_and_gone_lists() -> None:
    options = {"empty_cancel_all": "empty_list", "list_unknown_message": "Unknown order sent."}
    async with binance_venue(1, sim_options=options) as venue:
        status, _, body = await venue.rest(
            "acct0", "DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"}
        )
        assert (status, body) == (200, [])
        status, _, body = await venue.rest(
            "acct0", "DELETE", "/api/v3/orderList", {"symbol": "BTCUSDT", "orderListId": "1"}
        )
        assert (status, body) == (400, {"code": -2011, "msg": "Unknown order sent."})
    with pytest.raises(ValueError, match="empty_cancel_all"):
        BinanceSim(VenueSettings(accounts=[]), empty_cancel_all="maybe")


async def test_cancelling_one_leg_cancels_its_whole_list(venue: BinanceVenue) -> None:
    seed_symbol_with_list(venue)
    book = venue.sim.book(venue.sim.accounts["acct0"])
    (lst,) = book.open_lists()
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": lst.order_ids[0]}
    )
    assert status == 200
    assert body["orderListId"] == int(lst.list_id)
    assert body["contingencyType"] == "OCO"
    assert len(body["orderReports"]) == 2
    assert not book.open_lists()
    assert len(book.open_orders()) == 2


async def test_order_lists_are_listed_and_cancelled_by_id_or_client_id(
    venue: BinanceVenue,
) -> None:
    seed_symbol_with_list(venue)
    seed_symbol_with_list(venue, "BTCUSDT")
    status, _, lists = await venue.rest("acct0", "GET", "/api/v3/openOrderList")
    assert status == 200
    assert {(x["symbol"], x["listStatusType"], x["listOrderStatus"]) for x in lists} == {
        ("ETHUSDT", "EXEC_STARTED", "EXECUTING"),
        ("BTCUSDT", "EXEC_STARTED", "EXECUTING"),
    }
    eth = next(x for x in lists if x["symbol"] == "ETHUSDT")
    status, _, body = await venue.rest(
        "acct0",
        "DELETE",
        "/api/v3/orderList",
        {"symbol": "ETHUSDT", "orderListId": str(eth["orderListId"])},
    )
    assert (status, body["listStatusType"]) == (200, "ALL_DONE")
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/orderList", {"symbol": "BTCUSDT", "listClientOrderId": "list-1"}
    )
    assert (status, body["symbol"]) == (200, "BTCUSDT")
    status, _, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/orderList", {"symbol": "BTCUSDT", "listClientOrderId": "list-1"}
    )
    # A list that is not open: -2011 with the list wording users report (§1.6).
    assert (status, body) == (400, {"code": -2011, "msg": "Unknown order list sent."})


async def test_an_oco_list_can_be_placed_over_rest(venue: BinanceVenue) -> None:
    status, _, body = await venue.rest(
        "acct0",
        "POST",
        "/api/v3/orderList/oco",
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "quantity": "1",
            "aboveType": "LIMIT_MAKER",
            "abovePrice": "120",
            "belowType": "STOP_LOSS_LIMIT",
            "belowPrice": "80",
            "belowStopPrice": "81",
            "belowTimeInForce": "GTC",
            "listClientOrderId": "my-oco",
        },
    )
    assert status == 200, body
    assert (body["contingencyType"], body["listStatusType"]) == ("OCO", "EXEC_STARTED")
    assert [r["type"] for r in body["orderReports"]] == ["LIMIT_MAKER", "STOP_LOSS_LIMIT"]
    assert all(r["orderListId"] == body["orderListId"] for r in body["orderReports"])


async def test_open_orders_weigh_6_with_a_symbol_and_80_without(venue: BinanceVenue) -> None:
    for _ in range(3):  # weight resets each calendar minute: retry if one fell in between
        _, h1, _ = await venue.rest("acct0", "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
        _, h2, _ = await venue.rest("acct0", "GET", "/api/v3/openOrders")
        _, h3, _ = await venue.rest("acct0", "GET", "/api/v3/openOrderList")
        used = [int(h["X-MBX-USED-WEIGHT-1M"]) for h in (h1, h2, h3)]
        if used[0] < used[1] < used[2]:
            break
    assert (used[1] - used[0], used[2] - used[1]) == (80, 6)


async def test_an_unknown_order_query_answers_2013(venue: BinanceVenue) -> None:
    status, _, body = await venue.rest(
        "acct0", "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": "42"}
    )
    assert (status, body) == (400, {"code": -2013, "msg": "Order does not exist."})


async def test_server_time_and_exchange_info_are_public(venue: BinanceVenue) -> None:
    status, _, body = await venue.rest("acct0", "GET", "/api/v3/time", signed=False)
    assert status == 200
    assert abs(body["serverTime"] - time.time() * 1000) < 60_000
    status, _, info = await venue.rest(
        "acct0", "GET", "/api/v3/exchangeInfo", {"symbol": "BTCUSDT"}, signed=False
    )
    assert status == 200
    (symbol,) = info["symbols"]
    assert (symbol["baseAsset"], symbol["quoteAsset"], symbol["status"]) == (
        "BTC",
        "USDT",
        "TRADING",
    )
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 6000,
    }


async def test_what_ccxt_load_markets_reads_is_served(venue: BinanceVenue) -> None:
    status, _, coins = await venue.rest("acct0", "GET", "/sapi/v1/capital/config/getall")
    assert status == 200
    by_coin = {c["coin"]: c for c in coins}
    assert {"BTC", "ETH", "USDT", "BNB"} <= set(by_coin)
    (network,) = by_coin["BTC"]["networkList"]
    assert (network["coin"], network["isDefault"]) == ("BTC", True)
    status, _, _ = await venue.rest("acct0", "GET", "/sapi/v1/capital/config/getall", signed=False)
    assert status == 400  # signed, as on Binance
    for path in ("/sapi/v1/margin/allPairs", "/sapi/v1/margin/isolated/allPairs"):
        status, _, pairs = await venue.rest("acct0", "GET", path)
        assert (status, pairs) == (200, [])  # no margin trading on this venue
    for path in ("/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"):
        status, _, info = await venue.rest("acct0", "GET", path, signed=False)
        assert (status, info["symbols"]) == (200, [])  # a spot venue: no futures


async def test_configured_symbols_make_others_invalid() -> None:
    async with binance_venue(1, symbols=["BTCUSDT"]) as venue:
        status, _, body = await venue.rest(
            "acct0", "DELETE", "/api/v3/openOrders", {"symbol": "DOGEUSDT"}
        )
        assert (status, body) == (400, {"code": -1121, "msg": "Invalid symbol."})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v3/userDataStream"),
        ("PUT", "/api/v3/userDataStream"),
        ("DELETE", "/api/v3/userDataStream"),
        ("POST", "/api/v1/userDataStream"),
    ],
)
async def test_the_retired_listen_key_endpoints_answer_as_retired(
    venue: BinanceVenue, method: str, path: str
) -> None:
    status, _, body = await venue.rest("acct0", method, path, signed=False)
    assert (status, body) == (400, {"code": -1016, "msg": "This service is no longer available."})


# -- rate limits ------------------------------------------------------------------------------
async def test_weight_overuse_gets_429_with_retry_after_then_a_418_ban() -> None:
    async with binance_venue(1, rate_limit_scale=0.001) as venue:  # 6 weight per minute
        statuses: list[int] = []
        answers: list[tuple[int, dict[str, str], Any]] = []
        for _ in range(40):
            answer = await venue.rest("acct0", "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
            answers.append(answer)
            statuses.append(answer[0])
            if answer[0] == 418:
                break
        first_429 = next(a for a in answers if a[0] == 429)
        assert first_429[2]["code"] == -1003
        assert "request weight per 1 MINUTE" in first_429[2]["msg"]
        assert 1 <= int(first_429[1]["Retry-After"]) <= 60
        assert statuses[-1] == 418
        ban = answers[-1]
        assert ban[2]["code"] == -1003
        assert "IP banned until" in ban[2]["msg"]
        assert int(ban[1]["Retry-After"]) >= 120
        assert venue.sim.counters["http 418"] == 1


async def test_a_429_storm_answers_429_with_the_configured_retry_after(venue: BinanceVenue) -> None:
    venue.sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="/api/v3/order", retry_after_s=7))
    status, headers, body = await venue.rest(
        "acct0", "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": "1"}
    )
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert body["code"] == -1003


# -- REST faults ------------------------------------------------------------------------------
async def test_a_5xx_after_the_cancel_leaves_it_applied(venue: BinanceVenue) -> None:
    placed = await venue.place("acct0", "BTCUSDT")
    venue.sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint="/api/v3/order", count=1))
    params = {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
    status, _, body = await venue.rest("acct0", "DELETE", "/api/v3/order", params)
    assert status == 503
    assert body["code"] == -1006
    assert not venue.sim.book(venue.sim.accounts["acct0"]).open_orders()


async def test_a_5xx_before_the_cancel_leaves_the_order_open(venue: BinanceVenue) -> None:
    placed = await venue.place("acct0", "BTCUSDT")
    venue.sim.faults.add(
        Fault(FaultKind.ERROR_BEFORE, endpoint="/api/v3/order", count=1, http_status=500)
    )
    params = {"symbol": "BTCUSDT", "orderId": str(placed["orderId"])}
    status, _, _ = await venue.rest("acct0", "DELETE", "/api/v3/order", params)
    assert status == 500
    assert len(venue.sim.book(venue.sim.accounts["acct0"]).open_orders()) == 1


async def test_a_stall_holds_the_request_past_the_client_timeout(venue: BinanceVenue) -> None:
    venue.sim.faults.add(Fault(FaultKind.STALL, endpoint="/api/v3/time", stall_s=5.0))
    timeout = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(TimeoutError):
        async with venue.http.get(f"{venue.sim.base_url}/api/v3/time", timeout=timeout):
            pass
    assert venue.sim.counters["faults stall"] == 1


async def test_added_latency_delays_answers_past_a_short_timeout(venue: BinanceVenue) -> None:
    url = f"{venue.sim.base_url}/api/v3/time"
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with venue.http.get(url, timeout=timeout) as resp:
        assert resp.status == 200
    venue.sim.faults.add(Fault(FaultKind.LATENCY, endpoint="/api/v3/time", latency_ms=3000))
    with pytest.raises(TimeoutError):
        async with venue.http.get(url, timeout=timeout):
            pass


async def test_clock_skew_moves_server_time_and_the_signing_window(venue: BinanceVenue) -> None:
    venue.sim.faults.add(Fault(FaultKind.CLOCK_SKEW, skew_ms=-30_000))
    _, _, body = await venue.rest("acct0", "GET", "/api/v3/time", signed=False)
    assert body["serverTime"] < time.time() * 1000 - 20_000
    status, _, body = await venue.rest("acct0", "GET", "/api/v3/openOrders")
    assert (status, body["code"]) == (400, -1021)


# -- WebSocket API ---------------------------------------------------------------------------
async def test_ws_api_echoes_the_id_and_reports_rate_limits(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        frame = await client.call("time")
        assert frame["status"] == 200
        assert frame["id"] == 1
        assert "serverTime" in frame["result"]
        (limit,) = frame["rateLimits"]
        assert (limit["rateLimitType"], limit["interval"], limit["limit"]) == (
            "REQUEST_WEIGHT",
            "MINUTE",
            6000,
        )
        assert limit["count"] >= 3  # the connection (2) and this request (1)
        frame = await client.call("v3/ping", {"returnRateLimits": False})
        assert frame == {"id": 2, "status": 200, "result": {}}


async def test_the_documented_ws_api_request_is_accepted_with_its_published_signature(
    doc_sim: tuple[BinanceSim, aiohttp.ClientSession],
) -> None:
    sim, http = doc_sim
    params = {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.01000000",
        "price": "52000.00",
        "newOrderRespType": "ACK",
        "recvWindow": 100,
        "timestamp": DOC_WS_TS,
        "apiKey": DOC_KEY,
        "signature": DOC_WS_SIGNATURE,
    }
    async with http.ws_connect(f"{sim.ws_api_url}") as ws:
        skew_to(sim, DOC_WS_TS - 900)
        await ws.send_str(
            orjson.dumps({"id": "doc", "method": "order.place", "params": params}).decode()
        )
        frame = orjson.loads((await ws.receive()).data)
    assert frame["status"] == 200, frame
    assert set(frame["result"]) == {
        "symbol",
        "orderId",
        "orderListId",
        "clientOrderId",
        "transactTime",
    }


async def test_ws_api_refuses_a_bad_signature_and_an_unknown_key(venue: BinanceVenue) -> None:
    acct = venue.accounts["acct0"]
    async with ws_api(venue) as client:
        params = ws_signed(acct, {"symbol": "BTCUSDT"})
        params["signature"] = "0" * 64
        frame = await client.call("openOrders.status", params)
        assert (frame["status"], frame["error"]["code"]) == (400, -1022)
        frame = await client.call("openOrders.status", {**params, "apiKey": "unknown"})
        assert (frame["status"], frame["error"]["code"]) == (401, -2015)
        frame = await client.call("openOrders.status", {"symbol": "BTCUSDT"})
        assert (frame["status"], frame["error"]["code"]) == (400, -1102)
    assert venue.sim.counters["signature_failures"] == 1


async def test_session_logon_needs_an_ed25519_key(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        frame = await client.call("session.logon", ws_signed(venue.accounts["acct0"], {}))
        assert (frame["status"], frame["error"]["code"]) == (400, -1022)
        frame = await client.call("userDataStream.subscribe")
        assert frame["status"] == 401
        frame = await client.call("session.status")
        assert frame["result"]["apiKey"] is None


async def test_an_ed25519_session_logs_on_and_streams_the_account_events() -> None:
    async with binance_venue(1, key_type="ed25519") as venue:
        acct = venue.accounts["acct0"]
        async with ws_api(venue) as client:
            frame = await client.call("session.logon", ws_signed(acct, {}))
            assert frame["status"] == 200, frame
            assert frame["result"]["apiKey"] == acct.api_key
            frame = await client.call("userDataStream.subscribe")
            assert frame["result"] == {"subscriptionId": 0}
            # Logged on: a signed method needs only a timestamp.
            frame = await client.call("openOrders.status", {"timestamp": int(time.time() * 1000)})
            assert (frame["status"], frame["result"]) == (200, [])
            placed = await venue.place("acct0", "BTCUSDT")
            event = await client.event()
            assert event["subscriptionId"] == 0
            assert (event["event"]["e"], event["event"]["i"]) == (
                "executionReport",
                placed["orderId"],
            )
            frame = await client.call("session.status")
            assert frame["result"]["userDataStream"] is True
            frame = await client.call("session.logout")
            assert frame["result"]["apiKey"] is None
            event = await client.event()
            assert event == {
                "subscriptionId": 0,
                "event": {"e": "eventStreamTerminated", "E": event["event"]["E"]},
            }


async def test_a_signature_subscription_streams_new_and_cancel_reports(venue: BinanceVenue) -> None:
    acct = venue.accounts["acct0"]
    async with ws_api(venue) as client:
        frame = await client.call("userDataStream.subscribe.signature", ws_signed(acct, {}))
        assert frame["result"] == {"subscriptionId": 0}
        placed = await venue.place("acct0", "BTCUSDT", client_order_id="bot-9")
        new = (await client.event())["event"]
        assert {k: new[k] for k in ("e", "s", "c", "C", "x", "X", "i", "g")} == {
            "e": "executionReport",
            "s": "BTCUSDT",
            "c": "bot-9",
            "C": "",
            "x": "NEW",
            "X": "NEW",
            "i": placed["orderId"],
            "g": -1,
        }
        await venue.rest(
            "acct0",
            "DELETE",
            "/api/v3/order",
            {"symbol": "BTCUSDT", "orderId": str(placed["orderId"]), "newClientOrderId": "kill-1"},
        )
        gone = (await client.event())["event"]
        assert (gone["x"], gone["X"], gone["c"], gone["C"]) == (
            "CANCELED",
            "CANCELED",
            "kill-1",
            "bot-9",
        )
        frame = await client.call("userDataStream.subscribe.signature", ws_signed(acct, {}))
        assert frame["status"] == 400  # one subscription per account per connection


async def test_seeded_lists_and_fills_appear_on_the_stream(venue: BinanceVenue) -> None:
    acct = venue.accounts["acct0"]
    async with ws_api(venue) as client:
        await client.call("userDataStream.subscribe.signature", ws_signed(acct, {}))
        seed_symbol_with_list(venue)
        events = [(await client.event())["event"] for _ in range(5)]
        assert [e["e"] for e in events] == ["executionReport"] * 4 + ["listStatus"]
        status = events[-1]
        assert (status["l"], status["L"], status["C"], status["c"]) == (
            "EXEC_STARTED",
            "EXECUTING",
            "list-1",
            "OCO",
        )
        assert sorted(leg["c"] for leg in status["O"]) == ["leg-a", "leg-b"]
        book = venue.sim.book(venue.sim.accounts["acct0"])
        first = book.open_orders()[0]
        book.fill(first.order_id, Decimal("0.4"))
        trade = (await client.event())["event"]
        assert (trade["x"], trade["X"], trade["l"], trade["i"]) == (
            "TRADE",
            "PARTIALLY_FILLED",
            "0.40000000",
            int(first.order_id),
        )


async def test_unsubscribe_ends_the_subscription_with_event_stream_terminated(
    venue: BinanceVenue,
) -> None:
    acct = venue.accounts["acct0"]
    async with ws_api(venue) as client:
        await client.call("userDataStream.subscribe.signature", ws_signed(acct, {}))
        frame = await client.call("session.subscriptions")
        assert frame["result"] == [{"subscriptionId": 0}]
        frame = await client.call("userDataStream.unsubscribe", {"subscriptionId": 0})
        assert frame["result"] == {}
        event = await client.event()
        assert event["event"]["e"] == "eventStreamTerminated"
        await venue.place("acct0", "BTCUSDT")
        assert (await client.call("session.subscriptions"))["result"] == []
        assert client.events.empty()


async def test_ws_api_cancels_answer_like_rest(venue: BinanceVenue) -> None:
    acct = venue.accounts["acct0"]
    placed = await venue.place("acct0", "BTCUSDT")
    async with ws_api(venue) as client:
        params = {"symbol": "BTCUSDT", "orderId": placed["orderId"]}
        frame = await client.call("order.cancel", ws_signed(acct, params))
        assert (frame["status"], frame["result"]["status"]) == (200, "CANCELED")
        frame = await client.call("order.cancel", ws_signed(acct, params))
        assert frame["error"] == {"code": -2011, "msg": "Unknown order sent."}
        seed_symbol_with_list(venue)
        frame = await client.call("openOrders.cancelAll", ws_signed(acct, {"symbol": "ETHUSDT"}))
        assert len(frame["result"]) == 3
        frame = await client.call("openOrders.cancelAll", ws_signed(acct, {"symbol": "ETHUSDT"}))
        assert frame["error"]["code"] == -2011
        frame = await client.call("openOrderLists.status", ws_signed(acct, {}))
        assert frame["result"] == []


async def test_ws_api_rate_limit_answers_carry_retry_after_as_epoch_ms(venue: BinanceVenue) -> None:
    venue.sim.faults.add(Fault(FaultKind.RATE_LIMIT, endpoint="openOrders.status", retry_after_s=9))
    async with ws_api(venue) as client:
        frame = await client.call("openOrders.status", ws_signed(venue.accounts["acct0"], {}))
    assert frame["status"] == 429
    data = frame["error"]["data"]
    assert data["retryAfter"] - data["serverTime"] == 9000


async def test_ws_api_requests_get_5xx_faults_with_the_cancel_applied_after(
    venue: BinanceVenue,
) -> None:
    acct = venue.accounts["acct0"]
    placed = await venue.place("acct0", "BTCUSDT")
    venue.sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint="order.cancel", count=1))
    async with ws_api(venue) as client:
        params = {"symbol": "BTCUSDT", "orderId": placed["orderId"]}
        frame = await client.call("order.cancel", ws_signed(acct, params))
    assert frame["status"] == 503
    assert not venue.sim.book(venue.sim.accounts["acct0"]).open_orders()


async def test_a_ws_api_stall_leaves_the_request_unanswered(venue: BinanceVenue) -> None:
    venue.sim.faults.add(Fault(FaultKind.STALL, endpoint="time", stall_s=5.0, count=1))
    async with ws_api(venue) as client:
        with pytest.raises(TimeoutError):
            await client.call("time", timeout_s=0.3)
        frame = await client.call("time")
        assert frame["status"] == 200


# -- stream faults and connection rules -----------------------------------------------------
async def test_the_server_pings_and_drops_a_client_that_never_pongs() -> None:
    async with binance_venue(1, ping_interval_s=0.05) as venue:
        async with ws_api(venue, autoping=False) as client:
            await asyncio.wait_for(client.closed.wait(), 10)
            assert client.pings >= 2
        assert venue.sim.counters["ws closed no pong"] == 1


async def test_a_connection_is_closed_at_its_maximum_age() -> None:
    async with binance_venue(1, ping_interval_s=0.05, max_connection_s=0.1) as venue:
        async with ws_api(venue) as client:
            await asyncio.wait_for(client.closed.wait(), 10)
        assert venue.sim.counters["ws closed max age"] == 1


async def subscribed(venue: BinanceVenue, client: Any, name: str = "acct0") -> None:
    frame = await client.call(
        "userDataStream.subscribe.signature", ws_signed(venue.accounts[name], {})
    )
    assert frame["status"] == 200


async def test_a_ws_drop_fault_closes_the_accounts_connections(venue: BinanceVenue) -> None:
    async with ws_api(venue) as mine, ws_api(venue) as other:
        await subscribed(venue, mine)
        await subscribed(venue, other, "acct1")
        venue.sim.faults.add(fault := Fault(FaultKind.WS_DROP, account="acct0", count=1))
        venue.sim.on_fault(fault)
        await asyncio.wait_for(mine.closed.wait(), 5)
        assert not other.closed.is_set()
        assert (await other.call("time"))["status"] == 200


async def test_a_silent_stream_answers_requests_but_delivers_no_events(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        await subscribed(venue, client)
        venue.sim.faults.add(silent := Fault(FaultKind.WS_SILENT, account="acct0"))
        await venue.place("acct0", "BTCUSDT")
        assert (await client.call("time"))["status"] == 200
        assert client.events.empty()
        assert venue.sim.counters["ws events silenced"] == 1
        venue.sim.faults.remove(silent.id)
        await venue.place("acct0", "BTCUSDT")
        assert (await client.event())["event"]["e"] == "executionReport"


async def test_server_shutdown_sends_the_event_then_closes(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        await subscribed(venue, client)
        venue.sim.on_fault(Fault(FaultKind.SERVER_SHUTDOWN))
        event = await client.event()
        assert event["event"]["e"] == "serverShutdown"
        assert "subscriptionId" not in event
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_listen_key_expiry_terminates_the_accounts_subscriptions(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        await subscribed(venue, client)
        await subscribed(venue, client, "acct1")
        venue.sim.on_fault(Fault(FaultKind.LISTEN_KEY_EXPIRY, account="acct1"))
        event = await client.event()
        assert event == {
            "subscriptionId": 1,
            "event": {"e": "eventStreamTerminated", "E": event["event"]["E"]},
        }
        assert (await client.call("session.subscriptions"))["result"] == [{"subscriptionId": 0}]


async def test_stream_faults_can_be_set_through_the_admin_api(venue: BinanceVenue) -> None:
    async with ws_api(venue) as client:
        await subscribed(venue, client)
        async with venue.http.post(
            f"{venue.sim.base_url}/_sim/faults", json={"kind": "ws_drop", "count": 1}
        ) as resp:
            assert resp.status == 200
        await asyncio.wait_for(client.closed.wait(), 5)
    await eventually(lambda: not venue.sim.conns)


async def test_an_ed25519_account_may_hold_its_public_key_as_pem() -> None:
    acct = make_account(0, "ed25519")
    assert acct.private_key is not None
    pem = (
        acct.private_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    sim_account = SimAccount(name="acct0", api_key=acct.api_key, secret=pem, key_type="ed25519")
    sim = BinanceSim(VenueSettings(accounts=[sim_account]))
    async with running(sim), aiohttp.ClientSession() as http:
        venue = BinanceVenue(sim, {"acct0": acct}, http)
        status, _, body = await venue.rest("acct0", "GET", "/api/v3/openOrders")
        assert (status, body) == (200, [])


async def test_orders_and_oco_lists_can_be_placed_over_the_ws_api(venue: BinanceVenue) -> None:
    acct = venue.accounts["acct0"]
    async with ws_api(venue) as client:
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
        order |= {"quantity": "1", "price": "10", "newClientOrderId": "ws-1"}
        frame = await client.call("order.place", ws_signed(acct, order))
        assert frame["status"] == 200, frame
        assert frame["result"]["clientOrderId"] == "ws-1"
        assert [r["rateLimitType"] for r in frame["rateLimits"]] == [
            "ORDERS",
            "ORDERS",
            "REQUEST_WEIGHT",
        ]
        frame = await client.call("order.place", ws_signed(acct, order))
        assert frame["error"] == {"code": -2010, "msg": "Duplicate order sent."}
        oco = {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1"}
        oco |= {"aboveType": "LIMIT_MAKER", "abovePrice": "20"}
        oco |= {"belowType": "STOP_LOSS", "belowStopPrice": "5"}
        frame = await client.call("orderList.place.oco", ws_signed(acct, oco))
        assert frame["status"] == 200, frame
        assert len(frame["result"]["orders"]) == 2
        frame = await client.call("userDataStream.start", {"apiKey": acct.api_key})
        assert frame["error"] == {"code": -1016, "msg": "This service is no longer available."}
    book = venue.sim.book(venue.sim.accounts["acct0"])
    assert (len(book.open_orders()), len(book.open_lists())) == (3, 1)


async def test_too_many_new_orders_answer_1015_with_order_count_headers() -> None:
    async with binance_venue(1, rate_limit_scale=0.02) as venue:  # 1 order per 10 s
        params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
        params |= {"quantity": "1", "price": "1"}
        for _ in range(3):  # a 10 s window may turn between two requests: try again then
            status, headers, _ = await venue.rest("acct0", "POST", "/api/v3/order", params)
            assert status == 200
            assert headers["X-MBX-ORDER-COUNT-10S"] == "1"
            status, _, body = await venue.rest("acct0", "POST", "/api/v3/order", params)
            if status == 429:
                break
        assert (status, body) == (
            429,
            {"code": -1015, "msg": "Too many new orders; current limit is 1 orders per 10 SECOND."},
        )


async def test_a_banned_client_gets_418_on_the_ws_api_and_is_disconnected(
    venue: BinanceVenue,
) -> None:
    acct = venue.accounts["acct0"]
    tracker = BanTracker()
    tracker.banned_until = time.monotonic() + 300
    venue.sim.bans[acct.api_key] = tracker
    async with ws_api(venue) as client:
        frame = await client.call("openOrders.status", ws_signed(acct, {}))
        assert frame["status"] == 418
        assert (
            frame["error"]["data"]["retryAfter"] - frame["error"]["data"]["serverTime"] >= 299_000
        )
        await asyncio.wait_for(client.closed.wait(), 5)
