"""BingX wire parsing: envelopes, order rows, execution reports, stream frames, OCO pages."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson

from killswitch.exchanges.base import (
    BatchResult,
    DeadMansSwitchState,
    OutcomeUnknown,
    Transient,
    VenueError,
)
from killswitch.exchanges.bingx.errors import classify, fail_is_gone
from killswitch.exchanges.bingx.venue import (
    CANCEL_ALL_AFTER,
    CANCEL_ORDERS,
    CLOSED_STATUSES,
    GZIP_WBITS,
)
from killswitch.exchanges.rest import Answer, load_json
from killswitch.model import (
    UNREAD_CLIENT_ID,
    UNREAD_DIGITS_ID,
    ExecType,
    Order,
    OrderEvent,
    OrderKey,
    OrderList,
)

log = logging.getLogger(__name__)


# -- wire parsing ---------------------------------------------------------------------------------
def rest_answer(status: int, raw: bytes) -> Answer:
    """A REST answer: the envelope `{code, msg, data}` opened (a code that is not a number is
    -1, no success); a body without a code is the payload itself."""
    body = load_json(raw)
    readable = not raw or body is not None
    if not (isinstance(body, dict) and "code" in body):
        return Answer(status, body, readable=readable)
    try:
        code = int(body["code"])
    except (TypeError, ValueError):
        code = -1
    return Answer(status, body.get("data"), code, str(body.get("msg") or ""), readable)


class MalformedAnswer(ValueError):
    """A venue answer we cannot read; `malformed_is_unknown` reports it as `OutcomeUnknown`."""


def order_id_str(value: object) -> str:
    """An order or list id as a string. Ints and digit strings pass; anything else (a float
    that lost precision, null, a list) means we cannot trust the answer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise MalformedAnswer(f"id arrived as {type(value).__name__}: {value!r}")


def _int(value: object) -> int:
    """A time in ms or s: an int, or a string of digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MalformedAnswer(f"expected an integer, got {type(value).__name__}")
    return int(value)


def num_str(value: object) -> str:
    """A price or quantity as a plain string, whether the venue sent a string or a number."""
    if value is None:
        return "0"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


_EXEC_TYPES = {
    "NEW": ExecType.NEW,
    "TRADE": ExecType.TRADE,
    "CANCELED": ExecType.CANCELED,
    "CANCELLED": ExecType.CANCELED,
    "EXPIRED": ExecType.EXPIRED,
    "REJECTED": ExecType.REJECTED,
}


def decode_frame(frame: bytes | str) -> Any:
    """One server frame as JSON: BingX gzips every frame.

    Raises `OSError`, `EOFError` or `orjson.JSONDecodeError` for a frame that is not gzipped JSON.
    """
    if isinstance(frame, bytes):
        # One gzip member per frame: zlib reads it about twice as fast as gzip.decompress,
        # which stays the fallback for anything else (several members, odd headers).
        inflater = zlib.decompressobj(GZIP_WBITS)
        try:
            text = inflater.decompress(frame)
        except zlib.error:
            text = b""
        if inflater.eof and not inflater.unused_data:
            frame = text
        else:
            try:
                frame = gzip.decompress(frame)
            except zlib.error as exc:  # a corrupt deflate stream behind a valid header
                raise gzip.BadGzipFile(f"corrupt gzip stream: {exc}") from exc
    return orjson.loads(frame)


TEXT_PINGS = frozenset({b"Ping", b"ping", b"PING"})


def is_text_ping(frame: bytes | str) -> bool:
    """A plain-text `Ping` heartbeat, gzipped or not."""
    if isinstance(frame, str):
        return frame.strip() in ("Ping", "ping", "PING")
    if len(frame) > 64:
        return False
    try:
        raw = gzip.decompress(frame) if frame[:2] == b"\x1f\x8b" else frame
    except (OSError, EOFError, zlib.error):
        return False
    return raw.strip() in TEXT_PINGS


def stream_error(msg: dict[str, Any]) -> VenueError | None:
    """The error a stream control message (a subscription answer) reports, if any."""
    code = msg.get("code")
    if "id" not in msg or code in (None, 0):
        return None
    number = code if isinstance(code, int) else -1  # a code we cannot read is no success
    return classify(200, number, str(msg.get("msg") or ""))


def _client_id(data: dict[str, Any], *names: str) -> str:
    """The client id: the first non-empty value under `names`; "" (the order has none) when
    every one present is empty or null; `UNREAD_CLIENT_ID` when none is present.

    Which field holds it is open (reference §3.7: `C` for some clients, `c` for others). In
    Binance's layout, whose letters the event copies, both are sent: `c` is the client id and
    `C` is "" except on a cancel, where `C` is the order's own id and `c` the cancel's. Taking
    the first present would read "" there: a prefixed order out of every prefix scope."""
    present = False
    for name in names:
        if name in data:
            present = True
            if data[name]:
                return str(data[name])
    return "" if present else UNREAD_CLIENT_ID


def parse_execution_report(data: dict[str, Any], list_id: str | None = None) -> OrderEvent:
    """A `spot.executionReport` payload as a normalised `OrderEvent`."""
    status = str(data.get("X", ""))
    return OrderEvent(
        symbol=str(data["s"]),
        order_id=order_id_str(data["i"]),
        client_order_id=_client_id(data, "C", "c"),
        exec_type=_EXEC_TYPES.get(str(data.get("x", "")), ExecType.OTHER),
        status=status,
        is_open=status not in CLOSED_STATUSES,
        event_time_ms=_int(data.get("E") or 0),
        side=str(data.get("S", "")),
        order_type=str(data.get("o", "")),
        price=num_str(data.get("p")),
        orig_qty=num_str(data.get("q")),
        last_qty=num_str(data.get("l")),
        last_price=num_str(data.get("L")),
        list_id=list_id,
    )


def parse_order(data: dict[str, Any], list_id: str | None = None) -> Order:
    """An order from openOrders / query / cancel answers."""
    return Order(
        symbol=str(data["symbol"]),
        order_id=order_id_str(data["orderId"]),
        client_order_id=_client_id(data, "clientOrderID", "clientOrderId"),
        side=str(data.get("side", "")),
        order_type=str(data.get("type", "")),
        price=num_str(data.get("price")),
        orig_qty=num_str(data.get("origQty")),
        executed_qty=num_str(data.get("executedQty")),
        status=str(data.get("status", "")),
        list_id=list_id,
        time_ms=_int(data.get("time") or 0),
    )


def _items(data: Any, key: str, *, read: bool = False) -> list[dict[str, Any]]:
    """The list in `data[key]`, or `data` itself when the venue sent a bare array.

    For a `read` (what is open), an answer without that list (no body, `{}`, rows under
    another key) is unreadable, never "nothing open"; a cancel answer may leave it out.
    """
    if isinstance(data, dict):
        if read and key not in data:
            raise MalformedAnswer(f"{key}: missing from the answer")
        data = data.get(key)
    if data is None:
        if read:
            raise MalformedAnswer(f"{key}: no list in the answer")
        return []
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        # Never skip a row we cannot read: it may be an order that is still open.
        raise MalformedAnswer(f"{key}: expected a list of objects")
    return data


T = TypeVar("T")


async def _gather(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently, wait for all, then raise the first failure (nothing left running)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _OcoList:
    """One open OCO list as `oco/openOrderList` shows it, in either shape (§3.3)."""

    list_id: str
    symbol: str
    legs: tuple[Order, ...]
    list_client_order_id: str = ""


def _leg_order(leg: dict[str, Any], list_id: str, symbol: str | None = None) -> Order:
    return Order(
        symbol=str(symbol or leg["symbol"]),
        order_id=order_id_str(leg["orderId"]),
        client_order_id=_client_id(leg, "clientOrderId", "clientOrderID"),
        side=str(leg.get("side", "")),
        order_type=str(leg.get("orderType") or leg.get("type") or ""),
        price=num_str(leg.get("price")),
        orig_qty=num_str(leg.get("quantity") or leg.get("origQty")),
        status=str(leg.get("status") or "NEW"),
        list_id=list_id,
        time_ms=_int(leg.get("transactionTime") or leg.get("time") or 0),
    )


# The fewest items a page of `oco/openOrderList` is taken to serve when more exist, whatever
# `pageSize` asks (the docs give it no maximum): below it, a short page ends a read at once.
MIN_OCO_PAGE = 10


@dataclass(frozen=True, slots=True)
class OcoPage:
    """One page of `oco/openOrderList`: its open lists, and what took a place on it.

    `items` are the page's legs by id, in order, done lists' too (a list with no leg shown
    stands for itself): the venue's order, whichever unit `pageSize` counts, for the
    multi-page check (`lists.open_oco_lists`). `lists_shown` counts every list on the page."""

    lists: list[_OcoList]
    items: tuple[str, ...]
    lists_shown: int
    shape: str

    def full(self, page_size: int, most: tuple[int, int]) -> bool:
        """May more follow? No source says what `pageSize` counts once the answer is grouped
        by list (§3.3, §3.7): lists, or legs as in the flat shape (a full page of 100 legs is
        50 lists). A page is short only when it is short in both.

        Nor do the docs give `pageSize` a maximum: a venue may serve fewer than asked without
        saying so, and its full page then looks short. A page is short only below what the
        venue surely serves: `most`, the most lists and items a page of this shape has shown
        the account (it serves that many when more exist), and at least `MIN_OCO_PAGE` (the
        one assumption: no venue pages by fewer, whatever is asked). An empty page always
        ends a read."""
        if not self.items and not self.lists_shown:
            return False
        lists_cap = min(page_size, max(MIN_OCO_PAGE, most[0]))
        items_cap = min(page_size, max(MIN_OCO_PAGE, most[1]))
        return self.lists_shown >= lists_cap or len(self.items) >= items_cap


def parse_oco_page(data: Any) -> OcoPage:
    """One page of `oco/openOrderList`.

    docs-v3 and JKorf show a flat array of legs; BingX's 2026 reference shows
    `{"ocoOrders": [{orderListId, symbol, orders: [{orderId, clientOrderId}], ...}]}`. Both are
    read. Anything else (null, `{}`, another key) is a shape we do not know: `MalformedAnswer`,
    never "no lists".
    """
    if isinstance(data, list):
        grouped: dict[str, list[Order]] = {}
        symbols: dict[str, str] = {}
        for leg in data:
            if not isinstance(leg, dict):
                raise MalformedAnswer("oco/openOrderList: a leg is not an object")
            list_id = order_id_str(leg["orderListId"])
            order = _leg_order(leg, list_id)
            grouped.setdefault(list_id, []).append(order)
            symbols.setdefault(list_id, order.symbol)
        # This shape has no list client id: say so, never "" (a list with none). BingX takes
        # only digits for one ("only supports numeric strings", oco/order).
        lists = [
            _OcoList(lid, symbols[lid], tuple(legs), UNREAD_DIGITS_ID)
            for lid, legs in grouped.items()
        ]
        items = tuple(leg.order_id for x in lists for leg in x.legs)
        return OcoPage(lists, items, len(lists), "legs")
    if isinstance(data, dict) and isinstance(data.get("ocoOrders"), list):
        lists = []
        shown: list[str] = []
        for item in data["ocoOrders"]:
            if not isinstance(item, dict) or not isinstance(item.get("orders"), list):
                raise MalformedAnswer("oco/openOrderList: a list without its orders")
            list_id = order_id_str(item["orderListId"])
            for leg in item["orders"]:
                if not isinstance(leg, dict):
                    raise MalformedAnswer("oco/openOrderList: a leg is not an object")
            leg_ids = [order_id_str(leg["orderId"]) for leg in item["orders"]]
            shown.extend(leg_ids or [f"list {list_id}"])
            if str(item.get("listOrderStatus") or "").upper() == "ALL_DONE":
                continue
            symbol = str(item["symbol"])
            legs = []
            for leg in item["orders"]:
                stamped = {"transactionTime": item.get("transactionTime"), **leg}
                legs.append(_leg_order(stamped, list_id, symbol))
            if not legs:
                raise MalformedAnswer("oco/openOrderList: an open list with no legs")
            lists.append(
                _OcoList(list_id, symbol, tuple(legs), str(item.get("listClientOrderId") or ""))
            )
        return OcoPage(lists, tuple(shown), len(data["ocoOrders"]), "ocoOrders")
    raise MalformedAnswer(f"oco/openOrderList: unknown shape {type(data).__name__}")


def snapshot_parts(
    rows: list[dict[str, Any]], oco_lists: list[_OcoList], wanted: list[str] | None
) -> tuple[dict[OrderKey, Order], list[OrderList]]:
    """A snapshot's orders and OCO lists from the open-order rows and the open lists (legs the
    rows do not show are added; lists on symbols not `wanted` are left out)."""
    wanted_set = None if wanted is None else set(wanted)
    orders: dict[OrderKey, Order] = {}
    for row in rows:
        order = parse_order(row)
        orders[order.key] = order
    lists: list[OrderList] = []
    for oco_list in oco_lists:
        if wanted_set is not None and oco_list.symbol not in wanted_set:
            continue
        lists.append(
            OrderList(
                symbol=oco_list.symbol,
                list_id=oco_list.list_id,
                order_ids=tuple(leg.order_id for leg in oco_list.legs),
                client_order_ids=tuple(leg.client_order_id for leg in oco_list.legs),
                list_client_order_id=oco_list.list_client_order_id,
                contingency_type="OCO",
            )
        )
        for leg in oco_list.legs:
            known = orders.get(leg.key)
            if known is None:
                # OCO legs the open-orders read does not list are open orders all the same.
                orders[leg.key] = leg
                continue
            if known.client_order_id == UNREAD_CLIENT_ID:  # the list read shows it
                known = replace(known, client_order_id=leg.client_order_id)
            orders[leg.key] = replace(known, list_id=oco_list.list_id)
    return orders, lists


def batch_result(data: Any, chunk: Sequence[str], venue: str, account: str) -> BatchResult:
    """The answer of `cancelOrders` with `process=1` for the ids of `chunk`: gone, refused for
    a reason we cannot read, or missing from the answer (both `OutcomeUnknown`)."""
    if not isinstance(data, dict):
        raise MalformedAnswer("cancelOrders: answer is not an object")
    cancelled = tuple(order_id_str(o.get("orderId")) for o in _items(data, "orders"))
    gone: list[str] = []
    failed: list[tuple[str, VenueError]] = []
    for fail in _items(data, "fails"):
        order_id = order_id_str(fail.get("orderId"))
        error = str(fail.get("error") or "")
        if fail_is_gone(error):
            gone.append(order_id)
        else:
            # Refused for a reason we cannot read: re-read the venue, then decide.
            failed.append(
                (
                    order_id,
                    OutcomeUnknown(
                        error or "batch cancel refused",
                        venue=venue,
                        account=account,
                        endpoint=f"POST {CANCEL_ORDERS}",
                    ),
                )
            )
    answered = set(cancelled) | set(gone) | {order_id for order_id, _ in failed}
    for order_id in chunk:
        if order_id not in answered:
            # Neither cancelled nor failed: we cannot tell, so the engine must re-read.
            failed.append(
                (
                    order_id,
                    OutcomeUnknown(
                        "id missing from the batch answer",
                        venue=venue,
                        account=account,
                        endpoint=f"POST {CANCEL_ORDERS}",
                    ),
                )
            )
    return BatchResult(cancelled, tuple(gone), tuple(failed))


def dead_mans_switch_state(data: Any, venue: str, account: str) -> DeadMansSwitchState:
    """The answer of `cancelAllAfter`: armed, closed, or refused (`Transient`)."""
    if not isinstance(data, dict):
        raise OutcomeUnknown("cancelAllAfter answer is not an object", venue=venue)
    status = str(data.get("status", ""))
    if status == "ACTIVATED":
        return DeadMansSwitchState(active=True, trigger_time_s=_epoch_s(data.get("triggerTime")))
    if status == "CLOSED":
        return DeadMansSwitchState(active=False)
    if not status and "triggerTime" in data:
        # The 2026 reference's answer: `triggerTime` alone, in ms, 0 once closed (review 43);
        # docs-v3's gives seconds and a status. Either unit reads.
        trigger_s = _epoch_s(data["triggerTime"])
        if trigger_s is None:
            raise OutcomeUnknown("cancelAllAfter triggerTime unreadable", venue=venue)
        return DeadMansSwitchState(active=trigger_s > 0, trigger_time_s=trigger_s or None)
    # FAILED: refused, e.g. while a fired switch is still cancelling [BX-DOC].
    raise Transient(
        f"cancelAllAfter {status or 'no status'}: {data.get('note', '')}",
        venue=venue,
        account=account,
        endpoint=f"POST {CANCEL_ALL_AFTER}",
    )


def _epoch_s(value: Any) -> int | None:
    """An epoch in seconds from seconds or milliseconds (a number or its text); None if not one."""
    try:
        t = int(value)
    except (TypeError, ValueError):
        return None
    return t // 1000 if t > 10**11 else t
