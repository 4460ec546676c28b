"""Binance's error table and the parsing of its user-data events."""

from __future__ import annotations

import orjson
import pytest

from killswitch.exchanges.base import (
    AlreadyGone,
    ClockSkew,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
    VenueError,
)
from killswitch.exchanges.binance import (
    BinanceExchange,
    cancel_ack,
    execution_report_event,
    list_status_event,
    parse_frame,
    ws_api_url,
)
from killswitch.exchanges.dialect import BINANCE, classify
from killswitch.model import ExecType


@pytest.mark.parametrize(
    ("status", "code", "msg", "kind"),
    [
        (400, -2011, "Unknown order sent.", AlreadyGone),
        (400, -2011, "Order was not canceled due to cancel restrictions.", Fatal),
        (400, -2011, "This account may not place or cancel orders.", Fatal),
        (400, -2011, "Market is closed.", Transient),
        # Not in errors.md, what users report for a list that is not open: gone, not retried.
        (400, -2011, "Unknown order list sent.", AlreadyGone),
        # A -2011 message nobody listed: not guessed at, re-read (was Transient: retried blind).
        (400, -2011, "Something new from Binance.", OutcomeUnknown),
        (400, -9999, "A code errors.md does not have.", OutcomeUnknown),
        (404, None, "<html>Not Found</html>", OutcomeUnknown),
        (400, -2013, "Order does not exist.", AlreadyGone),
        (400, -2026, "Order was canceled or expired ... archived.", AlreadyGone),
        (400, -1021, "Timestamp for this request is outside of the recvWindow.", ClockSkew),
        (400, -1022, "Signature for this request is not valid.", Fatal),
        (401, -2014, "API-key format invalid.", Fatal),
        (401, -2015, "Invalid API-key, IP, or permissions for action.", Fatal),
        (400, -1121, "Invalid symbol.", Fatal),
        (400, -1100, "Illegal characters found in a parameter.", Fatal),
        (400, -1001, "Internal error; unable to process your request.", Transient),
        (400, -1008, "Server is currently overloaded.", Transient),
        (400, -1006, "Execution status unknown.", OutcomeUnknown),
        (400, -1007, "Send status unknown; execution status unknown.", OutcomeUnknown),
        (503, -1008, "Server is currently overloaded.", OutcomeUnknown),
        (500, None, "<html>", OutcomeUnknown),
        (504, -1007, "Timeout waiting for response from backend server.", OutcomeUnknown),
        (429, -1003, "Too much request weight used.", RateLimited),
        (400, -1015, "Too many new orders.", RateLimited),
        (418, -1003, "Way too much request weight used; IP banned until 1.", IpBanned),
        # The firewall, possibly a rate block: not proof of a bad key (was Fatal).
        (403, None, "WAF", RateLimited),
        (401, None, "Unauthorized", Fatal),
    ],
)
def test_binance_answers_map_to_the_taxonomy(
    status: int, code: int | None, msg: str, kind: type[VenueError]
) -> None:
    error = classify(BINANCE, status, code, msg)
    assert type(error) is kind
    assert error is not None
    assert (error.venue, error.http_status, error.code, error.msg) == ("binance", status, code, msg)


def test_a_success_is_not_an_error() -> None:
    assert classify(BINANCE, 200, None, "") is None


def test_throttles_carry_retry_after_with_a_ban_floor() -> None:
    limited = classify(BINANCE, 429, -1003, "x", {"Retry-After": "7"})
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_s == 7
    banned = classify(BINANCE, 418, -1003, "x")
    assert isinstance(banned, IpBanned)
    assert banned.retry_after_s == 120  # Binance's shortest ban when no Retry-After came
    past = classify(BINANCE, 429, -1003, "x", {"Retry-After": "-3"})
    assert isinstance(past, RateLimited)
    assert past.retry_after_s == 0  # a Retry-After in the past means now
    ws = classify(BINANCE, 429, -1003, "x", None, retry_after_s=2.5)  # ws-api's retryAfter
    assert isinstance(ws, RateLimited)
    assert ws.retry_after_s == 2.5


def test_a_firewall_403_waits_for_its_retry_after_or_a_short_default() -> None:
    told = classify(BINANCE, 403, None, "", {"Retry-After": "30"})
    assert isinstance(told, RateLimited)
    assert told.retry_after_s == 30
    untold = classify(BINANCE, 403, None, "")
    assert isinstance(untold, RateLimited)
    assert 0 < untold.retry_after_s <= 10


EXECUTION_REPORT = b"""{"subscriptionId": 0, "event": {
  "e": "executionReport", "E": 1499405658658, "s": "ETHBTC", "c": "mUvoqJxFIILMdfAW5iGSOW",
  "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "1.00000000", "p": "0.10264410",
  "P": "0.00000000", "F": "0.00000000", "g": -1, "C": "", "x": "NEW", "X": "NEW",
  "r": "NONE", "i": 4293153, "l": "0.00000000", "z": "0.00000000", "L": "0.00000000",
  "n": "0", "N": null, "T": 1499405658657, "t": -1, "v": 3, "I": 8641984, "w": true,
  "m": false, "M": false, "O": 1499405658657, "Z": "0.00000000", "Y": "0.00000000",
  "Q": "0.00000000", "W": 1499405658657, "V": "NONE"}}"""


def test_the_documented_execution_report_becomes_an_open_order_event() -> None:
    event = execution_report_event(orjson.loads(EXECUTION_REPORT)["event"])
    assert (event.symbol, event.order_id, event.client_order_id) == (
        "ETHBTC",
        "4293153",
        "mUvoqJxFIILMdfAW5iGSOW",
    )
    assert (event.exec_type, event.status, event.is_open) == (ExecType.NEW, "NEW", True)
    assert (event.price, event.orig_qty, event.list_id) == ("0.10264410", "1.00000000", None)
    assert event.event_time_ms == 1499405658658


def test_a_cancel_report_keeps_the_cancelled_orders_client_id_and_exact_big_ids() -> None:
    raw = EXECUTION_REPORT.replace(b'"x": "NEW", "X": "NEW"', b'"x": "CANCELED", "X": "CANCELED"')
    raw = raw.replace(b'"C": ""', b'"C": "bot-1"').replace(b"4293153", b"9007199254740993")
    raw = raw.replace(b'"g": -1', b'"g": 9007199254740995')
    event = execution_report_event(orjson.loads(raw)["event"])
    assert (event.client_order_id, event.exec_type, event.is_open) == (
        "bot-1",
        ExecType.CANCELED,
        False,
    )
    assert (event.order_id, event.list_id) == ("9007199254740993", "9007199254740995")


def test_an_execution_report_without_its_symbol_ends_the_stream() -> None:
    # Orders are known by (symbol, id): a report naming no symbol cannot be matched.
    raw = EXECUTION_REPORT.replace(b'"s": "ETHBTC"', b'"s": ""')
    with pytest.raises(Transient, match="executionReport"):
        parse_frame(raw)


def test_list_status_is_open_until_all_done() -> None:
    status = {
        "e": "listStatus",
        "E": 1564035303637,
        "s": "ETHBTC",
        "g": 2,
        "c": "OCO",
        "l": "EXEC_STARTED",
        "L": "EXECUTING",
        "r": "NONE",
        "C": "F4QN4G8DlFATFlIUQ0cjdD",
        "T": 1564035303625,
        "O": [
            {"s": "ETHBTC", "i": 17, "c": "AJYsMjErWJesZvqlJCTUgL"},
            {"s": "ETHBTC", "i": 18, "c": "bfYPSQdLoqAJeNrOr9adzq"},
        ],
    }
    opened = list_status_event(status)
    assert (opened.list_id, opened.order_ids, opened.is_open) == ("2", ("17", "18"), True)
    closed = list_status_event({**status, "l": "ALL_DONE", "L": "ALL_DONE"})
    assert not closed.is_open


def test_a_cancel_all_answer_mixes_orders_and_lists() -> None:
    answer = [
        {"symbol": "BTCUSDT", "orderId": 11, "orderListId": -1, "status": "CANCELED"},
        {
            "orderListId": 1929,
            "contingencyType": "OCO",
            "listStatusType": "ALL_DONE",
            "orders": [{"orderId": 20}, {"orderId": 21}],
            "orderReports": [{"orderId": 20}, {"orderId": 21}],
        },
    ]
    ack = cancel_ack(answer, "BTCUSDT")
    keys = (("BTCUSDT", "11"), ("BTCUSDT", "20"), ("BTCUSDT", "21"))
    assert (ack.cancelled, ack.lists_cancelled) == (keys, (("BTCUSDT", "1929"),))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://127.0.0.1:9000", "ws://127.0.0.1:9000/ws-api/v3"),
        ("ws://127.0.0.1:9000/", "ws://127.0.0.1:9000/ws-api/v3"),
        ("wss://ws-api.binance.com:443/ws-api/v3", "wss://ws-api.binance.com:443/ws-api/v3"),
    ],
)
def test_the_ws_api_url_gets_its_path_when_given_a_bare_host(given: str, expected: str) -> None:
    assert ws_api_url(given) == expected


@pytest.mark.parametrize(
    "frame",
    [
        {"id": 1},
        {"id": 1, "status": 200},
        {"id": 1, "status": "200", "result": {}},
        {"id": 1, "status": 400, "error": "nope"},
    ],
)
def test_a_ws_api_answer_that_cannot_be_read_is_outcome_unknown(frame: dict[str, object]) -> None:
    exchange = BinanceExchange(
        account="a", api_key="k", api_secret="s", rest_url="http://x", ws_url="ws://x"
    )
    with pytest.raises(OutcomeUnknown):
        exchange._ws_result(frame, "order.cancel")
