"""The BingX simulator over plain HTTP and websockets, as a third-party client sees it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from killswitch.sim.bingx import BingxSim
from tests.conftest import eventually
from tests.fixtures.bingx import ACCOUNT_KEYS, bingx_venue, bx_call, bx_signed_query, oco_params
from tests.fixtures.sim import admin

SPOT = "/openApi/spot/v1"
ORDER = f"{SPOT}/trade/order"
CANCEL = f"{SPOT}/trade/cancel"
CANCEL_ORDERS = f"{SPOT}/trade/cancelOrders"
CANCEL_OPEN = f"{SPOT}/trade/cancelOpenOrders"
CANCEL_AFTER = f"{SPOT}/trade/cancelAllAfter"
OPEN_ORDERS = f"{SPOT}/trade/openOrders"
QUERY = f"{SPOT}/trade/query"
OCO_ORDER = f"{SPOT}/oco/order"
OCO_CANCEL = f"{SPOT}/oco/cancel"
OCO_OPEN = f"{SPOT}/oco/openOrderList"
OCO_LIST = f"{SPOT}/oco/orderList"
LISTEN_KEY = "/openApi/user/auth/userDataStream"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def place(
    session: aiohttp.ClientSession, sim: BingxSim, symbol: str = "BTC-USDT", **kw: str
) -> dict[str, Any]:
    params = {"symbol": symbol, "side": "BUY", "type": "LIMIT", "price": "100", "quantity": "1"}
    status, _, body = await bx_call(session, sim, "POST", ORDER, {**params, **kw})
    assert status == 200, body
    assert body["code"] == 0, body
    return body["data"]  # type: ignore[no-any-return]


async def place_oco(session: aiohttp.ClientSession, sim: BingxSim, **kw: str) -> list[Any]:
    status, _, body = await bx_call(session, sim, "POST", OCO_ORDER, oco_params(**kw))
    assert (status, body["code"]) == (200, 0), body
    return body["data"]  # type: ignore[no-any-return]


# -- REST bodies ------------------------------------------------------------------------------


async def test_place_order_answers_the_envelope_with_a_19_digit_numeric_order_id(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        api_key, secret = ACCOUNT_KEYS["bx0"]
        query = bx_signed_query(
            secret,
            {
                "symbol": "BTC-USDT",
                "side": "BUY",
                "type": "LIMIT",
                "price": "100.5",
                "quantity": "0.25",
                "newClientOrderId": "strat7_1",
            },
        )
        async with session.post(
            f"{sim.base_url}{ORDER}?{query}", headers={"X-BX-APIKEY": api_key}
        ) as resp:
            raw = await resp.read()
        body = orjson.loads(raw)
        assert (body["code"], body["msg"], body["debugMsg"]) == (0, "", "")
        data = body["data"]
        order_id = data["orderId"]
        assert isinstance(order_id, int)
        assert len(str(order_id)) == 19
        assert order_id > 2**53  # a double would round it
        assert f'"orderId":{order_id}'.encode() in raw  # a JSON number, not a string
        assert data == {
            "symbol": "BTC-USDT",
            "orderId": order_id,
            "transactTime": data["transactTime"],
            "price": "100.5",
            "stopPrice": "0",
            "origQty": "0.25",
            "executedQty": "0",
            "cummulativeQuoteQty": "0",
            "status": "NEW",
            "type": "LIMIT",
            "side": "BUY",
            "time": data["time"],
            "updateTime": data["updateTime"],
            "origQuoteOrderQty": "0",
            "clientOrderID": "strat7_1",
        }


async def test_place_order_refuses_bad_parameters_with_100400(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        cases = [
            {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "price": "1", "quantity": "1"},
            {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "quantity": "1"},
            {"symbol": "BTC-USDT", "side": "HOLD", "type": "LIMIT", "price": "1", "quantity": "1"},
            {"symbol": "BTC-USDT", "side": "BUY", "type": "LIMIT", "price": "1"},
        ]
        msgs = []
        for params in cases:
            status, _, body = await bx_call(session, sim, "POST", ORDER, params)
            assert (status, body["code"]) == (200, 100400)
            msgs.append(body["msg"])
        assert msgs[0] == "invalid symbol, send symbol like BTC-USDT"
        assert msgs[1] == "price can't be lte 0 in limit order"
        assert msgs[3] == "quantity/quoteOrderQty can't both be lte 0 in limit order"


async def test_trigger_orders_are_pending_and_market_orders_fill_at_once(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        stop = await place(session, sim, type="TAKE_STOP_LIMIT", stopPrice="90")
        market = await place(session, sim, type="MARKET")
        assert stop["status"] == "PENDING"
        assert market["status"] == "FILLED"
        _, _, body = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert [o["orderId"] for o in body["data"]["orders"]] == [stop["orderId"]]


async def test_open_orders_with_and_without_symbol(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        a = await place(session, sim, "BTC-USDT")
        b = await place(session, sim, "ETH-USDT")
        _, _, every = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        _, _, one = await bx_call(session, sim, "GET", OPEN_ORDERS, {"symbol": "ETH-USDT"})
        assert [o["orderId"] for o in every["data"]["orders"]] == [a["orderId"], b["orderId"]]
        assert [o["orderId"] for o in one["data"]["orders"]] == [b["orderId"]]
        assert set(one["data"]["orders"][0]) >= {
            "symbol",
            "orderId",
            "price",
            "stopPrice",
            "origQty",
            "executedQty",
            "cummulativeQuoteQty",
            "status",
            "type",
            "side",
            "time",
            "updateTime",
            "origQuoteOrderQty",
        }


async def test_query_finds_open_and_closed_orders_and_80016_for_unknown(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        oid = str(order["orderId"])
        await bx_call(session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": oid})
        _, _, found = await bx_call(
            session, sim, "GET", QUERY, {"symbol": "BTC-USDT", "orderId": oid}
        )
        _, _, unknown = await bx_call(
            session, sim, "GET", QUERY, {"symbol": "BTC-USDT", "orderId": "123"}
        )
        assert (found["data"]["status"], found["data"]["orderId"]) == ("CANCELED", order["orderId"])
        assert (unknown["code"], unknown["msg"]) == (80016, "order not exist")


async def test_cancel_answers_the_cancelled_order_then_80016_the_second_time(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim, newClientOrderId="c1")
        params = {"symbol": "BTC-USDT", "clientOrderID": "c1"}
        _, _, first = await bx_call(session, sim, "POST", CANCEL, params)
        _, _, second = await bx_call(session, sim, "POST", CANCEL, params)
        assert first["code"] == 0
        assert (first["data"]["orderId"], first["data"]["status"]) == (
            order["orderId"],
            "CANCELED",
        )
        assert (second["code"], second["msg"]) == (80016, "order not exist")


async def test_cancel_of_a_filled_order_answers_80018(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        await admin(session, sim, "POST", "fill", {"account": "bx0", "order_id": order["orderId"]})
        _, _, body = await bx_call(
            session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": str(order["orderId"])}
        )
        assert (body["code"], body["msg"]) == (80018, "order already filled")


async def test_docs_table_style_answers_the_spot_error_table_codes(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(gone_style="docs_table") as (sim, _):
        order = await place(session, sim)
        params = {"symbol": "BTC-USDT", "orderId": str(order["orderId"])}
        await bx_call(session, sim, "POST", CANCEL, params)
        _, _, closed = await bx_call(session, sim, "POST", CANCEL, params)
        _, _, unknown = await bx_call(
            session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": "42"}
        )
        assert closed["code"] == 100400
        assert "FILLED or CANCELLED already" in closed["msg"]
        assert (unknown["code"], unknown["msg"]) == (100421, "cancel fail, order not exist")


async def test_cancel_restrictions_are_checked(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        base = {"symbol": "BTC-USDT", "orderId": str(order["orderId"])}
        _, _, bad = await bx_call(session, sim, "POST", CANCEL, {**base, "cancelRestrictions": "X"})
        _, _, unmet = await bx_call(
            session, sim, "POST", CANCEL, {**base, "cancelRestrictions": "PARTIALLY_FILLED"}
        )
        _, _, met = await bx_call(
            session, sim, "POST", CANCEL, {**base, "cancelRestrictions": "NEW"}
        )
        assert bad["code"] == unmet["code"] == 100400
        assert met["code"] == 0


async def test_batch_cancel_process_0_fails_all_and_process_1_lists_fails(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        a = await place(session, sim)
        b = await place(session, sim)
        await bx_call(
            session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": str(a["orderId"])}
        )
        ids = f"{a['orderId']},{b['orderId']},77"
        _, _, all_or_nothing = await bx_call(
            session, sim, "POST", CANCEL_ORDERS, {"symbol": "BTC-USDT", "orderIds": ids}
        )
        assert all_or_nothing["code"] == 100400
        assert len(sim.book(sim.accounts["bx0"]).orders) == 1  # b is still open
        _, _, partial = await bx_call(
            session,
            sim,
            "POST",
            CANCEL_ORDERS,
            {"symbol": "BTC-USDT", "orderIds": ids, "process": "1"},
        )
        assert partial["code"] == 0
        assert [o["orderId"] for o in partial["data"]["orders"]] == [b["orderId"]]
        assert partial["data"]["fails"] == [
            {
                "orderId": str(a["orderId"]),
                "error": "cancel order fail, order status :CANCELED,can not delete",
            },
            {"orderId": "77", "error": "cancel order fail, order not exist"},
        ]


async def test_cancel_open_orders_without_symbol_cancels_every_symbol_but_not_oco_legs(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        await place(session, sim, "BTC-USDT")
        await place(session, sim, "SOL-USDT")
        legs = await place_oco(session, sim)
        _, _, body = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
        assert body["code"] == 0
        assert {o["symbol"] for o in body["data"]["orders"]} == {"BTC-USDT", "SOL-USDT"}
        book = sim.book(sim.accounts["bx0"])
        assert set(book.orders) == {leg["orderId"] for leg in legs}
        _, _, again = await bx_call(session, sim, "POST", CANCEL_OPEN, {"symbol": "BTC-USDT"})
        assert (again["code"], again["data"]) == (0, {"orders": []})


async def test_cancel_open_orders_can_be_configured_to_take_oco_legs_too(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(cancel_all_covers_oco=True) as (sim, _):
        await place_oco(session, sim)
        _, _, body = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
        assert len(body["data"]["orders"]) == 2
        assert not sim.book(sim.accounts["bx0"]).lists


async def test_oco_lists_are_listed_in_pages_and_cancelled_by_either_leg(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(limits="docs_v3") as (sim, _):  # more reads a second than strict
        first = await place_oco(session, sim, listClientOrderId="11", belowClientOrderId="12")
        second = await place_oco(session, sim)
        assert [leg["orderType"] for leg in first] == ["ocoLimit", "ocoTps"]
        assert first[0]["orderListId"] == first[1]["orderListId"]
        _, _, missing = await bx_call(session, sim, "GET", OCO_OPEN, {"pageIndex": "1"})
        assert missing["code"] == 100400
        pages = []
        for page in ("1", "2", "3"):
            _, _, body = await bx_call(
                session, sim, "GET", OCO_OPEN, {"pageIndex": page, "pageSize": "3"}
            )
            pages.append([leg["orderId"] for leg in body["data"]])
        assert pages == [
            [first[0]["orderId"], first[1]["orderId"], second[0]["orderId"]],
            [second[1]["orderId"]],
            [],
        ]
        _, _, by_list = await bx_call(
            session, sim, "GET", OCO_LIST, {"orderListId": first[0]["orderListId"]}
        )
        assert [leg["clientOrderId"] for leg in by_list["data"]] == [
            first[0]["clientOrderId"],
            "12",
        ]
        _, _, cancelled = await bx_call(session, sim, "POST", OCO_CANCEL, {"clientOrderId": "12"})
        assert cancelled["data"] == {"orderId": first[1]["orderId"], "clientOrderId": "12"}
        _, _, again = await bx_call(
            session, sim, "POST", OCO_CANCEL, {"orderId": first[0]["orderId"]}
        )
        assert again["code"] == 80016
        assert set(sim.book(sim.accounts["bx0"]).orders) == {leg["orderId"] for leg in second}


async def test_oco_client_ids_must_be_numeric(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        status, _, body = await bx_call(
            session,
            sim,
            "POST",
            OCO_ORDER,
            oco_params(listClientOrderId="abc"),
        )
        assert (status, body["code"]) == (200, 100400)


async def test_server_time_on_both_documented_paths_and_the_symbol_listing(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(symbols=["BTC-USDT", "PEPE-USDT"]) as (sim, _):
        before = int(time.time() * 1000)
        times = []
        for path in (f"{SPOT}/server/time", "/openApi/swap/v2/server/time"):
            async with session.get(f"{sim.base_url}{path}") as resp:
                body = await resp.json()
            assert (body["code"], body["msg"]) == (0, "")
            times.append(body["data"]["serverTime"])
        assert all(t >= before for t in times)
        async with session.get(f"{sim.base_url}{SPOT}/common/symbols") as resp:
            body = await resp.json()
        listed = {s["symbol"]: s for s in body["data"]["symbols"]}
        assert set(listed) == {"BTC-USDT", "PEPE-USDT"}
        assert listed["PEPE-USDT"]["status"] == 1


# -- authentication ---------------------------------------------------------------------------


async def test_a_bad_signature_answers_100001_and_is_counted(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        query = bx_signed_query("not-the-secret", {"symbol": "BTC-USDT"})
        status, _, body = await bx_call(session, sim, "GET", OPEN_ORDERS, query=query)
        assert (status, body["code"], body["msg"]) == (401, 100001, "Signature verification failed")
        assert sim.counters["signature_failures"] == 1


async def test_a_missing_signature_answers_100412(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        query = f"symbol=BTC-USDT&timestamp={int(time.time() * 1000)}"
        _, _, body = await bx_call(session, sim, "GET", OPEN_ORDERS, query=query)
        assert (body["code"], body["msg"]) == (100412, "Null signature")


async def test_an_unknown_or_missing_api_key_answers_100413(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        query = bx_signed_query("bx-secret-0", {})
        url = f"{sim.base_url}{OPEN_ORDERS}?{query}"
        async with session.get(url, headers={"X-BX-APIKEY": "nobody"}) as resp:
            wrong = await resp.json()
        async with session.get(url) as resp:
            missing = await resp.json()
        assert (wrong["code"], wrong["msg"]) == (100413, "Incorrect apiKey")
        assert (missing["code"], missing["msg"]) == (100413, "Null apiKey")


async def test_the_signature_covers_url_decoded_values(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        a = await place(session, sim)
        b = await place(session, sim)
        api_key, secret = ACCOUNT_KEYS["bx0"]
        ts = str(int(time.time() * 1000))
        ids = f"{a['orderId']},{b['orderId']}"
        # Unsorted on purpose: BingX signs the parameters in the order they are sent.
        signed = f"symbol=BTC-USDT&orderIds={ids}&process=1&timestamp={ts}"
        sig = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        sent = signed.replace(",", "%2C")
        _, _, body = await bx_call(
            session, sim, "POST", CANCEL_ORDERS, query=f"{sent}&signature={sig}"
        )
        assert body["code"] == 0, body
        assert len(body["data"]["orders"]) == 2
        del api_key


async def test_a_json_body_is_signed_with_its_keys_sorted(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        api_key, secret = ACCOUNT_KEYS["bx0"]
        fields = {
            "symbol": "BTC-USDT",
            "orderId": order["orderId"],
            "timestamp": int(time.time() * 1000),
        }
        payload = "&".join(f"{k}={v}" for k, v in sorted(fields.items()))
        sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        async with session.post(
            f"{sim.base_url}{CANCEL}",
            json={**fields, "signature": sig},
            headers={"X-BX-APIKEY": api_key},
        ) as resp:
            body = await resp.json()
        assert (body["code"], body["data"]["status"]) == (0, "CANCELED")


@pytest.mark.parametrize("offset_ms", [-6000, 6000])
async def test_a_timestamp_more_than_5s_off_either_way_answers_100421(
    session: aiohttp.ClientSession, offset_ms: int
) -> None:
    async with bingx_venue() as (sim, _):
        _, secret = ACCOUNT_KEYS["bx0"]
        stamp = int(time.time() * 1000) + offset_ms
        query = bx_signed_query(secret, {}, timestamp_ms=stamp)
        _, _, body = await bx_call(session, sim, "GET", OPEN_ORDERS, query=query)
        assert (body["code"], body["msg"]) == (100421, "Null timestamp or timestamp mismatch")
        widened = bx_signed_query(secret, {"recvWindow": "20000"}, timestamp_ms=stamp)
        _, _, ok = await bx_call(session, sim, "GET", OPEN_ORDERS, query=widened)
        assert ok["code"] == 0


async def test_a_clock_skew_fault_moves_server_time_and_rejects_local_timestamps(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        await admin(session, sim, "POST", "faults", {"kind": "clock_skew", "skew_ms": 30_000})
        _, _, body = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        async with session.get(f"{sim.base_url}{SPOT}/server/time") as resp:
            server = (await resp.json())["data"]["serverTime"]
        assert body["code"] == 100421
        assert server - int(time.time() * 1000) > 25_000


# -- rate limits ------------------------------------------------------------------------------


async def test_success_carries_the_remaining_budget_headers(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        _, headers, _ = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert int(headers["X-RateLimit-Requests-Remain"]) in range(10)
        assert 0 <= int(headers["X-RateLimit-Requests-Expire"]) <= 1000


async def test_exceeding_the_per_api_limit_gives_429_then_418_for_a_client_that_keeps_going(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(rate_limit_scale=0.2) as (sim, _):  # cancel: 2 per second
        statuses: list[int] = []
        last: tuple[int, dict[str, str], Any] = (0, {}, None)
        for _ in range(8):
            last = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
            statuses.append(last[0])
            if last[0] == 418:
                break
        first_429 = statuses.index(429)
        assert 200 in statuses[:first_429]
        assert statuses[-1] == 418
        _, headers, body = last
        assert body["code"] == 100410
        assert "Retry-After" not in headers  # BingX sends none (§3.5)
        unblock_ms = int(body["msg"].rsplit(" ", 1)[-1])
        assert unblock_ms - time.time() * 1000 >= 110_000
        assert sim.counters["http 429"] >= 1
        assert sim.counters["http 418"] == 1
        # Another API of the same account is limited on its own.
        other, _, _ = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert other == 200


async def test_the_429_names_when_the_api_is_unblocked(session: aiohttp.ClientSession) -> None:
    async with bingx_venue(rate_limit_scale=0.1, rate_limit_penalty_s=7) as (sim, _):
        for _ in range(3):
            status, headers, body = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
            if status == 429:
                break
        assert status == 429
        assert "Retry-After" not in headers
        # Disabled until the window ends, plus the penalty: 7 to 8 s from now.
        unblock_ms = int(body["msg"].rsplit(" ", 1)[-1])
        assert 6_000 <= unblock_ms - time.time() * 1000 <= 9_000
        assert sim.counters["100410 earned /openApi/spot/v1/trade/cancelOpenOrders"] == 1


@pytest.mark.parametrize("form", ["epoch", "plain"])
async def test_the_100410_form_is_a_switch_and_never_has_a_retry_after(
    session: aiohttp.ClientSession, form: str
) -> None:
    async with bingx_venue(throttle_form=form, rate_limit_scale=0.1) as (sim, _):
        for _ in range(3):
            status, headers, body = await bx_call(session, sim, "POST", CANCEL_OPEN, {})
            if status == 429:
                break
        assert (status, body["code"]) == (429, 100410)
        assert "Retry-After" not in headers
        if form == "plain":
            assert body["msg"] == "rate limited"
        else:
            assert body["msg"].startswith("code:100410:The endpoint trigger frequency limit")


async def test_more_than_20_errors_on_one_api_lock_it_until_the_named_time(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(limits="docs_v3", error_lock_count=3, error_lock_window_s=2.0) as (
        sim,
        _,
    ):
        gone = {"symbol": "BTC-USDT", "orderId": "1976495057808000001"}
        codes = [(await bx_call(session, sim, "POST", CANCEL, gone))[2]["code"] for _ in range(5)]
        assert codes == [80016, 80016, 80016, 80016, 100410]
        _, _, body = await bx_call(session, sim, "POST", CANCEL, gone)
        assert body["msg"].startswith("over 3 error code:80016 requests within 2000 ms")
        retry_ms = int(body["msg"].rsplit(" ", 1)[-1])
        assert 0 < retry_ms - time.time() * 1000 <= 2_100
        # Another API of the same account is not locked.
        status, _, other = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert (status, other["code"]) == (200, 0)
        assert sim.counters["100410 lock /openApi/spot/v1/trade/cancel"] == 2


# -- faults -----------------------------------------------------------------------------------


async def test_error_after_applies_the_cancel_then_answers_5xx(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "error_after", "endpoint": CANCEL, "http_status": 504, "count": 1},
        )
        status, _, body = await bx_call(
            session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": str(order["orderId"])}
        )
        assert (status, body["code"]) == (504, 101500)
        assert not sim.book(sim.accounts["bx0"]).orders


async def test_error_before_answers_5xx_without_applying(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        order = await place(session, sim)
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "error_before", "endpoint": CANCEL, "http_status": 503, "count": 1},
        )
        status, _, body = await bx_call(
            session, sim, "POST", CANCEL, {"symbol": "BTC-USDT", "orderId": str(order["orderId"])}
        )
        assert (status, body["code"], body["msg"]) == (503, 100503, "Server busy")
        assert len(sim.book(sim.accounts["bx0"]).orders) == 1


async def test_a_429_storm_answers_retry_after_from_the_fault(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        await admin(
            session,
            sim,
            "POST",
            "faults",
            {"kind": "rate_limit", "endpoint": OPEN_ORDERS, "retry_after_s": 3, "count": 1},
        )
        status, headers, body = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert (status, body["code"]) == (429, 100410)
        assert "Retry-After" not in headers
        unblock_ms = int(body["msg"].rsplit(" ", 1)[-1])
        assert 2_000 <= unblock_ms - time.time() * 1000 <= 3_100


async def test_a_stall_holds_the_request_past_a_client_timeout(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        await admin(
            session, sim, "POST", "faults", {"kind": "stall", "endpoint": OPEN_ORDERS, "stall_s": 5}
        )
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await bx_call(session, sim, "GET", OPEN_ORDERS, {})


async def test_latency_delays_answers_past_a_short_client_timeout(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        await admin(session, sim, "POST", "faults", {"kind": "latency", "latency_ms": 2000})
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        await admin(session, sim, "DELETE", "faults")
        status, _, _ = await bx_call(session, sim, "GET", OPEN_ORDERS, {})
        assert status == 200


# -- dead man's switch ------------------------------------------------------------------------


async def test_cancel_all_after_activates_extends_and_closes(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(limits="docs_v3") as (sim, _):  # strict: 1 a second
        _, _, on = await bx_call(
            session, sim, "POST", CANCEL_AFTER, {"type": "ACTIVATE", "timeOut": "10"}
        )
        assert on["data"]["status"] == "ACTIVATED"
        assert 9 <= on["data"]["triggerTime"] - time.time() <= 11
        _, _, later = await bx_call(
            session, sim, "POST", CANCEL_AFTER, {"type": "ACTIVATE", "timeOut": "120"}
        )
        assert later["data"]["triggerTime"] - on["data"]["triggerTime"] >= 100
        _, _, off = await bx_call(session, sim, "POST", CANCEL_AFTER, {"type": "CLOSE"})
        assert off["data"]["status"] == "CLOSED"
        assert not sim.dead_mans_switch_armed("bx0")
        _, _, bad = await bx_call(
            session, sim, "POST", CANCEL_AFTER, {"type": "ACTIVATE", "timeOut": "5"}
        )
        assert bad["code"] == 100400


async def test_cancel_all_after_fires_and_cancels_everything_with_events_on_the_stream(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(dead_mans_switch_time_scale=0.02, dead_mans_switch_batch=2) as (
        sim,
        _,
    ):
        for _ in range(5):
            await place(session, sim)
        await place_oco(session, sim)
        async with stream(session, sim) as (_, frames):
            await bx_call(session, sim, "POST", CANCEL_AFTER, {"type": "ACTIVATE", "timeOut": "10"})
            cancelled = set()
            while len(cancelled) < 7:
                msg = await frames.get()
                if msg.get("dataType") == "spot.executionReport" and msg["data"]["X"] == "CANCELED":
                    cancelled.add(msg["data"]["i"])
        assert not sim.book(sim.accounts["bx0"]).orders
        assert sim.counters["dead_mans_switch fired"] == 1


async def test_cancel_all_after_is_refused_while_a_fired_switch_is_still_cancelling(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(limits="docs_v3") as (sim, _):
        sim._dms["bx0"].firing = True  # the moment between firing and the last batch
        _, _, body = await bx_call(
            session, sim, "POST", CANCEL_AFTER, {"type": "ACTIVATE", "timeOut": "10"}
        )
        _, _, close = await bx_call(session, sim, "POST", CANCEL_AFTER, {"type": "CLOSE"})
        assert body["code"] == close["code"] == 0
        assert body["data"]["status"] == close["data"]["status"] == "FAILED"
        assert not sim.dead_mans_switch_armed("bx0")


# -- the user-data stream ---------------------------------------------------------------------


async def listen_key(session: aiohttp.ClientSession, sim: BingxSim, account: str = "bx0") -> str:
    api_key, _ = ACCOUNT_KEYS[account]
    async with session.post(
        f"{sim.base_url}{LISTEN_KEY}", headers={"X-BX-APIKEY": api_key}
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["listenKey"])


class stream:
    """A raw `/market` connection: subscribed, pongs answered, decoded frames in a queue."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        sim: BingxSim,
        *,
        account: str = "bx0",
        answer_pings: bool = True,
        subscribe: bool = True,
    ) -> None:
        self.session, self.sim, self.account = session, sim, account
        self.answer_pings, self.subscribe = answer_pings, subscribe
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.raw: list[bytes] = []
        self.closed = asyncio.Event()

    async def __aenter__(self) -> tuple[aiohttp.ClientWebSocketResponse, asyncio.Queue[Any]]:
        key = await listen_key(self.session, self.sim, self.account)
        self.ws = await self.session.ws_connect(f"{self.sim.ws_url}/market?listenKey={key}")
        self.reader = asyncio.ensure_future(self._read())
        if self.subscribe:
            await self.ws.send_str(
                '{"id":"sub-1","reqType":"sub","dataType":"spot.executionReport"}'
            )
            ack = await self.frames.get()
            assert ack["id"] == "sub-1"
        return self.ws, self.frames

    async def _read(self) -> None:
        async for msg in self.ws:
            assert msg.type is aiohttp.WSMsgType.BINARY
            self.raw.append(msg.data)
            decoded = orjson.loads(gzip.decompress(msg.data))
            if "ping" in decoded:
                if self.answer_pings:
                    await self.ws.send_str(
                        orjson.dumps({"pong": decoded["ping"], "time": decoded["time"]}).decode()
                    )
                else:
                    self.frames.put_nowait(decoded)
                continue
            self.frames.put_nowait(decoded)
        self.closed.set()

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await asyncio.wait([self.reader])


async def test_listen_key_create_extend_delete_and_404_for_unknown(
    session: aiohttp.ClientSession,
) -> None:
    # Five listenKey calls in a row: over the strict 2/s per IP (review 30), so under docs-v3's.
    async with bingx_venue(limits="docs_v3") as (sim, _):
        key = await listen_key(session, sim)
        assert len(key) >= 32
        url = f"{sim.base_url}{LISTEN_KEY}"
        async with session.put(url, params={"listenKey": key}) as resp:
            assert resp.status == 200
        async with session.put(url) as resp:
            assert resp.status == 204
        async with session.delete(url, params={"listenKey": key}) as resp:
            assert resp.status == 200
        async with session.put(url, params={"listenKey": key}) as resp:
            assert resp.status == 404
        async with session.get(f"{sim.ws_url}/market?listenKey={key}") as resp:
            assert resp.status == 404


async def test_every_frame_is_gzip_and_the_subscription_is_acked(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        key = await listen_key(session, sim)
        async with session.ws_connect(f"{sim.ws_url}/market?listenKey={key}") as ws:
            await ws.send_str('{"id":"abc","reqType":"sub","dataType":"spot.executionReport"}')
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY
            assert msg.data[:2] == b"\x1f\x8b"  # the gzip magic
            ack = orjson.loads(gzip.decompress(msg.data))
            assert ack["code"] == 0
            assert (ack["id"], ack["msg"]) == ("abc", "SUCCESS")
            assert isinstance(ack["timestamp"], int)


async def test_an_order_placed_over_rest_arrives_as_an_execution_report_and_so_does_its_cancel(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        async with stream(session, sim) as (_, frames):
            order = await place(session, sim, newClientOrderId="bot_1")
            new = await frames.get()
            await bx_call(
                session,
                sim,
                "POST",
                CANCEL,
                {"symbol": "BTC-USDT", "orderId": str(order["orderId"])},
            )
            gone = await frames.get()
        assert (new["code"], new["dataType"]) == (0, "spot.executionReport")
        data = new["data"]
        assert {k: data[k] for k in ("e", "s", "S", "o", "q", "p", "x", "X", "i", "C")} == {
            "e": "executionReport",
            "s": "BTC-USDT",
            "S": "BUY",
            "o": "LIMIT",
            "q": 1,
            "p": 100,
            "x": "NEW",
            "X": "NEW",
            "i": order["orderId"],
            "C": "bot_1",
        }
        assert {"E", "l", "z", "L", "n", "N", "T", "t", "O", "Z", "Y", "Q"} <= set(data)
        assert (gone["data"]["x"], gone["data"]["X"], gone["data"]["i"]) == (
            "CANCELED",
            "CANCELED",
            order["orderId"],
        )


async def test_fills_and_admin_seeds_appear_on_the_stream_too(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        async with stream(session, sim) as (_, frames):
            await admin(
                session,
                sim,
                "POST",
                "seed",
                {
                    "account": "bx0",
                    "orders": [{"symbol": "XRP-USDT", "price": "2", "quantity": "4"}],
                },
            )
            seeded = await frames.get()
            order_id = seeded["data"]["i"]
            await admin(
                session,
                sim,
                "POST",
                "fill",
                {"account": "bx0", "order_id": order_id, "quantity": "1"},
            )
            partial = await frames.get()
        assert seeded["data"]["X"] == "NEW"
        assert (partial["data"]["x"], partial["data"]["X"], partial["data"]["l"]) == (
            "TRADE",
            "PARTIALLY_FILLED",
            1,
        )


async def test_the_server_pings_and_drops_a_client_that_never_pongs(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(ping_interval_s=0.05, max_missed_pongs=2) as (sim, _):
        conn = stream(session, sim, answer_pings=False)
        async with conn as (_, frames):
            ping = await frames.get()
            await asyncio.wait_for(conn.closed.wait(), 10)
        assert set(ping) == {"ping", "time"}
        assert ping["time"].endswith("+0800")
        assert sim.counters["streams dropped for missed pongs"] == 1


async def test_a_client_that_answers_pings_stays_connected(session: aiohttp.ClientSession) -> None:
    async with bingx_venue(ping_interval_s=0.05, max_missed_pongs=4) as (sim, _):
        conn = stream(session, sim)
        async with conn:
            await eventually(lambda: sim.counters["stream pongs"] >= 10)
            assert not conn.closed.is_set()
        assert sim.counters["streams dropped for missed pongs"] == 0


async def test_ws_drop_closes_the_stream(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        conn = stream(session, sim)
        async with conn:
            await admin(session, sim, "POST", "faults", {"kind": "ws_drop", "count": 1})
            await asyncio.wait_for(conn.closed.wait(), 10)
        assert not sim.faults.faults[0].count  # consumed by the drop


async def test_a_silent_stream_keeps_pinging_but_delivers_no_events(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(ping_interval_s=0.02) as (sim, _):
        conn = stream(session, sim)
        async with conn as (_, frames):
            status, fault = await admin(session, sim, "POST", "faults", {"kind": "ws_silent"})
            assert status == 200
            await place(session, sim, newClientOrderId="unseen")
            seen_pings = len(conn.raw)
            await eventually(lambda: len(conn.raw) >= seen_pings + 3)
            await admin(session, sim, "DELETE", f"faults/{fault['id']}")
            await place(session, sim, newClientOrderId="seen")
            first = await frames.get()
            assert not conn.closed.is_set()
        assert first["data"]["C"] == "seen"


async def test_listen_key_expiry_invalidates_keys_and_closes_their_streams(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        conn = stream(session, sim)
        other = stream(session, sim, account="bx1")
        async with conn, other:
            await admin(
                session, sim, "POST", "faults", {"kind": "listen_key_expiry", "account": "bx0"}
            )
            await asyncio.wait_for(conn.closed.wait(), 10)
            assert not other.closed.is_set()
        assert sim.listen_keys("bx0") == []
        assert len(sim.listen_keys("bx1")) == 1


async def test_a_listen_key_left_unextended_expires_and_its_stream_closes(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(ping_interval_s=0.02, listen_key_ttl_s=0.3) as (sim, _):
        conn = stream(session, sim)
        async with conn:
            await asyncio.wait_for(conn.closed.wait(), 10)
        assert sim.listen_keys("bx0") == []


async def test_server_shutdown_closes_streams(session: aiohttp.ClientSession) -> None:
    async with bingx_venue() as (sim, _):
        conn = stream(session, sim)
        async with conn:
            await admin(session, sim, "POST", "faults", {"kind": "server_shutdown", "count": 1})
            await asyncio.wait_for(conn.closed.wait(), 10)


async def test_streams_only_carry_their_own_accounts_orders(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue() as (sim, _):
        async with stream(session, sim, account="bx1") as (_, frames):
            await place(session, sim, newClientOrderId="for_bx0")  # bx0's order
            await bx_call(
                session,
                sim,
                "POST",
                ORDER,
                {
                    "symbol": "BTC-USDT",
                    "side": "SELL",
                    "type": "LIMIT",
                    "price": "1",
                    "quantity": "1",
                    "newClientOrderId": "for_bx1",
                },
                account="bx1",
            )
            first = await frames.get()
        assert first["data"]["C"] == "for_bx1"


# -- behaviour switches: the sim TOML and the admin API ---------------------------------------


async def test_a_variant_and_single_switches_come_from_the_sim_toml() -> None:
    from killswitch.sim.bingx import VARIANTS
    from killswitch.sim.server import SimCluster

    toml = """
[venues.bingx]
[venues.bingx.options]
variant = "strictest"
heartbeat = "json"
[[venues.bingx.accounts]]
name = "a"
api_key = "k"
secret = "s"
"""
    cluster = SimCluster.from_toml(toml, "<test>")
    sim = cluster.venues["bingx"]
    assert isinstance(sim, BingxSim)
    assert sim.behaviour == VARIANTS["strictest"].with_changes(heartbeat="json")


async def test_the_admin_api_reads_and_switches_the_behaviour(
    session: aiohttp.ClientSession,
) -> None:
    async with bingx_venue(variant="strictest") as (sim, _):
        _, now = await admin(session, sim, "GET", "behaviour")
        assert now["variant"] == "strictest"
        assert now["leg_id_cancels_list"] is False
        status, changed = await admin(
            session, sim, "POST", "behaviour", {"variant": "most_permissive", "limits": "strict"}
        )
        assert status == 200
        assert changed["cancel_all_covers_oco"] is True
        assert changed["limits"] == "strict"
        assert sim.behaviour.oco_list_shape == "legs"
        status, refused = await admin(session, sim, "POST", "behaviour", {"heartbeat": "morse"})
        assert status == 400
        assert "heartbeat" in refused["error"]
        status, _ = await admin(session, sim, "POST", "behaviour", {"no_such_switch": True})
        assert status == 400


def test_most_permissive_answers_every_open_question_the_easiest_way() -> None:
    # Spelled as the defaults but two: a default changed to a harder answer must change it too.
    from killswitch.sim.bingx import VARIANTS

    assert VARIANTS["most_permissive"].to_json() == {
        "cancel_all_covers_oco": True,
        "leg_id_cancels_list": True,
        "oco_list_shape": "legs",
        "oco_page_unit": "lists",
        "oco_page_cap": None,
        "empty_read": "empty",
        "limits": "docs_v3",
        "heartbeat": "json",
        "client_id_field": "C",
        "recv_window_max_ms": 60_000,
        "gone_style": "codes",
        "throttle_form": "epoch",
        "ban_form": "epoch",
        "open_orders_show_legs": True,
        "open_status": "NEW",
        "dms_answer": "status",
        "key_expiry": "close",
    }
