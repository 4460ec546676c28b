"""The MEXC protobuf schema against the published field numbers, at the wire level.

Frames here are assembled by hand from `mexcdevelop/websocket-proto` (PushDataV3ApiWrapper:
channel=1, privateOrders=304, symbol=3, sendTime=6; PrivateOrdersV3Api: id=1, clientId=2,
price=3, quantity=4, orderType=7, tradeType=8, lastDealQuantity=12, status=15, createTime=16,
ocoId=21), so a wrong number in our schema fails here even though sim and connector share it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.base import Transient
from killswitch.exchanges.mexc import decode_push
from killswitch.model import ExecType
from killswitch.sim.book import BookEvent, BookEventKind, SimOrder
from killswitch.sim.mexc import encode_order_push

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def text(number: int, value: str) -> bytes:
    raw = value.encode()
    return key(number, LEN) + varint(len(raw)) + raw


def num(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def read_fields(data: bytes) -> dict[int, object]:
    """A minimal protobuf reader: {field number: int or bytes}, last value wins."""
    fields: dict[int, object] = {}
    i = 0

    def read_varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while i < len(data):
        tag = read_varint()
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            fields[number] = read_varint()
        elif wire_type == LEN:
            length = read_varint()
            fields[number] = data[i : i + length]
            i += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


DOC_ORDER = (
    text(1, "C02__505979017439002624115")
    + text(2, "strat7-1")
    + text(3, "3.5121")
    + text(4, "1")
    + num(7, 5)
    + num(8, 2)
    + text(12, "1")
    + num(15, 2)
    + num(16, 1736417034259)
    + text(21, "OCO__9")
)
DOC_FRAME = (
    text(1, "spot@private.orders.v3.api.pb")
    + text(3, "MXUSDT")
    + num(6, 1736417034281)
    + key(304, LEN)
    + varint(len(DOC_ORDER))
    + DOC_ORDER
)


def test_hand_assembled_frame_decodes_with_the_published_numbers() -> None:
    wrapper = pb.PushDataV3ApiWrapper.FromString(DOC_FRAME)
    assert wrapper.WhichOneof("body") == "privateOrders"
    assert wrapper.channel == "spot@private.orders.v3.api.pb"
    assert wrapper.symbol == "MXUSDT"
    assert wrapper.sendTime == 1736417034281
    order = wrapper.privateOrders
    assert order.id == "C02__505979017439002624115"
    assert order.clientId == "strat7-1"
    assert order.price == "3.5121"
    assert order.quantity == "1"
    assert order.orderType == 5
    assert order.tradeType == 2
    assert order.lastDealQuantity == "1"
    assert order.status == 2
    assert order.createTime == 1736417034259
    assert order.ocoId == "OCO__9"


def test_connector_normalises_a_hand_assembled_fill_push() -> None:
    event = decode_push(DOC_FRAME)
    assert event is not None
    assert event.symbol == "MXUSDT"
    assert event.order_id == "C02__505979017439002624115"
    assert event.client_order_id == "strat7-1"
    assert event.exec_type is ExecType.TRADE
    assert event.status == "FILLED"
    assert event.is_open is False
    assert event.side == "SELL"
    assert event.order_type == "MARKET"
    assert event.last_qty == "1"
    assert event.list_id == "OCO__9"
    assert event.event_time_ms == 1736417034281


def test_frames_with_other_bodies_are_not_order_events() -> None:
    deals = text(1, "spot@private.deals.v3.api.pb") + key(306, LEN) + varint(3) + text(1, "1")
    assert decode_push(deals) is None
    public_body = key(301, LEN) + varint(0)  # publicDeals: not in our trimmed oneof
    assert decode_push(text(1, "spot@public.deals.v3.api.pb") + public_body) is None


def test_an_order_push_without_its_symbol_is_unreadable() -> None:
    # An order is known by (symbol, id); a push that names no symbol would be filed as another
    # order and its cancel would close nothing. End the stream (the supervisor resnapshots).
    frame = text(1, "spot@private.orders.v3.api.pb") + key(304, LEN) + varint(len(DOC_ORDER))
    with pytest.raises(Transient, match="symbol"):
        decode_push(frame + DOC_ORDER)


def test_unknown_status_ints_are_treated_as_open() -> None:
    # review 43: only a status known to end an order closes it; one added later never reads
    # as "nothing open" (the tracker keeps it, a latch cancels it)
    frame = text(3, "MXUSDT") + key(304, LEN) + varint(2) + num(15, 9)
    event = decode_push(frame)
    assert event is not None
    assert event.is_open is True
    assert event.exec_type is ExecType.OTHER


def test_sim_encodes_a_cancel_with_the_published_field_numbers() -> None:
    order = SimOrder(
        order_id="C02__1",
        client_order_id="cid",
        symbol="BTCUSDT",
        side="BUY",
        order_type="LIMIT_MAKER",
        price=Decimal("2.5"),
        orig_qty=Decimal("4"),
        time_ms=1700000000000,
        status="CANCELED",
    )
    frame = encode_order_push(order, BookEvent(BookEventKind.CANCELED, 1), 1700000000123)
    outer = read_fields(frame)
    assert outer[1] == b"spot@private.orders.v3.api.pb"
    assert outer[3] == b"BTCUSDT"
    assert outer[6] == 1700000000123
    inner = outer[304]
    assert isinstance(inner, bytes)
    fields = read_fields(inner)
    assert fields[1] == b"C02__1"
    assert fields[2] == b"cid"
    assert fields[3] == b"2.5"
    assert fields[4] == b"4"
    assert fields[7] == 2  # POST_ONLY
    assert fields[8] == 1  # buy
    assert fields[11] == b"4"  # remainQuantity
    assert fields[15] == 4  # canceled
    assert fields[16] == 1700000000000
    assert 12 not in fields  # lastDealQuantity only on fills


def test_schema_marks_proto3_optional_fields_as_the_proto_file_does() -> None:
    descriptor = pb.PrivateOrdersV3Api.DESCRIPTOR
    optional = {f.name for f in descriptor.fields if f.has_presence}
    assert optional == {
        "lastDealQuantity",
        "market",
        "triggerType",
        "triggerPrice",
        "state",
        "ocoId",
        "routeFactor",
        "symbolId",
        "marketId",
        "marketCurrencyId",
        "currencyId",
    }
    wrapper = pb.PushDataV3ApiWrapper.DESCRIPTOR
    assert {f.name: f.number for f in wrapper.oneofs_by_name["body"].fields} == {
        "privateOrders": 304,
        "privateDeals": 306,
        "privateAccount": 307,
    }
