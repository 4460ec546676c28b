"""BingX spot connector: signed REST under per-endpoint budgets, and the gzip listenKey stream.

Facts from `reference/exchange-apis.md` §3 [BX-DOC]. Where BingX differs from the others:

* Every answer is an envelope `{"code", "msg", "debugMsg", "data"}`; `code != 0` is an error
  whatever the HTTP status. `classify` maps (status, code, msg) through `CODE_TABLE`, with
  message rules for the codes the venue reuses (100421 is "timestamp mismatch" and also "cancel
  fail, order not exist"; 100400 is "invalid parameter" and also "...FILLED or CANCELLED
  already..."). An answer no rule classifies is `OutcomeUnknown`: re-read, then decide.
* Limits are per UID and API (cancel 5/s; cancelOrders, cancelOpenOrders, oco/cancel 2/s;
  cancelAllAfter 1/s; oco/openOrderList 5/s) and per IP and API (3/s on trade endpoints, 2/s
  on the others), the IP ones shared by every account behind our IP [reference §3.2, §3.5].
  Each is a `SlidingBudget`; the IP ones are shared by every connector to the same host in the
  process. A 100410 carries no Retry-After: we wait until the epoch in its text when it has one,
  else back off briefly with jitter, and block that API (UID and IP budgets) meanwhile. More
  than 20 errors on one API in 480 s lock it: `ErrorCounter` keeps count, and cancels take a
  route that answers "gone" inside a success (`cancelOrders` with `process=1`) when near.
* Order ids are 19-digit integers sent as JSON numbers: they are kept as ints by the parser and
  turned into strings, never floats.
* `openOrders` returns at most 2,000 rows: a read that hits the cap is never presented as
  complete (`Snapshot.complete`); the snapshot reads per symbol over the symbols seen and the
  venue's own symbol list, within the budgets, or says it is incomplete.
* What the sources leave open (§3.7) is learned, not assumed (`LearnedPaths`): whether
  `cancelOpenOrders` covers OCO legs (from its answer and the next read), whether a leg's id
  cancels its list through `cancelOrders` (from a re-read of the open lists after the batch),
  which shape `oco/openOrderList` has (both are read; an unknown one is `OutcomeUnknown`).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import random
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import orjson
from multidict import CIMultiDictProxy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from killswitch.exchanges.base import (
    MALFORMED_ANSWER,
    AlreadyGone,
    BatchResult,
    CancelAck,
    ClockSkew,
    DeadMansSwitchState,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    RateLimits,
    Transient,
    VenueError,
    malformed_is_unknown,
)
from killswitch.exchanges.budget import (
    ErrorCounter,
    Priority,
    RateBudget,
    SlidingBudget,
    acquire_all,
    release_shared,
    shared_budget,
    use_shared,
)
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.http import RawResponse, RestTransport
from killswitch.exchanges.paths import (
    UNREAD_LIST_CLIENT_ID,
    KindRate,
    LearnedPaths,
    PathCapabilities,
)
from killswitch.exchanges.signing import bingx_signed_query
from killswitch.model import (
    ExecType,
    ListEvent,
    Order,
    OrderEvent,
    OrderKey,
    OrderList,
    Snapshot,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)

log = logging.getLogger(__name__)

SPOT = "/openApi/spot/v1"
CANCEL = f"{SPOT}/trade/cancel"
CANCEL_ORDERS = f"{SPOT}/trade/cancelOrders"
CANCEL_OPEN_ORDERS = f"{SPOT}/trade/cancelOpenOrders"
CANCEL_ALL_AFTER = f"{SPOT}/trade/cancelAllAfter"
OPEN_ORDERS = f"{SPOT}/trade/openOrders"
QUERY = f"{SPOT}/trade/query"
OCO_CANCEL = f"{SPOT}/oco/cancel"
OCO_OPEN_LIST = f"{SPOT}/oco/openOrderList"
SERVER_TIME = f"{SPOT}/server/time"
SYMBOLS = f"{SPOT}/common/symbols"
USER_DATA_STREAM = "/openApi/user/auth/userDataStream"
EXECUTION_REPORT = "spot.executionReport"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer

OPEN_STATUSES = frozenset({"NEW", "PENDING", "PARTIALLY_FILLED"})
OPEN_ORDERS_MAX = 2000  # [BX-DOC]: openOrders returns at most 2000 orders
OCO_PAGE_SIZE = 100
CLOCK_MARGIN_MS = 5.0  # floor of the margin for our clock error (which is under one round trip)
OCO_MAX_PAGES = 100
# Per-symbol reads a capped snapshot may spend to see past the cap (2/s per IP: ~15 s).
MAX_SYMBOL_READS = 30
PER_SYMBOL_READS_FIRST = 2  # more symbols than this: try one no-symbol read first
SYMBOLS_TTL_S = 600.0
# UNVERIFIED: the spot docs give no maximum for `orderIds`; swap's batch cancel caps at 10.
BATCH_CANCEL_MAX = 10
# recvWindow: the common parameters say at most 5000 ms; other pages say 60000 (§3.7).
RECV_WINDOW_MAX_MS = 5000
# A 100410 without an epoch: back off this long, doubling per repeat, with jitter (§3.5).
# A 100410 without an epoch: 2-2.5 s for the first three in a row (a per-second limit and its
# penalty are over by then), then doubling to at most 16 s while the venue keeps refusing.
BACKOFF_INITIAL_S = 2.0
BACKOFF_FLAT_REPEATS = 3
BACKOFF_MAX_S = 16.0
EPOCH_MARGIN_S = 0.05  # arrive after the named epoch, not on it: plus our clock's round trip
# The error lock: more than 20 answers with an error code on one API in 480 s [§3.5].
ERROR_LOCK_COUNT = 20
ERROR_LOCK_WINDOW_S = 480.0

# Requests per second per UID and API [reference §3.2/§3.3, corrected 2026-12-06]. openOrders,
# query and the listenKey calls have no stricter figure than docs-v3's 10/s.
ENDPOINT_RPS: dict[str, int] = {
    CANCEL: 5,
    CANCEL_ORDERS: 2,
    CANCEL_OPEN_ORDERS: 2,
    CANCEL_ALL_AFTER: 1,
    OPEN_ORDERS: 10,
    QUERY: 10,
    OCO_CANCEL: 2,
    OCO_OPEN_LIST: 5,
    USER_DATA_STREAM: 10,
}
# Requests per second per IP and API, shared by every account behind the IP: 3/s on the trade
# endpoints (IP group 3), 2/s on the others (group 2) [BingX 2026 reference, §3.5].
IP_RPS: dict[str, int] = {
    CANCEL: 3,
    CANCEL_ORDERS: 3,
    CANCEL_OPEN_ORDERS: 3,
    CANCEL_ALL_AFTER: 2,
    OPEN_ORDERS: 2,
    QUERY: 2,
    OCO_CANCEL: 2,
    OCO_OPEN_LIST: 2,
}
# Market endpoints (server time, symbols) and every account API count in IP groups of 100 and
# 1000 per 10 s [BX-DOC "基础信息"]: one budget per connector well inside both.
GROUP_LIMITS = RateLimits(weight_per_window=100, window_s=10.0)
BUDGET_MARGIN_S = 0.1  # a venue second is counted as 1.1 s of ours (skew, network spread)


# "Query API KEY permissions" codes (readiness): which let this key trade and cancel spot.
API_PERMISSION_SPOT_TRADING = 1
API_PERMISSION_NAMES = {
    1: "SPOT_TRADING",
    2: "READ",
    3: "PERPETUAL_TRADING",
    4: "UNIVERSAL_TRANSFER",
    5: "WITHDRAW",
    7: "SUB_ACCOUNT_TRANSFER",
}


def _kind_rate(kind: str, path: str) -> KindRate:
    limit = min(ENDPOINT_RPS[path], IP_RPS.get(path, ENDPOINT_RPS[path]))
    return KindRate(kind, limit, limit / (1.0 + BUDGET_MARGIN_S))


RATES = (
    _kind_rate("cancel_all", CANCEL_OPEN_ORDERS),
    _kind_rate("cancel_all_account", CANCEL_OPEN_ORDERS),
    _kind_rate("cancel_orders", CANCEL_ORDERS),
    _kind_rate("cancel_order", CANCEL),
    _kind_rate("cancel_list", OCO_CANCEL),
)

CAPABILITIES = PathCapabilities(
    cancel_all_max_symbols=1,
    cancel_all_without_symbol=True,
    cancel_all_covers_lists=False,  # UNVERIFIED (§3.7): learned per account, see `learned`
    batch_cancel_max=BATCH_CANCEL_MAX,
    has_order_lists=True,
    open_orders_without_symbol=True,
    dead_mans_switch=True,
    dead_mans_switch_range_s=(10, 120),
    rate_limits=RateLimits(
        weight_per_window=2,
        window_s=1.0,
        cancel_weight=1,
        snapshot_weight=2,  # openOrders + the first page of oco/openOrderList
        snapshot_symbol_weight=1,
        list_snapshot_weight=1,
        max_requests_per_s=2.0,
    ),
    lists_coverage=None,
    list_legs_by_batch=None,
    rates=RATES,
)

# -- error classification ---------------------------------------------------------------------

ErrorClass = type[VenueError]

CODE_TABLE: dict[int, ErrorClass] = {
    80016: AlreadyGone,  # order does not exist
    80018: AlreadyGone,  # order already filled
    100404: AlreadyGone,  # "Order does not exist. The order may have been filled or cancelled."
    109421: AlreadyGone,  # ccxt: OrderNotFound
    100410: RateLimited,  # rate limited / endpoint disabled / error-count lock
    100500: OutcomeUnknown,  # internal system error: a cancel may have been applied
    101500: OutcomeUnknown,  # rpc timeout: re-read state
    100503: Transient,  # server busy
    80012: Transient,  # service unavailable
    80019: Transient,  # order being processed
    100001: Fatal,  # signature verification failed
    100412: Fatal,  # null signature
    100413: Fatal,  # incorrect or null apiKey
    100004: Fatal,  # permission denied
    100419: Fatal,  # IP not on the whitelist
    100414: Fatal,  # account under risk control
    80014: Fatal,  # invalid parameter
    100204: Fatal,  # no data / symbol not found
    100202: Fatal,  # insufficient balance
    100490: Fatal,  # symbol offline
}

# (code, lowercase fragment, class): the first rule whose fragment is in the message decides.
# 100421 and 100400 are reused for unrelated answers: only the message says which. A 100421 or
# 100400 that no rule names is OutcomeUnknown (CODE_TABLE has neither on purpose).
MESSAGE_RULES: tuple[tuple[int, str, ErrorClass], ...] = (
    (100421, "order not exist", AlreadyGone),  # spot docs: "cancel fail, order not exist"
    (100421, "timestamp", ClockSkew),  # "Null timestamp or timestamp mismatch"
    (100421, "system is busy", Transient),
    (100421, "not available", Fatal),  # "The symbol you request is not available..."
    (100421, "not exist", Fatal),  # "CheckUserAndSymbol: contract not exist"
    (100421, "prohibit", Fatal),  # "traders prohibit openApi from placing orders"
    (100400, "filled or cancelled already", AlreadyGone),
    (100400, "not a valid order id", AlreadyGone),
    (100400, "order not exist", AlreadyGone),
    (100400, "system is busy", Transient),
    (100400, "once per second", Transient),
    (100400, "miss arguments", Fatal),
    (100400, "invalid", Fatal),
    (100400, "recvwindow", Fatal),
    (100404, "api path", Fatal),  # the general table: 100404 is also "wrong API path"
)

# Batch `fails[].error` texts that mean the order is not open any more.
GONE_FRAGMENTS = (
    "not exist",
    ":canceled",
    ":cancelled",
    ":filled",
    "already filled",
    "filled or cancelled already",
)

# A 13-digit epoch in ms, not part of a longer number (a 19-digit order id).
_EPOCH_MS = re.compile(r"(?<!\d)(\d{13})(?!\d)")


def classify(
    http_status: int,
    code: int | None,
    msg: str,
    *,
    retry_after_s: float | None = None,
    now_ms: float | None = None,
) -> VenueError | None:
    """Map a BingX answer to the taxonomy; None when it is a success.

    `code` is the envelope's business code (None when the body had none). HTTP 429/418 and 5xx
    decide before the code: a 5xx leaves the outcome unknown whatever the body says. A 403 is a
    firewall or rate block (BingX's WAF), not proof of a bad key. `now_ms` is the venue's time,
    to turn an epoch in a 100410's text into a wait (the host's clock when not given).
    """
    kw: dict[str, Any] = {"venue": "bingx", "http_status": http_status, "code": code}
    if http_status == 418:
        wait = _retry_after(retry_after_s, msg, now_ms)
        return IpBanned(msg or "IP banned", retry_after_s=wait, **kw)
    if http_status == 429 or (http_status == 403 and code in (None, 0, 100410)):
        return RateLimited(
            msg or f"HTTP {http_status}",
            retry_after_s=_retry_after(retry_after_s, msg, now_ms),
            **kw,
        )
    if http_status >= 500:
        return OutcomeUnknown(msg or f"HTTP {http_status}", **kw)
    if code is None or code == 0:
        if 200 <= http_status < 300:
            return None
        if http_status == 401:
            return Fatal(msg or "HTTP 401", **kw)  # [BX-DOC]: 401 = invalid API key
        return OutcomeUnknown(msg or f"HTTP {http_status}", **kw)
    lowered = msg.lower()
    cls: ErrorClass | None = None
    for rule_code, fragment, rule_cls in MESSAGE_RULES:
        if rule_code == code and fragment in lowered:
            cls = rule_cls
            break
    if cls is None:
        # Nobody can say what an unknown answer did: re-read the venue and decide from that.
        cls = CODE_TABLE.get(code, OutcomeUnknown)
    if cls is RateLimited:
        return RateLimited(msg, retry_after_s=_retry_after(retry_after_s, msg, now_ms), **kw)
    return cls(msg, **kw)


def epoch_in(msg: str) -> int | None:
    """The epoch in ms a 100410's text names ("...unblocked after 1727193814249",
    "...can retry after time: 1727193970155"), or None."""
    found = _EPOCH_MS.findall(msg)
    return int(found[-1]) if found else None


def _retry_after(header_s: float | None, msg: str, now_ms: float | None) -> float:
    if header_s is not None and math.isfinite(header_s):
        return max(0.0, header_s)
    epoch = epoch_in(msg)
    if epoch is not None:
        now = time.time() * 1000 if now_ms is None else now_ms
        return max(0.0, (epoch - now) / 1000.0)
    # No epoch and no header: a brief backoff, never a blanket 5-minute lock (§3.5). The
    # connector replaces it with its own escalating, jittered one.
    return BACKOFF_INITIAL_S


def fail_is_gone(error: str) -> bool:
    """True when a batch cancel's `fails[].error` says the order is no longer open."""
    lowered = error.lower().replace(" ", "")
    return any(fragment.replace(" ", "") in lowered for fragment in GONE_FRAGMENTS)


# -- wire parsing ---------------------------------------------------------------------------------


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


def parse_execution_report(data: dict[str, Any], list_id: str | None = None) -> OrderEvent:
    """A `spot.executionReport` payload as a normalised `OrderEvent`."""
    status = str(data.get("X", ""))
    return OrderEvent(
        symbol=str(data["s"]),
        order_id=order_id_str(data["i"]),
        client_order_id=str(data.get("C") or data.get("c") or ""),
        exec_type=_EXEC_TYPES.get(str(data.get("x", "")), ExecType.OTHER),
        status=status,
        is_open=status in OPEN_STATUSES,
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
        client_order_id=str(data.get("clientOrderID") or data.get("clientOrderId") or ""),
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


# -- the connector --------------------------------------------------------------------------------


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
        client_order_id=str(leg.get("clientOrderId") or leg.get("clientOrderID") or ""),
        side=str(leg.get("side", "")),
        order_type=str(leg.get("orderType") or leg.get("type") or ""),
        price=num_str(leg.get("price")),
        orig_qty=num_str(leg.get("quantity") or leg.get("origQty")),
        status=str(leg.get("status") or "NEW"),
        list_id=list_id,
        time_ms=_int(leg.get("transactionTime") or leg.get("time") or 0),
    )


def parse_oco_page(data: Any) -> tuple[list[_OcoList], int, str]:
    """One page of `oco/openOrderList`: (lists, items on the page, shape).

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
        # This shape has no list client id: say so, never "" (a list with none).
        lists = [
            _OcoList(lid, symbols[lid], tuple(legs), UNREAD_LIST_CLIENT_ID)
            for lid, legs in grouped.items()
        ]
        return lists, len(data), "legs"
    if isinstance(data, dict) and isinstance(data.get("ocoOrders"), list):
        lists = []
        for item in data["ocoOrders"]:
            if not isinstance(item, dict) or not isinstance(item.get("orders"), list):
                raise MalformedAnswer("oco/openOrderList: a list without its orders")
            if str(item.get("listOrderStatus") or "").upper() == "ALL_DONE":
                continue
            list_id = order_id_str(item["orderListId"])
            symbol = str(item["symbol"])
            legs = []
            for leg in item["orders"]:
                if not isinstance(leg, dict):
                    raise MalformedAnswer("oco/openOrderList: a leg is not an object")
                stamped = {"transactionTime": item.get("transactionTime"), **leg}
                legs.append(_leg_order(stamped, list_id, symbol))
            if not legs:
                raise MalformedAnswer("oco/openOrderList: an open list with no legs")
            lists.append(
                _OcoList(list_id, symbol, tuple(legs), str(item.get("listClientOrderId") or ""))
            )
        return lists, len(data["ocoOrders"]), "ocoOrders"
    raise MalformedAnswer(f"oco/openOrderList: unknown shape {type(data).__name__}")


class BingxExchange:
    """One BingX spot account."""

    venue = "bingx"

    def __init__(
        self,
        *,
        account: str,
        api_key: str,
        api_secret: str,
        key_type: str = "hmac",
        rest_url: str,
        ws_url: str,
        timeout_s: float = 5.0,
        recv_window_ms: int = 5000,
        clock_refresh_s: float = 60.0,
        heartbeat_timeout_s: float = 15.0,
        listen_key_refresh_s: float = 1800.0,
        warm_connections: int = 4,
        budget_clock: Callable[[], float] | None = None,
        budget_sleep: Callable[[float], Awaitable[None]] | None = None,
        learned_path: Path | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if key_type != "hmac":
            raise ValueError(f"BingX keys are HMAC only, not {key_type!r}")
        self.account = account
        self.timeout_s = timeout_s
        # The strictest reading of the docs caps recvWindow at 5000 ms (§3.7).
        self.recv_window_ms = min(recv_window_ms, RECV_WINDOW_MAX_MS)
        self.clock_refresh_s = clock_refresh_s
        # Three missed server pings (one every 5 s) mean the stream is dead [BX-DOC heartbeat].
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.listen_key_refresh_s = listen_key_refresh_s
        self.warm_connections = warm_connections
        self._api_key = api_key
        self._secret = api_secret
        self._headers = {"X-BX-APIKEY": api_key}
        self._transport = RestTransport(
            rest_url, venue=self.venue, account=account, timeout_s=timeout_s
        )
        self._ws_url = _stream_url(ws_url)
        self.clock = ServerClock()
        self._rng = rng or random.Random()
        # Fixed 10 s windows follow the venue's clock; the per-second budgets slide, so their
        # alignment to any clock does not matter.
        group_clock = budget_clock or (lambda: self.clock.now_ms() / 1000.0)
        clock = budget_clock or time.monotonic
        sleep = budget_sleep or asyncio.sleep
        self.group_budget = RateBudget(GROUP_LIMITS, clock=group_clock, sleep=sleep)
        self.budgets: dict[str, SlidingBudget] = {
            path: SlidingBudget(
                rps, margin_s=BUDGET_MARGIN_S, name=f"uid {path}", clock=clock, sleep=sleep
            )
            for path, rps in ENDPOINT_RPS.items()
        }
        self._ip_scope = rest_url.rstrip("/")
        use_shared(self._ip_scope)
        self.ip_budgets: dict[str, SlidingBudget] = {
            path: shared_budget(
                self._ip_scope,
                f"ip {path}",
                rps,
                margin_s=BUDGET_MARGIN_S,
                clock=clock,
                sleep=sleep,
            )
            for path, rps in IP_RPS.items()
        }
        self.errors = ErrorCounter(ERROR_LOCK_COUNT, ERROR_LOCK_WINDOW_S, clock=clock)
        self._backoffs: dict[str, int] = {}  # path -> 100410s without an epoch in a row
        self.learned = LearnedPaths.load(learned_path)
        self._started = False
        self._closed = False
        self._sync_task: asyncio.Task[None] | None = None
        self._list_legs: dict[str, tuple[str, ...]] = {}  # OCO list id -> leg order ids
        self._leg_list: dict[str, str] = {}  # leg order id -> OCO list id
        self._list_symbol: dict[str, str] = {}  # OCO list id -> symbol
        # A cancel-all without symbol: when it was acknowledged (monotonic), when it was sent
        # (venue ms), and the lists a read had shown open before it. A later read that still
        # shows a list placed before it says the cancel-all does not cover OCO legs.
        self._cancel_all_acked: tuple[float, int, frozenset[str]] | None = None
        self._list_time: dict[str, int] = {}  # OCO list id -> when placed (venue ms)
        self._venue_symbols: tuple[float, tuple[str, ...]] | None = None
        self._list_cancels = 0  # list cancels sent (oco/cancel, leg ids in a batch)
        self._oco_read_lock = asyncio.Lock()
        self._oco_read: tuple[float, list[_OcoList], bool] | None = None
        self._list_cancels_at_send = 0

    def __repr__(self) -> str:
        return f"BingxExchange(account={self.account!r})"

    @property
    def capabilities(self) -> PathCapabilities:
        """The static facts, plus what this account has taught us (§3.7)."""
        covers = self.learned.cancel_all_covers_lists
        return replace(
            CAPABILITIES,
            cancel_all_covers_lists=covers is True,
            lists_coverage=covers,
            list_legs_by_batch=self.learned.leg_id_cancels_list,
        )

    def learned_paths(self) -> dict[str, object]:
        """What this account has taught us, for status and events."""
        return self.learned.to_json()

    def on_learned(self, listener: Callable[[str, bool | str], None]) -> None:
        """Call `listener(name, value)` whenever this account teaches us something new (an
        event for the audit log: "bingx/mm-1 learned leg_id_cancels_list=False")."""
        self.learned.listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------
    @malformed_is_unknown
    async def start(self) -> None:
        """Open the pool, measure the clock offset, warm connections, keep the clock fresh."""
        if self._started:
            raise RuntimeError("BingxExchange.start() called twice")
        if self._closed:
            raise RuntimeError("BingxExchange is closed")
        await self._transport.start()
        # Only the clock must be measured; the other requests just open pooled connections.
        warm = [self._warm() for _ in range(self.warm_connections - 1)]
        await _gather([self.clock.sync(self._fetch_time_background), *warm])
        self._started = True  # a failed start may be retried
        self._sync_task = asyncio.create_task(
            self.clock.keep_synced(self._fetch_time_background, self.clock_refresh_s),
            name=f"bingx-clock-{self.account}",
        )
        log.info(
            "bingx connector started account=%s offset_ms=%.1f rtt_ms=%.1f",
            self.account,
            self.clock.offset_ms,
            self.clock.last_rtt_ms,
        )

    async def close(self) -> None:
        """Stop the clock task and close the pool. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        release_shared(self._ip_scope)
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._transport.close()

    async def __aenter__(self) -> BingxExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _warm(self) -> None:
        try:
            await self._fetch_time(Priority.BACKGROUND)
        except VenueError as exc:
            log.info("bingx warm-up request failed account=%s error=%s", self.account, exc)

    # -- time ------------------------------------------------------------------------------
    async def _fetch_time(self, priority: Priority) -> int:
        data = await self._request("GET", SERVER_TIME, signed=False, priority=priority)
        return _int(data["serverTime"])

    async def _fetch_time_background(self) -> int:
        return await self._fetch_time(Priority.BACKGROUND)

    async def _fetch_time_kill(self) -> int:
        return await self._fetch_time(Priority.KILL)

    @malformed_is_unknown
    async def server_time_ms(self) -> int:
        """Ask the venue for its time (one request)."""
        return await self._fetch_time(Priority.BACKGROUND)

    @malformed_is_unknown
    async def resync_clock(self) -> None:
        """Measure the server-time offset again now."""
        await self.clock.sync(self._fetch_time_kill)
        log.info(
            "bingx clock resynced account=%s offset_ms=%.1f", self.account, self.clock.offset_ms
        )

    # -- requests --------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        signed: bool = True,
        priority: Priority = Priority.KILL,
    ) -> Any:
        """Send one request and return the envelope's `data`; on ClockSkew resync, retry once."""
        try:
            return await self._send(method, path, params, signed, priority)
        except ClockSkew:
            if not signed:
                raise
            log.warning("bingx clock skew account=%s endpoint=%s: resyncing", self.account, path)
            await self.resync_clock()
            return await self._send(method, path, params, signed, priority)

    def _path_budgets(self, path: str) -> list[SlidingBudget]:
        return [b for b in (self.budgets.get(path), self.ip_budgets.get(path)) if b is not None]

    async def _send(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]],
        signed: bool,
        priority: Priority,
    ) -> Any:
        if self.errors.count(path) >= ERROR_LOCK_COUNT - 1:
            # One more error would lock this API for minutes: do not send what may earn it.
            raise RateLimited(
                "error-count lock ahead: holding this API",
                retry_after_s=max(1.0, self.errors.clear_in_s(path)),
                venue=self.venue,
                account=self.account,
                endpoint=f"{method} {path}",
            )
        await self.group_budget.acquire(1, priority)
        budgets = self._path_budgets(path)
        if budgets:
            await acquire_all(budgets, priority, self.account)
        if signed:
            pairs = sorted(
                [
                    *params,
                    ("recvWindow", str(self.recv_window_ms)),
                    ("timestamp", str(self.clock.now_ms())),
                ]
            )
            query = bingx_signed_query(self._secret, pairs)
        else:
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        response = await self._transport.request(method, path, query=query, headers=self._headers)
        return self._answer(response, method, path)

    def _answer(self, response: RawResponse, method: str, path: str) -> Any:
        headers = response.headers
        body: Any = None
        if response.body:
            try:
                body = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                body = None
        code: int | None = None
        msg = ""
        if isinstance(body, dict) and "code" in body:
            try:
                code = int(body["code"])
            except (TypeError, ValueError):
                code = -1
            msg = str(body.get("msg") or "")
        header = _header_float(headers)
        error = classify(
            response.status, code, msg, retry_after_s=header, now_ms=self.clock.now_ms()
        )
        if error is not None:
            error.account = self.account
            error.endpoint = f"{method} {path}"
            if isinstance(error, IpBanned):
                self.group_budget.block(error.retry_after_s, banned=True)
                for budget in [*self.budgets.values(), *self.ip_budgets.values()]:
                    budget.block(error.retry_after_s)
                log.error(
                    "bingx IP banned account=%s endpoint=%s retry_after_s=%.0f",
                    self.account,
                    path,
                    error.retry_after_s,
                )
            elif isinstance(error, RateLimited):
                self._throttled(error, path, msg, header)
            elif code not in (None, 0):
                self.errors.record(path)
            raise error
        self._backoffs.pop(path, None)
        if response.body and body is None:
            # A 2xx we cannot read: for a cancel, it may or may not have been applied.
            raise OutcomeUnknown(
                "unreadable answer",
                venue=self.venue,
                account=self.account,
                http_status=response.status,
                endpoint=f"{method} {path}",
            )
        if isinstance(body, dict) and "code" in body:
            return body.get("data")
        return body

    def _throttled(self, error: RateLimited, path: str, msg: str, header: float | None) -> None:
        """A 100410 (or 429/403): hold this API, on our UID budget and the shared IP one,
        until the epoch its text names, else for a short jittered backoff that doubles while
        the venue keeps refusing. Which dimension refused is not said, so both wait."""
        if epoch_in(msg) is None and header is None:
            repeats = self._backoffs.get(path, 0)
            self._backoffs[path] = repeats + 1
            doublings = max(0, repeats - BACKOFF_FLAT_REPEATS + 1)
            base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**doublings)
            error.retry_after_s = base * (1.0 + 0.25 * self._rng.random())
        elif header is None:
            # An epoch read on our estimate of the venue's clock: leave room for its error.
            error.retry_after_s += EPOCH_MARGIN_S + self.clock.last_rtt_ms / 1000.0
        budgets = self._path_budgets(path)
        for budget in budgets:
            budget.block(error.retry_after_s)
        if not budgets:
            self.group_budget.block(error.retry_after_s)
        log.warning(
            "bingx rate limited account=%s endpoint=%s retry_after_s=%.1f msg=%r",
            self.account,
            path,
            error.retry_after_s,
            msg[:120],
        )

    # -- reads -----------------------------------------------------------------------------
    @malformed_is_unknown
    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders and OCO lists: one no-symbol read, or one read per symbol given.

        `complete` is False when any read may have been cut short: a page of 2,000 rows (the
        venue's cap), OCO pages that never ended, or symbols a capped read could not cover
        within `MAX_SYMBOL_READS`. Such a snapshot lists what is open, never proves flat.
        """
        read_at = self.clock.now_ms()
        started = time.monotonic()
        wanted = None if symbols is None else list(dict.fromkeys(symbols))
        oco_task = asyncio.ensure_future(self._open_oco_lists(priority))
        try:
            rows, complete = await self._open_order_rows(wanted, priority)
        finally:
            oco_done = await asyncio.gather(oco_task, return_exceptions=True)
        oco = oco_done[0]
        if isinstance(oco, BaseException):
            raise oco
        oco_lists, oco_complete = oco
        self._index_lists(oco_lists, oco_complete, started)
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
                elif known.list_id != oco_list.list_id:
                    orders[leg.key] = replace(known, list_id=oco_list.list_id)
        return Snapshot(
            tuple(orders.values()),
            tuple(lists),
            read_at,
            complete=complete and oco_complete,
        )

    async def _open_order_rows(
        self, symbols: list[str] | None, priority: Priority
    ) -> tuple[list[dict[str, Any]], bool]:
        """Open-order rows and whether they are surely all of them."""
        if symbols is not None and len(symbols) > PER_SYMBOL_READS_FIRST:
            # One no-symbol read covers them all when it is under the cap: one request
            # against the 2/s per-IP budget instead of one a symbol.
            rows = await self._open_orders(None, priority)
            if len(rows) < OPEN_ORDERS_MAX:
                asked = set(symbols)
                return [row for row in rows if str(row.get("symbol")) in asked], True
        if symbols is not None:
            batches = await _gather([self._open_orders(s, priority) for s in symbols])
            capped = [s for s, b in zip(symbols, batches, strict=True) if len(b) >= OPEN_ORDERS_MAX]
            if capped:
                log.warning(
                    "bingx openOrders capped account=%s symbols=%s: snapshot incomplete",
                    self.account,
                    capped,
                )
            return [row for batch in batches for row in batch], not capped
        rows = await self._open_orders(None, priority)
        if len(rows) < OPEN_ORDERS_MAX:
            return rows, True
        # The no-symbol read hit its cap: what it left out may be on any symbol. Read each
        # symbol seen, and each the venue lists, on its own; or say the read is incomplete.
        seen = list(dict.fromkeys(str(row.get("symbol") or "") for row in rows))
        complete = True
        try:
            listed = await self.venue_symbols(priority)
        except VenueError as exc:
            log.warning("bingx symbol list unreadable account=%s: %s", self.account, exc)
            listed, complete = (), False
        wanted = list(dict.fromkeys([*seen, *listed]))
        if len(wanted) > MAX_SYMBOL_READS:
            log.warning(
                "bingx openOrders capped account=%s: %d symbols to read, over %d: incomplete",
                self.account,
                len(wanted),
                MAX_SYMBOL_READS,
            )
            wanted, complete = [s for s in seen if s][:MAX_SYMBOL_READS], False
        log.warning(
            "bingx openOrders hit its cap account=%s: reading %d symbols",
            self.account,
            len(wanted),
        )
        per_symbol, each_complete = await self._open_order_rows([s for s in wanted if s], priority)
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for row in [*rows, *per_symbol]:
            merged[(str(row.get("symbol")), str(row.get("orderId")))] = row
        return list(merged.values()), complete and each_complete

    async def venue_symbols(self, priority: Priority = Priority.KILL) -> tuple[str, ...]:
        """The venue's spot symbols (`common/symbols`), cached for `SYMBOLS_TTL_S`."""
        cached = self._venue_symbols
        if cached is not None and time.monotonic() - cached[0] < SYMBOLS_TTL_S:
            return cached[1]
        data = await self._request("GET", SYMBOLS, signed=False, priority=priority)
        rows = _items(data, "symbols", read=True)
        if not rows:
            raise MalformedAnswer("common/symbols: no symbols")
        listed = tuple(dict.fromkeys(str(row["symbol"]) for row in rows))
        self._venue_symbols = (time.monotonic(), listed)
        return listed

    async def _open_orders(self, symbol: str | None, priority: Priority) -> list[dict[str, Any]]:
        params = [("symbol", symbol)] if symbol else []
        try:
            data = await self._request("GET", OPEN_ORDERS, params, priority=priority)
        except AlreadyGone as exc:  # a read has nothing to be "gone": we cannot read this
            raise OutcomeUnknown(exc.msg, venue=self.venue, account=self.account) from exc
        return _items(data, "orders", read=True)

    async def _open_oco_lists(self, priority: Priority) -> tuple[list[_OcoList], bool]:
        """Every open OCO list, page by page; and False when the pages never ended."""
        found: dict[str, _OcoList] = {}
        for page in range(1, OCO_MAX_PAGES + 1):
            try:
                data = await self._request(
                    "GET",
                    OCO_OPEN_LIST,
                    [("pageIndex", str(page)), ("pageSize", str(OCO_PAGE_SIZE))],
                    priority=priority,
                )
            except AlreadyGone as exc:
                raise OutcomeUnknown(exc.msg, venue=self.venue, account=self.account) from exc
            lists, items, shape = parse_oco_page(data)
            if self.learned.oco_list_shape != shape:
                self.learned.learn("oco_list_shape", shape)
            for oco_list in lists:
                prior = found.get(oco_list.list_id)
                if prior is None:
                    found[oco_list.list_id] = oco_list
                else:  # a list's legs split over two pages of legs
                    found[oco_list.list_id] = replace(prior, legs=prior.legs + oco_list.legs)
            if items < OCO_PAGE_SIZE:
                return list(found.values()), True
        log.warning("bingx oco/openOrderList never ended account=%s: incomplete", self.account)
        return list(found.values()), False

    def _index_lists(self, lists: list[_OcoList], complete: bool, started: float) -> None:
        """Keep the leg <-> list maps, and learn from lists a cancel-all left behind."""
        list_legs = {x.list_id: tuple(leg.order_id for leg in x.legs) for x in lists}
        placed = {
            x.list_id: min((leg.time_ms for leg in x.legs if leg.time_ms > 0), default=0)
            for x in lists
        }
        if complete:
            # Every complete OCO read lists all open lists: it replaces what we knew.
            self._list_legs = list_legs
            self._leg_list = {leg: lid for lid, legs in list_legs.items() for leg in legs}
            self._list_symbol = {x.list_id: x.symbol for x in lists}
            self._list_time = placed
        else:
            self._list_legs.update(list_legs)
            self._leg_list.update({leg: lid for lid, legs in list_legs.items() for leg in legs})
            self._list_symbol.update({x.list_id: x.symbol for x in lists})
            self._list_time.update(placed)
        acked = self._cancel_all_acked
        if acked is None or started <= acked[0]:
            return
        _, sent_ms, before = acked
        # A list placed after the cancel-all reached the venue but stamped before `sent_ms`
        # by our clock's error would be misread as a survivor: keep that error out. (A wrong
        # "not covered" costs list requests, never correctness.)
        margin_ms = max(CLOCK_MARGIN_MS, self.clock.last_rtt_ms)
        # Placed before the cancel-all reached the venue (with a margin for our clock's
        # error), or seen open before it: still open now means it was not covered.
        survivors = [
            lid for lid, when in placed.items() if lid in before or 0 < when < sent_ms - margin_ms
        ]
        if survivors:
            self.learned.learn("cancel_all_covers_lists", False)
        elif (
            before
            and complete
            and not (before & set(list_legs))
            and self._list_cancels_at_send == self._list_cancels
        ):
            # Every list open before it is gone, and we sent no list cancel since.
            self.learned.learn("cancel_all_covers_lists", True)
        self._cancel_all_acked = None

    @malformed_is_unknown
    async def query_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.BACKGROUND
    ) -> Order:
        """One order by id, open or not."""
        data = await self._request(
            "GET", QUERY, [("orderId", order_id), ("symbol", symbol)], priority=priority
        )
        if not isinstance(data, dict):
            raise OutcomeUnknown("query answer is not an object", venue=self.venue)
        return parse_order(data, self._leg_list.get(order_id))

    # -- cancels ---------------------------------------------------------------------------
    @malformed_is_unknown
    async def cancel_all(
        self, symbols: Sequence[str] | None, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """`cancelOpenOrders`: no symbol cancels every order; else one call per symbol.

        Whether it also cancels OCO legs is learned: legs in its answer say yes; a list that
        was open when it was acknowledged and is still open in a later read says no.
        """
        if symbols is None:
            before = frozenset(self._list_legs)
            sent_ms = self.clock.now_ms()
            self._list_cancels_at_send = self._list_cancels
            acks = [await self._cancel_open_orders(None, priority)]
            self._cancel_all_acked = (time.monotonic(), sent_ms, before)
            legs = {key[1] for key in acks[0]} & set(self._leg_list)
            if legs:
                self.learned.learn("cancel_all_covers_lists", True)
        else:
            acks = await _gather(
                [self._cancel_open_orders(s, priority) for s in dict.fromkeys(symbols)]
            )
        keys = tuple(k for ack in acks for k in ack)
        lists = tuple(dict.fromkeys(self._leg_list[k[1]] for k in keys if k[1] in self._leg_list))
        return CancelAck(cancelled=keys, lists_cancelled=lists)

    async def _cancel_open_orders(self, symbol: str | None, priority: Priority) -> list[OrderKey]:
        params = [("symbol", symbol)] if symbol else []
        try:
            data = await self._request("POST", CANCEL_OPEN_ORDERS, params, priority=priority)
        except AlreadyGone:
            return []  # nothing open on that symbol is not an error
        return [
            (str(o.get("symbol") or symbol or ""), order_id_str(o["orderId"]))
            for o in _items(data, "orders")
        ]

    @malformed_is_unknown
    async def cancel_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel one order. Raises `AlreadyGone` when it is not open.

        Near the error lock on `cancel`, the id goes through `cancelOrders` with `process=1`,
        where "gone" is an entry in a success, not one more error. An OCO leg answered "gone"
        is checked against the open lists: a leg the venue would not cancel by id has its
        list cancelled through `oco/cancel`.
        """
        if self.errors.near(CANCEL):
            result = await self.cancel_orders(symbol, [order_id], priority=priority)
            if result.failed:
                raise result.failed[0][1]
            if result.gone:
                raise AlreadyGone(
                    "order not open", venue=self.venue, account=self.account, endpoint=CANCEL
                )
            return CancelAck(cancelled=((symbol, order_id),))
        try:
            await self._request(
                "POST", CANCEL, [("orderId", order_id), ("symbol", symbol)], priority=priority
            )
        except AlreadyGone:
            if not self._may_be_refused_leg(order_id):
                raise
            rescued = await self._settle_legs(symbol, {order_id}, priority, batch=True)
            if not rescued:
                raise
            return CancelAck(
                cancelled=tuple((symbol, leg) for leg in rescued[1]), lists_cancelled=rescued[0]
            )
        list_id = self._leg_list.get(order_id)
        if list_id is not None:
            self.learned.learn("leg_id_cancels_list", True)  # it took a leg's id
        return CancelAck(
            cancelled=((symbol, order_id),), lists_cancelled=(list_id,) if list_id else ()
        )

    @malformed_is_unknown
    async def cancel_orders(
        self, symbol: str, order_ids: Sequence[str], *, priority: Priority = Priority.KILL
    ) -> BatchResult:
        """`cancelOrders` with `process=1`, in chunks of `batch_cancel_max`, concurrently.

        OCO legs among the ids: if the venue answers one "gone" while its list is still open
        (it would not cancel a list by a leg's id), the list is cancelled through `oco/cancel`
        and the account remembers to plan lists that way.
        """
        ids = list(dict.fromkeys(order_ids))
        chunks = [ids[i : i + BATCH_CANCEL_MAX] for i in range(0, len(ids), BATCH_CANCEL_MAX)]
        results = await asyncio.gather(
            *(self._cancel_chunk(symbol, chunk, priority) for chunk in chunks),
            return_exceptions=True,
        )
        cancelled: list[str] = []
        gone: list[str] = []
        failed: list[tuple[str, VenueError]] = []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, VenueError):
                failed.extend((order_id, result) for order_id in chunk)
            elif isinstance(result, BaseException):
                raise result
            else:
                cancelled.extend(result.cancelled)
                gone.extend(result.gone)
                failed.extend(result.failed)
        # "Gone" may hide an OCO leg the venue would not cancel by id, one of a list placed
        # since our last read of the lists too: check them against a fresh read.
        legs_said_gone = {i for i in gone if self._may_be_refused_leg(i)}
        legs_cancelled = {i for i in cancelled if i in self._leg_list}
        if legs_cancelled:
            # The venue cancelled a leg by its id: its list went with it, or the next read
            # shows the other leg (and the planner sends it again).
            self.learned.learn("leg_id_cancels_list", True)
            legs_said_gone = {i for i in legs_said_gone if i in self._leg_list}
        if legs_said_gone:
            settled = await self._settle_legs(symbol, legs_said_gone, priority, batch=True)
            if settled:
                rescued = set(settled[1])
                gone = [i for i in gone if i not in rescued]
                cancelled.extend(i for i in settled[1] if i not in cancelled)
        return BatchResult(tuple(cancelled), tuple(gone), tuple(failed))

    def _may_be_refused_leg(self, order_id: str) -> bool:
        """Could a "gone" answer for `order_id` be a refused OCO leg? Yes for a known leg; and
        for any id while the account has not shown that leg ids are taken (a list placed since
        our last read of the lists is not known yet)."""
        return order_id in self._leg_list or self.learned.leg_id_cancels_list is not True

    async def _lists_read_after(
        self, after: float, priority: Priority
    ) -> tuple[list[_OcoList], bool]:
        """The open OCO lists, from a read that started after `after` (monotonic): one read
        serves every caller waiting at once."""
        async with self._oco_read_lock:
            cached = self._oco_read
            if cached is not None and cached[0] > after:
                return cached[1], cached[2]
            started = time.monotonic()
            lists, complete = await self._open_oco_lists(priority)
            self._index_lists(lists, complete, started)
            self._oco_read = (started, lists, complete)
            return lists, complete

    async def _settle_legs(
        self, symbol: str, legs: set[str], priority: Priority, *, batch: bool = False
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Ids the venue called gone: re-read the open lists; cancel through `oco/cancel` the
        lists still open that hold one of them. Returns (list ids cancelled, their leg ids), or
        None when every one really was gone."""
        lists, _ = await self._lists_read_after(time.monotonic(), priority)
        still_open = {x.list_id: x for x in lists if any(leg.order_id in legs for leg in x.legs)}
        if not still_open:
            return None
        if batch:
            self.learned.learn("leg_id_cancels_list", False)
        log.info(
            "bingx OCO legs refused by id account=%s lists=%d: cancelling through oco/cancel",
            self.account,
            len(still_open),
        )
        acks = await asyncio.gather(
            *(self._oco_cancel(x.legs[0].order_id, priority) for x in still_open.values()),
            return_exceptions=True,
        )
        done_lists: list[str] = []
        done_legs: list[str] = []
        for oco_list, ack in zip(still_open.values(), acks, strict=True):
            if isinstance(ack, AlreadyGone) or ack is None:
                done_lists.append(oco_list.list_id)
                done_legs.extend(leg.order_id for leg in oco_list.legs)
            elif isinstance(ack, BaseException):
                raise ack
        return tuple(done_lists), tuple(done_legs)

    async def _oco_cancel(self, leg_id: str, priority: Priority) -> None:
        self._list_cancels += 1
        await self._request("POST", OCO_CANCEL, [("orderId", leg_id)], priority=priority)

    @malformed_is_unknown
    async def _cancel_chunk(self, symbol: str, chunk: list[str], priority: Priority) -> BatchResult:
        if any(i in self._leg_list for i in chunk):
            self._list_cancels += 1
        data = await self._request(
            "POST",
            CANCEL_ORDERS,
            [("orderIds", ",".join(chunk)), ("process", "1"), ("symbol", symbol)],
            priority=priority,
        )
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
                            venue=self.venue,
                            account=self.account,
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
                            venue=self.venue,
                            account=self.account,
                            endpoint=f"POST {CANCEL_ORDERS}",
                        ),
                    )
                )
        return BatchResult(cancelled, tuple(gone), tuple(failed))

    @malformed_is_unknown
    async def cancel_order_list(
        self, symbol: str, list_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """`oco/cancel` by one leg's id: it cancels the whole OCO.

        Near the error lock on `oco/cancel` (each list already gone adds an error there), a
        batch cancel of the legs goes instead when the venue is known to take leg ids.
        """
        legs = self._list_legs.get(list_id)
        if legs is None:
            lists, complete = await self._open_oco_lists(priority)
            self._index_lists(lists, complete, time.monotonic())
            legs = self._list_legs.get(list_id)
        if not legs:
            raise AlreadyGone(
                f"no open OCO list {list_id}",
                venue=self.venue,
                account=self.account,
                endpoint=f"POST {OCO_CANCEL}",
            )
        symbol = self._list_symbol.get(list_id, symbol)
        if self.errors.near(OCO_CANCEL) and self.learned.leg_id_cancels_list:
            result = await self.cancel_orders(symbol, list(legs), priority=priority)
            if result.failed:
                raise result.failed[0][1]
            return CancelAck(
                cancelled=tuple((symbol, leg) for leg in result.cancelled + result.gone),
                lists_cancelled=(list_id,),
            )
        await self._oco_cancel(legs[0], priority)
        return CancelAck(cancelled=tuple((symbol, leg) for leg in legs), lists_cancelled=(list_id,))

    def _forget_list(self, list_id: str) -> None:
        self._list_symbol.pop(list_id, None)
        for order_id in self._list_legs.pop(list_id, ()):
            self._leg_list.pop(order_id, None)

    # -- readiness -----------------------------------------------------------------------------
    @malformed_is_unknown
    async def account_permissions(self) -> dict[str, object]:
        """May this key trade and cancel spot? `GET /openApi/v1/account/apiPermissions`
        (BingX "Query API KEY permissions", background), for readiness checks only.

        The answer lists permission codes: 1 spot trading, 2 read, 3 perpetual futures
        trading, 4 universal transfer, 5 withdraw, 7 sub-account transfer."""
        data = await self._request(
            "GET", "/openApi/v1/account/apiPermissions", priority=Priority.BACKGROUND
        )
        codes = [int(c) for c in data["permissions"]]
        return {
            "can_trade": API_PERMISSION_SPOT_TRADING in codes,
            "permissions": [API_PERMISSION_NAMES.get(c, str(c)) for c in codes],
            "detail": "no SPOT_TRADING permission",
        }

    # -- dead man's switch -----------------------------------------------------------------
    @malformed_is_unknown
    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        """`cancelAllAfter` ACTIVATE: everything is cancelled `timeout_s` (10-120) from now."""
        low, high = CAPABILITIES.dead_mans_switch_range_s or (10, 120)
        if not low <= timeout_s <= high:
            raise Fatal(
                f"cancelAllAfter timeOut must be {low}-{high} s, not {timeout_s}",
                venue=self.venue,
                account=self.account,
            )
        return await self._cancel_all_after([("timeOut", str(timeout_s)), ("type", "ACTIVATE")])

    @malformed_is_unknown
    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        """`cancelAllAfter` CLOSE."""
        return await self._cancel_all_after([("type", "CLOSE")])

    async def _cancel_all_after(self, params: list[tuple[str, str]]) -> DeadMansSwitchState:
        data = await self._request("POST", CANCEL_ALL_AFTER, params)
        if not isinstance(data, dict):
            raise OutcomeUnknown("cancelAllAfter answer is not an object", venue=self.venue)
        status = str(data.get("status", ""))
        if status == "ACTIVATED":
            return DeadMansSwitchState(active=True, trigger_time_s=int(data.get("triggerTime", 0)))
        if status == "CLOSED":
            return DeadMansSwitchState(active=False)
        # FAILED: refused, e.g. while a fired switch is still cancelling [BX-DOC].
        raise Transient(
            f"cancelAllAfter {status or 'no status'}: {data.get('note', '')}",
            venue=self.venue,
            account=self.account,
            endpoint=f"POST {CANCEL_ALL_AFTER}",
        )

    # -- user-data stream ------------------------------------------------------------------
    @malformed_is_unknown
    async def create_listen_key(self, *, priority: Priority = Priority.BACKGROUND) -> str:
        """`POST userDataStream`: a key valid for 1 h."""
        data = await self._request("POST", USER_DATA_STREAM, priority=priority)
        key = data.get("listenKey") if isinstance(data, dict) else None
        if not key:
            raise Transient("no listenKey in the answer", venue=self.venue, account=self.account)
        return str(key)

    @malformed_is_unknown
    async def extend_listen_key(self, key: str) -> bool:
        """`PUT userDataStream`: False when the venue no longer knows the key (404)."""
        try:
            await self._request(
                "PUT",
                USER_DATA_STREAM,
                [("listenKey", key)],
                priority=Priority.BACKGROUND,
            )
        except VenueError as exc:
            if exc.http_status == 404:
                return False
            raise
        return True

    def user_stream(self) -> AsyncIterator[StreamEvent]:
        """Connect one user-data stream and yield normalised events until it ends."""
        return self._stream()

    async def _stream(self) -> AsyncIterator[StreamEvent]:
        key = await self.create_listen_key()
        url = f"{self._ws_url}?listenKey={key}"
        try:
            ws = await connect(
                url,
                ping_interval=None,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                max_size=1 << 22,
                compression=None,
            )
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise Transient(
                f"stream connect failed: {type(exc).__name__}",
                venue=self.venue,
                account=self.account,
                endpoint="ws /market",
            ) from exc
        expired = asyncio.Event()
        keepalive = asyncio.create_task(
            self._keep_listen_key(key, ws, expired), name=f"bingx-listenkey-{self.account}"
        )
        try:
            subscribe = {"id": str(uuid.uuid4()), "reqType": "sub", "dataType": EXECUTION_REPORT}
            try:
                await ws.send(orjson.dumps(subscribe).decode())
            except ConnectionClosed as exc:
                raise Transient(
                    "stream closed before the subscription",
                    venue=self.venue,
                    account=self.account,
                    endpoint="ws /market",
                ) from exc
            async for event in self._frames(ws, key, expired, str(subscribe["id"])):
                yield event
                if isinstance(event, StreamTerminated):
                    return
        finally:
            keepalive.cancel()
            await asyncio.wait([keepalive])
            await ws.close()

    async def _frames(
        self, ws: ClientConnection, key: str, expired: asyncio.Event, sub_id: str
    ) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        subscribed = False
        last_ping = loop.time()
        while True:
            wait_s = last_ping + self.heartbeat_timeout_s - loop.time()
            try:
                async with asyncio.timeout(max(wait_s, 0.001)):
                    frame = await ws.recv()
            except TimeoutError:
                raise Transient(
                    f"no server ping for {self.heartbeat_timeout_s:.1f}s",
                    venue=self.venue,
                    account=self.account,
                    endpoint="ws /market",
                ) from None
            except ConnectionClosed as exc:
                if expired.is_set() or not await self._key_alive(key):
                    yield StreamTerminated("listenKey expired")
                    return
                raise Transient(
                    f"stream closed: code={exc.rcvd.code if exc.rcvd else None}",
                    venue=self.venue,
                    account=self.account,
                    endpoint="ws /market",
                ) from exc
            if is_text_ping(frame):
                # The plain-text heartbeat (docs-v3's rules page, swap streams): `Ping` ->
                # `Pong`. Spot documents JSON; a venue may send either (§3.7).
                last_ping = loop.time()
                try:
                    await ws.send("Pong")
                except ConnectionClosed:
                    continue
                continue
            try:
                msg = decode_frame(frame)
            except (OSError, EOFError, orjson.JSONDecodeError) as exc:
                if isinstance(frame, str):
                    # Order events come gzipped; stray text cannot be one of them.
                    log.warning("bingx unexpected text frame account=%s", self.account)
                    continue
                # A binary frame we cannot read may have been an order event: resnapshot.
                raise Transient(
                    f"undecodable stream frame: {type(exc).__name__}",
                    venue=self.venue,
                    account=self.account,
                    endpoint="ws /market",
                ) from exc
            if not isinstance(msg, dict):
                continue
            if "ping" in msg:
                last_ping = loop.time()
                pong = {"pong": msg["ping"], "time": msg.get("time", "")}
                try:
                    await ws.send(orjson.dumps(pong).decode())
                except ConnectionClosed:
                    continue  # the next recv() reports the close
                continue
            if msg.get("dataType") == EXECUTION_REPORT and isinstance(msg.get("data"), dict):
                for event in self._order_events(msg["data"]):
                    yield event
                continue
            if not subscribed and msg.get("id") == sub_id and msg.get("code") == 0:
                subscribed = True
                yield StreamSubscribed()
                continue
            error = stream_error(msg)
            if error is not None:
                error.account = self.account
                error.endpoint = "ws /market subscribe"
                raise error

    def _order_events(self, data: dict[str, Any]) -> list[StreamEvent]:
        """The events one `spot.executionReport` payload means; `Transient` if unreadable."""
        try:
            order_id = order_id_str(data.get("i"))
            list_id = self._leg_list.get(order_id)
            event = parse_execution_report(data, list_id)
        except MALFORMED_ANSWER as exc:
            # An order event we cannot read may hide an open order: end the stream so the
            # supervisor resnapshots, rather than skip it.
            raise Transient(
                f"malformed executionReport: {type(exc).__name__}",
                venue=self.venue,
                account=self.account,
                endpoint="ws /market",
            ) from exc
        if list_id is None or event.is_open:
            return [event]
        # One OCO leg done ends the list (the other leg is cancelled with it) [BX-DOC].
        legs = self._list_legs.get(list_id, (order_id,))
        self._forget_list(list_id)
        return [
            event,
            ListEvent(
                symbol=event.symbol,
                list_id=list_id,
                list_client_order_id="",
                is_open=False,
                order_ids=legs,
                event_time_ms=event.event_time_ms,
            ),
        ]

    async def _key_alive(self, key: str) -> bool:
        """After a close: is the key still valid? Bounded, so a blocked budget (a ban) cannot
        hold the stream open; when we cannot tell, the close is reported as a drop."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.extend_listen_key(key)
        except asyncio.CancelledError:
            raise
        except (VenueError, TimeoutError):
            return True

    async def _keep_listen_key(
        self, key: str, ws: ClientConnection, expired: asyncio.Event
    ) -> None:
        """Extend the key every `listen_key_refresh_s`; close the stream once it is gone."""
        while True:
            await asyncio.sleep(self.listen_key_refresh_s)
            try:
                alive = await self.extend_listen_key(key)
            except asyncio.CancelledError:
                raise
            except VenueError as exc:
                log.warning(
                    "bingx listenKey keep-alive failed account=%s error=%s", self.account, exc
                )
                continue
            if not alive:
                log.warning("bingx listenKey expired account=%s", self.account)
                expired.set()
                await ws.close()
                return


def _stream_url(ws_url: str) -> str:
    """The `/market` endpoint: a bare host gets the documented path appended."""
    base = ws_url.rstrip("/")
    return base if urlsplit(base).path else f"{base}/market"


def _observe(budget: RateBudget, headers: CIMultiDictProxy[str]) -> None:
    remaining = headers.get("X-RateLimit-Requests-Remain")
    if remaining is not None and remaining.lstrip("-").isdigit():
        budget.observe_remaining(int(remaining))


def _header_float(headers: CIMultiDictProxy[str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
