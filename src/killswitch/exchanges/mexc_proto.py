"""Build MEXC's user-data protobuf classes from the published schema, at import time.

Mirrors `mexcdevelop/websocket-proto` (`PushDataV3ApiWrapper.proto`, `PrivateOrdersV3Api.proto`,
`PrivateDealsV3Api.proto`, `PrivateAccountV3Api.proto`): same file names, message names, field
numbers, types and proto3 `optional` markers. The wrapper's `oneof body` carries only the three
private bodies (304, 306, 307); the public market-data bodies (301-303, 305, 308-315) are left
out because we never subscribe to them, and a decoder skips them as unknown fields.

The simulator encodes with these classes and the connector decodes with them, so a field number
typo would go unnoticed by a round trip: `tests/unit/test_mexc_proto.py` checks the wire bytes
against hand-assembled protobuf encodings of the published numbers.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ORDERS_CHANNEL = "spot@private.orders.v3.api.pb"
DEALS_CHANNEL = "spot@private.deals.v3.api.pb"
ACCOUNT_CHANNEL = "spot@private.account.v3.api.pb"

_F = descriptor_pb2.FieldDescriptorProto
_STRING = _F.TYPE_STRING
_INT32 = _F.TYPE_INT32
_INT64 = _F.TYPE_INT64
_BOOL = _F.TYPE_BOOL
_MESSAGE = _F.TYPE_MESSAGE

# (name, number, type, proto3 optional) exactly as in the published .proto files.
_PRIVATE_ORDERS: list[tuple[str, int, int, bool]] = [
    ("id", 1, _STRING, False),
    ("clientId", 2, _STRING, False),
    ("price", 3, _STRING, False),
    ("quantity", 4, _STRING, False),
    ("amount", 5, _STRING, False),
    ("avgPrice", 6, _STRING, False),
    ("orderType", 7, _INT32, False),
    ("tradeType", 8, _INT32, False),
    ("isMaker", 9, _BOOL, False),
    ("remainAmount", 10, _STRING, False),
    ("remainQuantity", 11, _STRING, False),
    ("lastDealQuantity", 12, _STRING, True),
    ("cumulativeQuantity", 13, _STRING, False),
    ("cumulativeAmount", 14, _STRING, False),
    ("status", 15, _INT32, False),
    ("createTime", 16, _INT64, False),
    ("market", 17, _STRING, True),
    ("triggerType", 18, _INT32, True),
    ("triggerPrice", 19, _STRING, True),
    ("state", 20, _INT32, True),
    ("ocoId", 21, _STRING, True),
    ("routeFactor", 22, _STRING, True),
    ("symbolId", 23, _STRING, True),
    ("marketId", 24, _STRING, True),
    ("marketCurrencyId", 25, _STRING, True),
    ("currencyId", 26, _STRING, True),
]

_PRIVATE_DEALS: list[tuple[str, int, int, bool]] = [
    ("price", 1, _STRING, False),
    ("quantity", 2, _STRING, False),
    ("amount", 3, _STRING, False),
    ("tradeType", 4, _INT32, False),
    ("isMaker", 5, _BOOL, False),
    ("isSelfTrade", 6, _BOOL, False),
    ("tradeId", 7, _STRING, False),
    ("clientOrderId", 8, _STRING, False),
    ("orderId", 9, _STRING, False),
    ("feeAmount", 10, _STRING, False),
    ("feeCurrency", 11, _STRING, False),
    ("time", 12, _INT64, False),
]

_PRIVATE_ACCOUNT: list[tuple[str, int, int, bool]] = [
    ("vcoinName", 1, _STRING, False),
    ("coinId", 2, _STRING, False),
    ("balanceAmount", 3, _STRING, False),
    ("balanceAmountChange", 4, _STRING, False),
    ("frozenAmount", 5, _STRING, False),
    ("frozenAmountChange", 6, _STRING, False),
    ("type", 7, _STRING, False),
    ("time", 8, _INT64, False),
]

# oneof body members kept from PushDataV3ApiWrapper.proto: (field name, number, message type).
_WRAPPER_BODY: list[tuple[str, int, str]] = [
    ("privateOrders", 304, "PrivateOrdersV3Api"),
    ("privateDeals", 306, "PrivateDealsV3Api"),
    ("privateAccount", 307, "PrivateAccountV3Api"),
]

_WRAPPER_TAIL: list[tuple[str, int, int, bool]] = [
    ("symbol", 3, _STRING, True),
    ("symbolId", 4, _STRING, True),
    ("createTime", 5, _INT64, True),
    ("sendTime", 6, _INT64, True),
]


def _options(outer_classname: str) -> descriptor_pb2.FileOptions:
    return descriptor_pb2.FileOptions(
        java_package="com.mxc.push.common.protobuf",
        optimize_for=descriptor_pb2.FileOptions.SPEED,
        java_multiple_files=True,
        java_outer_classname=outer_classname,
    )


def _add_scalars(
    msg: descriptor_pb2.DescriptorProto,
    fields: list[tuple[str, int, int, bool]],
    first_oneof_index: int = 0,
) -> None:
    """Add fields; proto3 `optional` becomes a synthetic oneof `_name`, as protoc emits it."""
    oneof_index = first_oneof_index
    for name, number, ftype, optional in fields:
        field = msg.field.add(
            name=name, number=number, type=ftype, label=_F.LABEL_OPTIONAL, json_name=name
        )
        if optional:
            msg.oneof_decl.add(name=f"_{name}")
            field.oneof_index = oneof_index
            field.proto3_optional = True
            oneof_index += 1


def _simple_file(
    file_name: str, message: str, fields: list[tuple[str, int, int, bool]]
) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name=file_name, syntax="proto3", options=_options(f"{message}Proto")
    )
    _add_scalars(fdp.message_type.add(name=message), fields)
    return fdp


def _wrapper_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="PushDataV3ApiWrapper.proto",
        syntax="proto3",
        dependency=[
            "PrivateOrdersV3Api.proto",
            "PrivateDealsV3Api.proto",
            "PrivateAccountV3Api.proto",
        ],
        options=_options("PushDataV3ApiWrapperProto"),
    )
    msg = fdp.message_type.add(name="PushDataV3ApiWrapper")
    msg.field.add(
        name="channel", number=1, type=_STRING, label=_F.LABEL_OPTIONAL, json_name="channel"
    )
    msg.oneof_decl.add(name="body")  # index 0: the real oneof precedes the synthetic ones
    for name, number, type_name in _WRAPPER_BODY:
        msg.field.add(
            name=name,
            number=number,
            type=_MESSAGE,
            type_name=f".{type_name}",
            label=_F.LABEL_OPTIONAL,
            json_name=name,
            oneof_index=0,
        )
    _add_scalars(msg, _WRAPPER_TAIL, first_oneof_index=1)
    return fdp


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with other registrations
    pool.Add(_simple_file("PrivateOrdersV3Api.proto", "PrivateOrdersV3Api", _PRIVATE_ORDERS))
    pool.Add(_simple_file("PrivateDealsV3Api.proto", "PrivateDealsV3Api", _PRIVATE_DEALS))
    pool.Add(_simple_file("PrivateAccountV3Api.proto", "PrivateAccountV3Api", _PRIVATE_ACCOUNT))
    pool.Add(_wrapper_file())
    names = (
        "PushDataV3ApiWrapper",
        "PrivateOrdersV3Api",
        "PrivateDealsV3Api",
        "PrivateAccountV3Api",
    )
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


_CLASSES = _build()

# Message classes (typed Any: they are generated at run time, there are no stubs).
PushDataV3ApiWrapper: Any = _CLASSES["PushDataV3ApiWrapper"]
PrivateOrdersV3Api: Any = _CLASSES["PrivateOrdersV3Api"]
PrivateDealsV3Api: Any = _CLASSES["PrivateDealsV3Api"]
PrivateAccountV3Api: Any = _CLASSES["PrivateAccountV3Api"]

# PrivateOrdersV3Api.status, from the MEXC docs "Spot Account Orders" table.
STATUS_NEW = 1  # not traded
STATUS_FILLED = 2  # fully traded
STATUS_PARTIALLY_FILLED = 3  # partially traded
STATUS_CANCELED = 4
STATUS_PARTIALLY_CANCELED = 5
STATUS_NAMES: dict[int, str] = {
    STATUS_NEW: "NEW",
    STATUS_FILLED: "FILLED",
    STATUS_PARTIALLY_FILLED: "PARTIALLY_FILLED",
    STATUS_CANCELED: "CANCELED",
    STATUS_PARTIALLY_CANCELED: "PARTIALLY_CANCELED",
}
# Closed only on a status known to end the order: any other int (NEW, PARTIALLY_FILLED, one
# added later) is open, never "nothing open".
CLOSED_STATUS_CODES = frozenset({STATUS_FILLED, STATUS_CANCELED, STATUS_PARTIALLY_CANCELED})

# PrivateOrdersV3Api.orderType ints and the REST `type` names they correspond to.
ORDER_TYPE_NAMES: dict[int, str] = {
    1: "LIMIT",  # LIMIT_ORDER
    2: "LIMIT_MAKER",  # POST_ONLY
    3: "IMMEDIATE_OR_CANCEL",
    4: "FILL_OR_KILL",
    5: "MARKET",  # MARKET_ORDER
    100: "STOP_LIMIT",  # stop-loss / take-profit
}
ORDER_TYPE_CODES: dict[str, int] = {name: code for code, name in ORDER_TYPE_NAMES.items()}

TRADE_TYPE_BUY = 1
TRADE_TYPE_SELL = 2
