"""The BingX error table, its message rules, and wire parsing that must never lose an id."""

from __future__ import annotations

import gzip
import time

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
from killswitch.exchanges.bingx import (
    MalformedAnswer,
    classify,
    decode_frame,
    fail_is_gone,
    num_str,
    order_id_str,
    parse_execution_report,
    parse_order,
)
from killswitch.model import ExecType


@pytest.mark.parametrize(
    ("status", "code", "msg", "expected"),
    [
        (200, 80016, "order not exist", AlreadyGone),
        (200, 80018, "order already filled", AlreadyGone),
        (200, 100421, "cancel fail, order not exist", AlreadyGone),
        (200, 100421, "Null timestamp or timestamp mismatch", ClockSkew),
        (200, 100421, "something we have never seen", OutcomeUnknown),
        (
            200,
            100404,
            "Order does not exist. The order may have been filled or cancelled.",
            AlreadyGone,
        ),
        (200, 100404, "api path not found", Fatal),
        (200, 100421, "traders prohibit openApi from placing orders", Fatal),
        (200, 100421, "CheckUserAndSymbol: contract not exist", Fatal),
        (
            200,
            100400,
            "the order you want to cancel is FILLED or CANCELLED already, or is not a valid "
            "order id ,please verify",
            AlreadyGone,
        ),
        (200, 100400, "miss arguments", Fatal),
        (200, 100400, "The current system is busy, please try again later", Transient),
        (401, 100001, "Signature verification failed", Fatal),
        (200, 100412, "Null signature", Fatal),
        (401, 100413, "Incorrect apiKey", Fatal),
        (200, 100419, "IP does not match IP whitelist", Fatal),
        (200, 100004, "Permission denied", Fatal),
        (200, 100500, "Internal system error", OutcomeUnknown),
        (200, 101500, "rpc timeout", OutcomeUnknown),
        (200, 100503, "Server busy", Transient),
        (200, 80012, "service unavailable", Transient),
        (200, 80019, "order is being processed", Transient),
        (200, 999999, "a code nobody documented", OutcomeUnknown),
        (200, 100400, "a parameter complaint nobody documented", OutcomeUnknown),
        (500, 100500, "Internal system error", OutcomeUnknown),
        (504, 101500, "rpc timeout", OutcomeUnknown),
        (503, None, "", OutcomeUnknown),
        (404, None, "", OutcomeUnknown),
        (401, None, "", Fatal),
        (403, None, "", RateLimited),
        (403, None, "<html>Access denied by the firewall</html>", RateLimited),
    ],
)
def test_classify_maps_code_and_message_to_the_taxonomy(
    status: int, code: int | None, msg: str, expected: type[VenueError]
) -> None:
    error = classify(status, code, msg)
    assert type(error) is expected
    assert error is not None
    assert (error.http_status, error.code, error.msg) == (status, code, msg or error.msg)


def test_classify_says_nothing_for_a_success() -> None:
    assert classify(200, 0, "") is None
    assert classify(200, None, "") is None


def test_a_429_carries_retry_after_from_the_header() -> None:
    error = classify(429, 100410, "rate limited", retry_after_s=7.0)
    assert type(error) is RateLimited
    assert error.retry_after_s == 7.0


def test_a_418_is_an_ip_ban_with_its_retry_after() -> None:
    error = classify(418, 100410, "banned", retry_after_s=120.0)
    assert type(error) is IpBanned
    assert error.retry_after_s == 120.0


def test_a_rate_limit_code_without_header_waits_until_the_unblock_time_in_the_message() -> None:
    unblock_ms = int((time.time() + 42) * 1000)
    msg = (
        "code:100410:The endpoint trigger frequency limit rule is currently in the disabled "
        f"period and will be unblocked after {unblock_ms}"
    )
    error = classify(200, 100410, msg)
    assert isinstance(error, RateLimited)
    assert 40 <= error.retry_after_s <= 42


def test_a_rate_limit_without_any_hint_backs_off_briefly_never_five_minutes() -> None:
    error = classify(200, 100410, "rate limited")
    assert isinstance(error, RateLimited)
    assert 0 < error.retry_after_s <= 10


def test_the_error_count_lock_waits_until_its_retry_time_and_not_on_its_other_numbers() -> None:
    now_ms = 1_727_193_900_000
    msg = (
        "over 20 error code:100202 requests within 480000 ms for this api, please verify and "
        "fix it ,can retry after time: 1727193970155"
    )
    error = classify(200, 100410, msg, now_ms=now_ms)
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == pytest.approx(70.155)


def test_an_epoch_is_read_on_the_venue_clock_given_not_the_host_clock() -> None:
    msg = "code:100410:... will be unblocked after 1727193814249"
    error = classify(200, 100410, msg, now_ms=1_727_193_812_249)
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == pytest.approx(2.0)


def test_a_nineteen_digit_order_id_in_a_message_is_not_an_epoch() -> None:
    error = classify(200, 100410, "rate limited on order 1976495057808654337", now_ms=0)
    assert isinstance(error, RateLimited)
    assert error.retry_after_s <= 10


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("cancel order fail, order status :CANCELED,can not delete", True),
        ("cancel order fail, order status :FILLED,can not delete", True),
        ("cancel order fail, order not exist", True),
        ("the order you want to cancel is FILLED or CANCELLED already", True),
        ("order status :PARTIALLY_FILLED, cancel restrictions not met", False),
        ("The current system is busy", False),
    ],
)
def test_batch_fail_texts_for_closed_orders_count_as_gone(text: str, gone: bool) -> None:
    assert fail_is_gone(text) is gone


def test_nineteen_digit_ids_survive_json_decoding_exactly() -> None:
    raw = b'{"orderId":1976495057808654337}'
    assert order_id_str(orjson.loads(raw)["orderId"]) == "1976495057808654337"


@pytest.mark.parametrize("bad", [1.9764950578086543e18, None, "", [1], True])
def test_an_id_that_is_not_an_int_or_a_string_is_refused_not_rounded(bad: object) -> None:
    with pytest.raises(MalformedAnswer):
        order_id_str(bad)


def test_numbers_are_rendered_without_float_noise() -> None:
    assert [num_str(5), num_str(3.4649), num_str(2.0), num_str("0.10"), num_str(None)] == [
        "5",
        "3.4649",
        "2",
        "0.10",
        "0",
    ]


def test_the_documented_execution_report_decodes_from_a_gzip_frame() -> None:
    # The docs' example event [BX-DOC spot "7-websocket-账户"], with JKorf's `C`.
    doc = (
        b'{"code":0,"dataType":"spot.executionReport","data":{"e":"executionReport",'
        b'"E":1709800000000,"s":"SUI-USDT","S":"BUY","o":"MARKET","q":5,"p":3.4649,'
        b'"x":"TRADE","X":"FILLED","i":1976495057808654300,"C":"bot-7","l":5,"z":5,'
        b'"L":3.4649,"n":0,"N":"USDT","T":1709800000000,"t":1,"O":1709800000000,'
        b'"Z":17.3245,"Y":17.3245,"Q":0}}'
    )
    msg = decode_frame(gzip.compress(doc))
    event = parse_execution_report(msg["data"])
    assert event.order_id == "1976495057808654300"
    assert (event.symbol, event.side, event.order_type) == ("SUI-USDT", "BUY", "MARKET")
    assert (event.exec_type, event.status, event.is_open) == (ExecType.TRADE, "FILLED", False)
    assert (event.price, event.orig_qty, event.last_qty, event.last_price) == (
        "3.4649",
        "5",
        "5",
        "3.4649",
    )
    assert event.client_order_id == "bot-7"
    assert event.event_time_ms == 1709800000000


def test_a_frame_of_several_gzip_members_is_read_whole() -> None:
    frame = gzip.compress(b'{"code":0,') + gzip.compress(b'"dataType":"x"}')
    assert decode_frame(frame) == {"code": 0, "dataType": "x"}


def test_a_frame_that_is_not_gzip_is_refused() -> None:
    with pytest.raises(gzip.BadGzipFile):
        decode_frame(b'{"ping":"1"}')


@pytest.mark.parametrize(
    ("status", "is_open"),
    [("NEW", True), ("PENDING", True), ("PARTIALLY_FILLED", True), ("CANCELED", False)],
)
def test_pending_and_partially_filled_orders_are_still_open(status: str, is_open: bool) -> None:
    event = parse_execution_report({"s": "BTC-USDT", "i": 1, "X": status, "x": "NEW"})
    assert event.is_open is is_open


def test_a_rest_order_keeps_its_client_id_and_string_numbers() -> None:
    order = parse_order(
        {
            "symbol": "BTC-USDT",
            "orderId": 1976495057808654337,
            "price": "100.50",
            "origQty": "0.5",
            "executedQty": "0",
            "status": "NEW",
            "type": "LIMIT",
            "side": "BUY",
            "time": 1,
            "clientOrderID": "strat7-1",
        }
    )
    assert (order.order_id, order.client_order_id, order.price) == (
        "1976495057808654337",
        "strat7-1",
        "100.50",
    )
