"""Binance parsing: REST and ws-api answers as orders, lists and acks; stream frames as events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import orjson

from killswitch.exchanges.base import (
    CancelAck,
    OutcomeUnknown,
    Transient,
)
from killswitch.exchanges.rest import Answer, load_json
from killswitch.model import (
    ExecType,
    ListEvent,
    ListKey,
    OrderEvent,
    OrderKey,
    OrderList,
    StreamEvent,
    StreamTerminated,
)

log = logging.getLogger(__name__)

VENUE = "binance"


# An order is closed only on a status known to end it [BN-ENUMS]: any other (NEW,
# PARTIALLY_FILLED, PENDING_NEW, PENDING_CANCEL, one added later) is open, never "nothing open".
CLOSED_STATUSES = frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"})


_EXEC_TYPES = {
    "NEW": ExecType.NEW,
    "TRADE": ExecType.TRADE,
    "CANCELED": ExecType.CANCELED,
    "EXPIRED": ExecType.EXPIRED,
    "TRADE_PREVENTION": ExecType.EXPIRED,
    "REJECTED": ExecType.REJECTED,
    "REPLACED": ExecType.REPLACED,
}


# -- parsing -------------------------------------------------------------------------------------
async def _gather(*calls: Awaitable[Any]) -> list[Any]:
    """Run calls concurrently; raise the first failure after all have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def rest_answer(status: int, raw: bytes) -> Answer:
    """A REST answer: any JSON under a 2xx is the payload; an error body is `{code, msg}`."""
    body = load_json(raw)
    if 200 <= status < 300 and body is not None:
        return Answer(status, body)
    if isinstance(body, dict):
        code = body.get("code")
        number = int(code) if isinstance(code, int) else None
        return Answer(status, code=number, msg=str(body.get("msg", "")), readable=False)
    return Answer(status, msg=raw[:200].decode("utf-8", "replace"), readable=False)


def _rows(value: Any, what: str, account: str) -> list[Any]:
    """The rows of a list read. Any other shape is unreadable, never "nothing open"."""
    if not isinstance(value, list):
        raise OutcomeUnknown(
            f"{what} answer is a {type(value).__name__}, not a list of rows",
            venue=VENUE,
            account=account,
            endpoint=what,
        )
    return value


def _list_id(value: Any) -> str | None:
    return None if value is None or int(value) < 0 else str(value)


def _order_list(row: dict[str, Any]) -> OrderList:
    legs = row["orders"]
    if not isinstance(legs, list) or not legs:
        raise ValueError("an order list without legs")  # unreadable: OutcomeUnknown
    return OrderList(
        symbol=row["symbol"],
        list_id=str(row["orderListId"]),
        list_client_order_id=row.get("listClientOrderId", ""),
        order_ids=tuple(str(leg["orderId"]) for leg in legs),
        client_order_ids=tuple(leg.get("clientOrderId", "") for leg in legs),
        contingency_type=row.get("contingencyType", "OCO"),
    )


def cancel_ack(result: Any, symbol: str) -> CancelAck:
    """What a cancel answer on `symbol` says went: orders and whole lists, mixed [BN-REST]."""
    items = result if isinstance(result, list) else [result]
    cancelled: list[OrderKey] = []
    lists: list[ListKey] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if "orderReports" in item or "orders" in item:
            # A list is known by its symbol and id: the docs leave open whether list ids, like
            # order ids, are numbered per symbol. The answer names the list's symbol.
            lists.append((str(item.get("symbol") or symbol), str(item["orderListId"])))
            reports = item.get("orderReports") or item.get("orders") or ()
            cancelled.extend((symbol, str(r["orderId"])) for r in reports)
        elif "orderId" in item:
            cancelled.append((symbol, str(item["orderId"])))
    return CancelAck(cancelled=tuple(cancelled), lists_cancelled=tuple(lists))


def parse_frame(raw: str | bytes) -> list[StreamEvent]:
    """Decode one user-stream frame into the events it carries (none for other frames).

    Raises `Transient` for an order or list event it cannot read.
    """
    event = _event_of(raw)
    if event is None:
        return []
    kind = event.get("e")
    try:
        if kind == "executionReport":
            return [execution_report_event(event)]
        if kind == "listStatus":
            return [list_status_event(event)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # An order event we cannot read may hide an open order: end the stream (the supervisor
        # marks a gap and resnapshots) rather than skip it.
        raise Transient(
            f"malformed {kind} event: {type(exc).__name__}",
            venue=VENUE,
            endpoint="ws user stream",
        ) from exc
    if kind in ("eventStreamTerminated", "serverShutdown"):
        return [StreamTerminated(str(kind))]
    return []


def _event_of(raw: str | bytes) -> dict[str, Any] | None:
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("binance user stream sent a frame that is not JSON")
        return None
    if not isinstance(frame, dict):
        return None
    event = frame.get("event")
    return event if isinstance(event, dict) else None


def execution_report_event(ev: dict[str, Any]) -> OrderEvent:
    """An `executionReport` as an `OrderEvent` [BN-UDS]."""
    exec_type = str(ev.get("x", ""))
    status = str(ev.get("X", ""))
    original = ev.get("C") or ""
    # On a cancel `c` is the cancel request's own id; the order's is in `C`.
    client_id = original if exec_type == "CANCELED" and original else str(ev.get("c") or "")
    symbol = str(ev["s"])
    if not symbol:
        raise ValueError("executionReport without a symbol")  # orders are (symbol, id)
    return OrderEvent(
        symbol=symbol,
        order_id=str(ev["i"]),
        client_order_id=client_id,
        exec_type=_EXEC_TYPES.get(exec_type, ExecType.OTHER),
        status=status,
        is_open=status not in CLOSED_STATUSES,
        event_time_ms=int(ev.get("E", 0)),
        side=str(ev.get("S", "")),
        order_type=str(ev.get("o", "")),
        price=str(ev.get("p", "0")),
        orig_qty=str(ev.get("q", "0")),
        last_qty=str(ev.get("l", "0")),
        last_price=str(ev.get("L", "0")),
        list_id=_list_id(ev.get("g")),
    )


def list_status_event(ev: dict[str, Any]) -> ListEvent:
    """A `listStatus` as a `ListEvent`: open until ALL_DONE [BN-UDS]."""
    done = ev.get("l") == "ALL_DONE" or ev.get("L") in ("ALL_DONE", "REJECT")
    return ListEvent(
        symbol=str(ev["s"]),
        list_id=str(ev["g"]),
        list_client_order_id=str(ev.get("C", "")),
        is_open=not done,
        order_ids=tuple(str(leg["i"]) for leg in ev.get("O") or ()),
        event_time_ms=int(ev.get("E", 0)),
    )
