"""MEXC parsing: protobuf pushes, open-orders rows and control frames (moved from the connector)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from websockets.exceptions import ConnectionClosed

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.base import (
    OutcomeUnknown,
    Transient,
)
from killswitch.exchanges.rest import Answer, load_json
from killswitch.exchanges.spot_v3 import order_from_row as order_from_row
from killswitch.model import (
    ExecType,
    OrderEvent,
)

VENUE = "mexc"
MAX_SYMBOLS_PER_CALL = 5
SUBSCRIBE = orjson.dumps({"method": "SUBSCRIPTION", "params": [pb.ORDERS_CHANNEL]}).decode()
PING = '{"method":"PING"}'
INVALID_LISTEN_KEY = "Invalid listen key"


# Errors are classified by `dialect.MEXC`. Codes that mean a key, signature or permission
# problem: an openOrders read refused with one of these is not "symbol required".
AUTH_CODES = frozenset({400, 401, 403, 602, 10072, 700001, 700002, 700006, 700007})
LISTEN_KEY_GONE = 730708


def rest_answer(status: int, raw: bytes) -> Answer:
    """A REST answer: the body is the payload; an error's `code` (sometimes as text) comes with
    `msg` or `message`, under an error status or inside a 200."""
    data = load_json(raw)
    code: int | str | None = None
    msg = ""
    if isinstance(data, dict) and "code" in data and ("msg" in data or "message" in data):
        code = data["code"]
        msg = str(data.get("msg") or data.get("message") or "")
    return Answer(status, data, code, msg, readable=not raw or data is not None)


# -- stream decoding --------------------------------------------------------------------------
_EXEC_TYPES: dict[int, ExecType] = {
    pb.STATUS_NEW: ExecType.NEW,
    pb.STATUS_FILLED: ExecType.TRADE,
    pb.STATUS_PARTIALLY_FILLED: ExecType.TRADE,
    pb.STATUS_CANCELED: ExecType.CANCELED,
    pb.STATUS_PARTIALLY_CANCELED: ExecType.CANCELED,
}


def decode_push(frame: bytes) -> OrderEvent | None:
    """Decode one binary push; an `OrderEvent` for `privateOrders`, None for other bodies.

    Raises `Transient` for a frame that is not a valid push: it may have been an order event,
    so the stream ends and the supervisor resnapshots.
    """
    try:
        wrapper = pb.PushDataV3ApiWrapper.FromString(frame)
    except DecodeError as exc:
        raise Transient(f"corrupt protobuf push: {exc}", venue=VENUE, endpoint="ws") from exc
    if wrapper.WhichOneof("body") != "privateOrders":
        return None
    if not wrapper.symbol:
        # Orders are known by (symbol, id): an order push without its symbol cannot be
        # matched to what the tracker holds, so it is as unreadable as a corrupt one.
        raise Transient("order push without a symbol", venue=VENUE, endpoint="ws")
    o = wrapper.privateOrders
    status = int(o.status)
    return OrderEvent(
        symbol=wrapper.symbol,
        order_id=o.id,
        client_order_id=o.clientId,
        exec_type=_EXEC_TYPES.get(status, ExecType.OTHER),
        status=pb.STATUS_NAMES.get(status, str(status)),
        is_open=status not in pb.CLOSED_STATUS_CODES,
        event_time_ms=int(wrapper.sendTime or wrapper.createTime or o.createTime),
        side="BUY" if o.tradeType == pb.TRADE_TYPE_BUY else "SELL",
        order_type=pb.ORDER_TYPE_NAMES.get(int(o.orderType), str(o.orderType)),
        price=o.price or "0",
        orig_qty=o.quantity or "0",
        last_qty=o.lastDealQuantity if o.HasField("lastDealQuantity") else "0",
        last_price=(o.avgPrice or o.price or "0") if o.HasField("lastDealQuantity") else "0",
        list_id=o.ocoId if o.HasField("ocoId") and o.ocoId else None,
    )


def _close_code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


def _control_msg(frame: str) -> str | None:
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and "msg" in data:
        return str(data["msg"])
    return None


def _rows(answer: Any, account: str) -> list[Any]:
    """The rows of an openOrders read. Any other shape is unreadable, never "nothing open"."""
    if not isinstance(answer, list):
        raise OutcomeUnknown(
            f"openOrders answer is a {type(answer).__name__}, not a list of rows",
            venue=VENUE,
            account=account,
            endpoint="GET /api/v3/openOrders",
        )
    return answer


def _chunks(symbols: Sequence[str]) -> list[list[str]]:
    return [list(symbols[i : i + MAX_SYMBOLS_PER_CALL]) for i in range(0, len(symbols), 5)]


async def _gather_all(coros: Any) -> list[Any]:
    """Run concurrently, wait for all, then raise the first failure (none is left running)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
