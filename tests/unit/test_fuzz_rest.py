"""Fuzzed venue REST answers: every connector call returns its value or raises a `VenueError`.

A connector is pointed at a loopback server that answers each request with a status, headers
and body hypothesis chose: noise, damaged copies of real answers, and near-valid answers with
fields dropped or retyped. Whatever comes back, `snapshot`, the cancels and the server-time
read must end in a result or a typed error from the taxonomy; anything else (a `KeyError` from
a row without `symbol`, a `TypeError` from an id that is a list) would make the engine give up
on an account it could have retried. Each `classify` is also total: any status, code and
message maps to None or one `VenueError`, and the HTTP statuses that decide alone (418, 429,
5xx) always decide the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import example, given
from hypothesis import strategies as st

from killswitch.exchanges import bingx
from killswitch.exchanges.base import (
    BatchResult,
    CancelAck,
    Exchange,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    VenueError,
)
from killswitch.exchanges.dialect import BINANCE, MEXC, classify
from killswitch.exchanges.factory import build_exchange
from killswitch.model import Snapshot
from tests.fixtures.fuzz import (
    FUZZ,
    JSON_SCALARS,
    JSON_VALUES,
    Canned,
    CannedServer,
    canned,
    dumps,
    hostile_bytes,
    mutated,
)

BN_ORDER = {
    "symbol": "BTCUSDT",
    "orderId": 28,
    "orderListId": -1,
    "clientOrderId": "desk1_o1",
    "price": "100.00",
    "origQty": "0.5",
    "executedQty": "0",
    "status": "NEW",
    "type": "LIMIT",
    "side": "BUY",
    "time": 1763676000000,
}
BN_LIST = {
    "orderListId": 7,
    "contingencyType": "OCO",
    "listClientOrderId": "desk1_L1",
    "symbol": "BTCUSDT",
    "orders": [{"symbol": "BTCUSDT", "orderId": 29, "clientOrderId": "a"}],
    "orderReports": [{"symbol": "BTCUSDT", "orderId": 29, "status": "CANCELED"}],
}
BN_ERROR = {"code": -2011, "msg": "Unknown order sent."}

MX_ORDER = {**BN_ORDER, "orderId": "C02__505979017439002624115"}
MX_ERROR = {"code": 700003, "msg": "Timestamp for this request is outside of the recvWindow."}

BX_ORDER = {
    "symbol": "BTC-USDT",
    "orderId": 1735964079647111280,
    "clientOrderID": "desk1_o1",
    "price": 100.0,
    "origQty": 0.5,
    "executedQty": 0,
    "status": "NEW",
    "type": "LIMIT",
    "side": "BUY",
    "time": 1763676000000,
}
BX_LEG = {
    "transactionTime": 1763676000000,
    "orderId": 1735964079647111281,
    "clientOrderId": "desk1_l1a",
    "symbol": "BTC-USDT",
    "orderType": "ocoLimit",
    "side": "SELL",
    "price": 200,
    "quantity": 1,
    "orderListId": "9",
    "status": "NEW",
}
BX_FAIL = {"orderId": 1735964079647111282, "error": "order status :CANCELED,can not delete"}


def rows(template: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.one_of(mutated(template), JSON_VALUES), max_size=4)


BINGX_CODES = [80016, 100410, 100421, 101500, 100001]


def bingx_envelope(data: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda code, msg, d: dumps({"code": code, "msg": msg, "data": d}),
        st.one_of(st.just(0), st.sampled_from(BINGX_CODES), JSON_SCALARS),
        st.one_of(st.just(""), st.text(max_size=30)),
        data,
    )


BODIES: dict[str, Any] = {
    "binance": hostile_bytes(
        dumps([BN_ORDER]),
        dumps(BN_ERROR),
        plausible=st.one_of(
            rows(BN_ORDER).map(dumps),
            rows(BN_LIST).map(dumps),
            mutated(BN_LIST).map(dumps),
            mutated(BN_ERROR).map(dumps),
            mutated({"serverTime": 1763676000000}).map(dumps),
        ),
    ),
    "mexc": hostile_bytes(
        dumps([MX_ORDER]),
        dumps(MX_ERROR),
        plausible=st.one_of(
            rows(MX_ORDER).map(dumps),
            mutated(MX_ORDER).map(dumps),
            mutated(MX_ERROR).map(dumps),
            mutated({"serverTime": 1763676000000}).map(dumps),
            mutated({"listenKey": "k"}).map(dumps),
        ),
    ),
    "bingx": hostile_bytes(
        dumps({"code": 0, "msg": "", "data": {"orders": [BX_ORDER]}}),
        plausible=bingx_envelope(
            st.one_of(
                st.builds(lambda o: {"orders": o}, rows(BX_ORDER)),
                st.builds(lambda o: {"orders": o}, rows(BX_LEG)),
                rows(BX_LEG),
                st.builds(lambda o, f: {"orders": o, "fails": f}, rows(BX_ORDER), rows(BX_FAIL)),
                mutated({"serverTime": 1763676000000}),
                mutated({"status": "ACTIVATED", "triggerTime": 1763676120, "note": ""}),
                mutated({"listenKey": "k"}),
                JSON_VALUES,
            )
        ),
    ),
}
SYMBOL = {"binance": "BTCUSDT", "mexc": "BTCUSDT", "bingx": "BTC-USDT"}

Call = Callable[[Exchange], Awaitable[object]]


def calls(venue: str) -> dict[str, Call]:
    sym = SYMBOL[venue]
    out: dict[str, Call] = {
        "snapshot all": lambda ex: ex.snapshot(None),
        "snapshot symbols": lambda ex: ex.snapshot([sym, "ETHUSDT"]),
        "cancel_all symbols": lambda ex: ex.cancel_all([sym, "ETHUSDT"]),
        "cancel_order": lambda ex: ex.cancel_order(sym, "1735964079647111280"),
        "cancel_orders": lambda ex: ex.cancel_orders(sym, ["11", "12", "13"]),
        "server_time": lambda ex: ex.server_time_ms(),
    }
    if venue in ("binance", "bingx"):
        out["cancel_order_list"] = lambda ex: ex.cancel_order_list(sym, "9")
    if venue == "bingx":
        out["cancel_all account"] = lambda ex: ex.cancel_all(None)
        out["arm dead man's switch"] = lambda ex: ex.arm_dead_mans_switch(30)
    return out


def connector(venue: str, url: str) -> Exchange:
    options: dict[str, Any] = {"use_ws_api": False} if venue == "binance" else {}
    return build_exchange(
        venue,
        account="fuzz",
        api_key="fuzz-key",
        api_secret="fuzz-secret",
        rest_url=url,
        ws_url="ws://127.0.0.1:9",
        timeout_s=2.0,
        **options,
    )


async def start_rest(exchange: Exchange) -> None:
    """Open only the REST pool: the calls under test need nothing else."""
    transport = getattr(exchange, "transport", None) or getattr(exchange, "_transport", None)
    transport = transport or getattr(exchange, "_rest", None)
    assert transport is not None, f"no REST transport on {exchange!r}"
    await transport.start()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[CannedServer]:
    srv = CannedServer()
    await srv.start()
    yield srv
    await srv.stop()


def check_result(name: str, result: object) -> None:
    if name.startswith("snapshot"):
        assert isinstance(result, Snapshot)
        assert all(isinstance(o.order_id, str) for o in result.orders)
    elif name == "cancel_orders":
        assert isinstance(result, BatchResult)
    elif name == "server_time":
        assert isinstance(result, int)
    elif name.startswith("cancel"):
        assert isinstance(result, CancelAck)
        assert all(
            isinstance(key, tuple) and len(key) == 2 and all(isinstance(p, str) for p in key)
            for key in result.cancelled
        )


async def exercise(server: CannedServer, venue: str, name: str, answer: Canned) -> None:
    server.default = answer
    exchange = connector(venue, server.base_url)
    await start_rest(exchange)
    sent = server.requests
    try:
        result = await calls(venue)[name](exchange)
    except VenueError:
        return
    finally:
        await exchange.close()
        assert server.requests > sent, f"{name} sent no request: the fuzzed answer was never read"
    check_result(name, result)


@FUZZ
@given(data=st.data())
@example(data=None)  # the hand-picked answers below, once each
@pytest.mark.parametrize("venue", ["binance", "mexc", "bingx"])
async def test_any_rest_answer_ends_in_a_result_or_a_typed_error(
    server: CannedServer, venue: str, data: st.DataObject | None
) -> None:
    if data is None:
        for name in calls(venue):
            for answer in KNOWN_BAD[venue]:
                await exercise(server, venue, name, answer)
        return
    name = data.draw(st.sampled_from(sorted(calls(venue))), label="call")
    answer = data.draw(canned(BODIES[venue]), label="answer")
    await exercise(server, venue, name, answer)


KNOWN_BAD: dict[str, list[Canned]] = {
    "binance": [
        Canned(200, dumps([{"orderId": 1}])),  # a row without a symbol
        Canned(200, dumps([{**BN_ORDER, "time": "soon"}])),
        Canned(200, dumps([{**BN_LIST, "orders": 5}])),
        Canned(200, dumps({"orderReports": [{}]})),
        Canned(200, b"[1, 2"),
        Canned(200, dumps({"serverTime": "now"})),
    ],
    "mexc": [
        Canned(200, dumps([{"orderId": 1.5, "symbol": "X"}])),
        Canned(200, dumps([{"symbol": "X"}])),
        Canned(200, dumps({"orderId": [1]})),
        Canned(200, dumps("just a string")),
        Canned(200, dumps({"serverTime": None})),
    ],
    "bingx": [
        Canned(200, dumps({"code": 0, "data": {"orders": [{"orderId": 1.5}]}})),
        Canned(200, dumps({"code": 0, "data": {"orders": [{**BX_ORDER, "time": "x"}]}})),
        Canned(200, dumps({"code": 0, "data": [{**BX_LEG, "orderId": [1]}]})),
        Canned(200, dumps({"code": 0, "data": {"status": "ACTIVATED", "triggerTime": "x"}})),
        Canned(200, dumps({"code": 0, "data": {"serverTime": "x"}})),
        Canned(200, dumps({"code": "abc", "msg": 1})),
    ],
}


@given(
    status=st.integers(100, 599),
    code=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    msg=st.text(max_size=60),
    retry_after=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
)
@FUZZ
def test_classify_is_total_and_418_429_5xx_decide_alone(
    status: int, code: int | None, msg: str, retry_after: float | None
) -> None:
    results = {
        "binance": classify(BINANCE, status, code, msg, retry_after_s=retry_after),
        "mexc": classify(MEXC, status, code, msg, retry_after_s=retry_after),
        "bingx": bingx.classify(status, code, msg, retry_after_s=retry_after),
    }
    for venue, error in results.items():
        assert error is None or isinstance(error, VenueError), venue
        if status == 418:
            assert isinstance(error, IpBanned), venue
        elif status == 429:
            assert isinstance(error, RateLimited), venue
            assert not isinstance(error, IpBanned), venue
        elif status >= 500:
            assert isinstance(error, OutcomeUnknown), venue
        if isinstance(error, RateLimited):
            assert error.retry_after_s >= 0, venue
