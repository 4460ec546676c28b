"""Fuzzed user-stream frames: each venue's decoder returns events or raises a typed error.

A frame from a user-data stream is decoded by pure functions (Binance `parse_frame`, MEXC
`decode_push`, BingX `decode_frame` + the connector's `_order_events`). Whatever bytes arrive,
the decoder must either return normalised events, or raise a `VenueError` (the stream
supervisor then marks a gap, reconnects and resnapshots), and it reports a bad frame at most
once: a log warning or the raised error, never both, never a stream of them.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.base import Transient, VenueError
from killswitch.exchanges.binance import parse_frame
from killswitch.exchanges.bingx import EXECUTION_REPORT, BingxExchange, decode_frame, stream_error
from killswitch.exchanges.mexc import _control_msg, decode_push
from killswitch.model import ListEvent, OrderEvent, StreamTerminated
from tests.fixtures.fuzz import FUZZ, JSON_VALUES, counting, dumps, hostile_bytes, mutated

BINANCE_REPORT: dict[str, Any] = {
    "e": "executionReport",
    "E": 1763676000123,
    "s": "BTCUSDT",
    "c": "desk1_o7",
    "S": "BUY",
    "o": "LIMIT",
    "f": "GTC",
    "q": "0.50000000",
    "p": "100.00000000",
    "g": -1,
    "C": "",
    "x": "NEW",
    "X": "NEW",
    "i": 4242,
    "l": "0",
    "L": "0",
    "T": 1763676000123,
}
BINANCE_LIST: dict[str, Any] = {
    "e": "listStatus",
    "E": 1763676000123,
    "s": "BTCUSDT",
    "g": 7,
    "c": "OCO",
    "l": "EXEC_STARTED",
    "L": "EXECUTING",
    "C": "desk1_L3",
    "O": [{"s": "BTCUSDT", "i": 4243, "c": "a"}, {"s": "BTCUSDT", "i": 4244, "c": "b"}],
}


def _binance_wrap(event: Any) -> bytes:
    return dumps({"subscriptionId": 0, "event": event})


BINANCE_FRAMES = hostile_bytes(
    _binance_wrap(BINANCE_REPORT),
    _binance_wrap(BINANCE_LIST),
    plausible=st.one_of(
        mutated(BINANCE_REPORT).map(_binance_wrap),
        mutated(BINANCE_LIST).map(_binance_wrap),
        st.builds(
            lambda legs: _binance_wrap({**BINANCE_LIST, "O": legs}),
            st.lists(st.one_of(JSON_VALUES, mutated({"s": "BTCUSDT", "i": 1, "c": "x"}))),
        ),
    ),
)


def _checked(events: list[Any]) -> None:
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, OrderEvent | ListEvent | StreamTerminated)
        if isinstance(event, OrderEvent):
            assert isinstance(event.order_id, str)
            assert isinstance(event.symbol, str)
            assert isinstance(event.is_open, bool)
            assert isinstance(event.event_time_ms, int)
        if isinstance(event, ListEvent):
            assert all(isinstance(i, str) for i in event.order_ids)


@FUZZ
@given(frame=BINANCE_FRAMES, as_text=st.booleans())
def test_binance_frames_decode_to_events_or_a_typed_error_reported_once(
    frame: bytes, as_text: bool
) -> None:
    raw: str | bytes = frame.decode("utf-8", "replace") if as_text else frame
    raised = 0
    with counting("killswitch") as logged:
        try:
            _checked(parse_frame(raw))
        except VenueError:
            raised = 1
    assert len(logged.records) + raised <= 1


def _mexc_push(**order: Any) -> bytes:
    wrapper = pb.PushDataV3ApiWrapper(
        channel=pb.ORDERS_CHANNEL, symbol="BTCUSDT", sendTime=1763676000123
    )
    wrapper.privateOrders.CopyFrom(pb.PrivateOrdersV3Api(**order))
    return bytes(wrapper.SerializeToString())


MEXC_VALID = _mexc_push(
    id="C02__1",
    clientId="desk1_o1",
    price="100",
    quantity="0.5",
    orderType=1,
    tradeType=1,
    status=1,
    createTime=1763676000000,
)
MEXC_PLAUSIBLE = st.builds(
    lambda o_id, cid, status, otype, ttype, oco, t: _mexc_push(
        id=o_id,
        clientId=cid,
        status=status,
        orderType=otype,
        tradeType=ttype,
        createTime=t,
        **({"ocoId": oco} if oco is not None else {}),
    ),
    st.text(max_size=30),
    st.text(max_size=30),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.none() | st.text(max_size=10),
    st.integers(-(2**63), 2**63 - 1),
)


@FUZZ
@given(frame=hostile_bytes(MEXC_VALID, plausible=MEXC_PLAUSIBLE))
def test_mexc_pushes_decode_to_an_event_none_or_a_typed_error(frame: bytes) -> None:
    with counting("killswitch") as logged:
        try:
            event = decode_push(frame)
        except VenueError:
            return
    assert event is None or isinstance(event, OrderEvent)
    if event is not None:
        _checked([event])
    assert len(logged.records) <= 1


@FUZZ
@given(frame=hostile_bytes(b'{"id":0,"code":0,"msg":"PONG"}'))
def test_mexc_control_messages_never_raise(frame: bytes) -> None:
    msg = _control_msg(frame.decode("utf-8", "replace"))
    assert msg is None or isinstance(msg, str)


BINGX_REPORT: dict[str, Any] = {
    "e": "executionReport",
    "E": 1763676000123,
    "s": "BTC-USDT",
    "S": "BUY",
    "o": "LIMIT",
    "q": 0.5,
    "p": 100.0,
    "x": "NEW",
    "X": "NEW",
    "i": 1735964079647111280,
    "C": "desk1_o1",
}


def _bingx_frame(message: Any) -> bytes:
    return gzip.compress(dumps(message))


BINGX_FRAMES = hostile_bytes(
    _bingx_frame({"code": 0, "dataType": EXECUTION_REPORT, "data": BINGX_REPORT}),
    _bingx_frame({"ping": "2b8c", "time": "2022-06-07T16:27:36.323+0800"}),
    plausible=st.one_of(
        mutated(BINGX_REPORT).map(
            lambda d: _bingx_frame({"code": 0, "dataType": EXECUTION_REPORT, "data": d})
        ),
        mutated({"id": "x", "code": 100001, "msg": "bad"}).map(_bingx_frame),
        JSON_VALUES.map(_bingx_frame),
    ),
)


def bingx_frame_events(connector: BingxExchange, frame: bytes) -> list[Any]:
    """What the connector's stream loop (`_frames`) makes of one frame; pings are answered there."""
    try:
        msg = decode_frame(frame)
    except (OSError, EOFError, orjson.JSONDecodeError):
        return []  # the loop logs and skips an undecodable frame
    if not isinstance(msg, dict) or "ping" in msg:
        return []
    if msg.get("dataType") == EXECUTION_REPORT and isinstance(msg.get("data"), dict):
        return connector._order_events(msg["data"])
    error = stream_error(msg)
    if error is not None:
        raise error
    return []


@FUZZ
@given(frame=BINGX_FRAMES)
def test_bingx_frames_decode_to_events_or_a_typed_error(frame: bytes) -> None:
    connector = BingxExchange(
        account="fuzz", api_key="k", api_secret="s", rest_url="http://127.0.0.1:9", ws_url="ws://x"
    )
    try:
        events = bingx_frame_events(connector, frame)
    except VenueError:
        return
    _checked(events)


def test_a_corrupt_bingx_gzip_frame_is_refused_as_the_stream_loop_expects() -> None:
    valid = _bingx_frame({"ping": "1"})
    corrupt = valid[:10] + b"\xff" * (len(valid) - 10)
    with pytest.raises(gzip.BadGzipFile, match="corrupt gzip stream"):
        decode_frame(corrupt)


def test_a_bingx_execution_report_with_an_unreadable_time_ends_the_stream_as_transient() -> None:
    connector = BingxExchange(
        account="fuzz", api_key="k", api_secret="s", rest_url="http://127.0.0.1:9", ws_url="ws://x"
    )
    with pytest.raises(Transient, match="malformed executionReport"):
        connector._order_events({**BINGX_REPORT, "E": "yesterday"})


def test_a_bingx_subscription_answer_with_an_unreadable_code_is_an_error() -> None:
    assert isinstance(stream_error({"id": "x", "code": "abc", "msg": "?"}), VenueError)
    assert stream_error({"id": "x", "code": 0, "msg": "SUCCESS"}) is None


def test_a_binance_execution_report_without_its_order_id_ends_the_stream_as_transient() -> None:
    report = {k: v for k, v in BINANCE_REPORT.items() if k != "i"}
    with pytest.raises(Transient, match="malformed executionReport"):
        parse_frame(_binance_wrap(report))


def test_a_binance_list_status_with_legs_of_the_wrong_type_ends_the_stream_as_transient() -> None:
    with pytest.raises(Transient, match="malformed listStatus"):
        parse_frame(_binance_wrap({**BINANCE_LIST, "O": True}))


def test_a_corrupt_mexc_push_ends_the_stream_as_transient() -> None:
    with pytest.raises(Transient, match="corrupt protobuf push"):
        decode_push(MEXC_VALID[:-3] + b"\xff\xff\xff")
