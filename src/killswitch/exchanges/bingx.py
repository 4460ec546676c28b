"""BingX spot connector: signed REST under per-endpoint budgets, and the gzip listenKey stream.

Facts from `reference/exchange-apis.md` §3 [BX-DOC]. Where BingX differs from the others:

* Every answer is an envelope `{"code", "msg", "debugMsg", "data"}`; `code != 0` is an error
  whatever the HTTP status. `classify` maps (status, code, msg) through `CODE_TABLE`, with
  message rules for the codes the venue reuses (100421 is "timestamp mismatch" and also "cancel
  fail, order not exist"; 100400 is "invalid parameter" and also "...FILLED or CANCELLED
  already...").
* Limits are per UID and per API (a cancel endpoint 10/s), plus IP groups of 1000 per 10 s. A
  429 disables that API for about 5 minutes, so a 429 blocks only that endpoint's budget; a
  418 (IP ban) blocks them all.
* Order ids are 19-digit integers sent as JSON numbers: they are kept as ints by the parser and
  turned into strings, never floats.
* `cancelOpenOrders` without a symbol cancels every order; whether it removes OCO legs is not
  documented, so capabilities say it does not and lists are cancelled with `oco/cancel`.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
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
    Capabilities,
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
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.http import RawResponse, RestTransport
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
USER_DATA_STREAM = "/openApi/user/auth/userDataStream"
EXECUTION_REPORT = "spot.executionReport"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer

OPEN_STATUSES = frozenset({"NEW", "PENDING", "PARTIALLY_FILLED"})
OPEN_ORDERS_MAX = 2000  # [BX-DOC]: openOrders returns at most 2000 orders
OCO_PAGE_SIZE = 100
OCO_MAX_PAGES = 100
# UNVERIFIED: the docs give no maximum for `orderIds`; 20 per call is a conservative guess.
BATCH_CANCEL_MAX = 20
# [BX-DOC]: a throttled API "recovers after 5 minutes" when no Retry-After says otherwise.
DEFAULT_PENALTY_S = 300.0

# Requests per second per UID and API [BX-DOC "3-现货/5-交易"; reference §3.2/§3.3]. The docs
# say 10/s for cancelAllAfter in its header and "1 time/1s" in its text: we keep to 1/s.
ENDPOINT_RPS: dict[str, int] = {
    CANCEL: 10,
    CANCEL_ORDERS: 10,
    CANCEL_OPEN_ORDERS: 10,
    CANCEL_ALL_AFTER: 1,
    OPEN_ORDERS: 10,
    QUERY: 10,
    OCO_CANCEL: 10,
    OCO_OPEN_LIST: 5,
    SERVER_TIME: 10,  # market IP group: 100 per 10 s
    USER_DATA_STREAM: 10,
}
# The account IP groups allow 1000 requests per 10 s in total [BX-DOC "基础信息"].
GROUP_LIMITS = RateLimits(weight_per_window=1000, window_s=10.0)

CAPABILITIES = Capabilities(
    cancel_all_max_symbols=1,
    cancel_all_without_symbol=True,
    cancel_all_covers_lists=False,  # UNVERIFIED in the docs: sweep OCO lists explicitly
    batch_cancel_max=BATCH_CANCEL_MAX,
    has_order_lists=True,
    open_orders_without_symbol=True,
    dead_mans_switch=True,
    dead_mans_switch_range_s=(10, 120),
    rate_limits=RateLimits(
        weight_per_window=1000,
        window_s=10.0,
        cancel_weight=1,
        snapshot_weight=2,  # openOrders + the first page of oco/openOrderList
        snapshot_symbol_weight=1,
        list_snapshot_weight=1,
        max_requests_per_s=10.0,
    ),
)

# -- error classification ---------------------------------------------------------------------

ErrorClass = type[VenueError]

CODE_TABLE: dict[int, ErrorClass] = {
    80016: AlreadyGone,  # order does not exist
    80018: AlreadyGone,  # order already filled
    109421: AlreadyGone,  # ccxt: OrderNotFound
    100410: RateLimited,  # rate limited / endpoint disabled for a while
    100421: ClockSkew,  # "Null timestamp or timestamp mismatch" (reused: see MESSAGE_RULES)
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
    100400: Fatal,  # invalid parameter (reused: see MESSAGE_RULES)
    80014: Fatal,  # invalid parameter
    100204: Fatal,  # no data / symbol not found
    100202: Fatal,  # insufficient balance
    100490: Fatal,  # symbol offline
}

# (code, lowercase fragment, class): the first rule whose fragment is in the message decides.
MESSAGE_RULES: tuple[tuple[int, str, ErrorClass], ...] = (
    (100421, "order not exist", AlreadyGone),  # spot docs: "cancel fail, order not exist"
    (100421, "timestamp", ClockSkew),
    (100421, "system is busy", Transient),
    (100421, "not available", Fatal),  # "The symbol you request is not available..."
    (100421, "not exist", Fatal),  # "CheckUserAndSymbol: contract not exist"
    (100421, "prohibit", Fatal),  # "traders prohibit openApi from placing orders"
    (100400, "filled or cancelled already", AlreadyGone),
    (100400, "not a valid order id", AlreadyGone),
    (100400, "order not exist", AlreadyGone),
    (100400, "system is busy", Transient),
    (100400, "once per second", Transient),
)

# Batch `fails[].error` texts that mean the order is not open any more.
GONE_FRAGMENTS = ("not exist", ":canceled", ":cancelled", ":filled", "already filled")

_EPOCH_MS = re.compile(r"(\d{13})")


def classify(
    http_status: int, code: int | None, msg: str, *, retry_after_s: float | None = None
) -> VenueError | None:
    """Map a BingX answer to the taxonomy; None when it is a success.

    `code` is the envelope's business code (None when the body had none). HTTP 429/418 and 5xx
    decide before the code: a 5xx leaves the outcome unknown whatever the body says.
    """
    kw: dict[str, Any] = {"venue": "bingx", "http_status": http_status, "code": code}
    if http_status == 418:
        return IpBanned(msg or "IP banned", retry_after_s=_retry_after(retry_after_s, msg), **kw)
    if http_status == 429:
        return RateLimited(
            msg or "rate limited", retry_after_s=_retry_after(retry_after_s, msg), **kw
        )
    if http_status >= 500:
        return OutcomeUnknown(msg or f"HTTP {http_status}", **kw)
    if code is None or code == 0:
        if 200 <= http_status < 300:
            return None
        return Fatal(msg or f"HTTP {http_status}", **kw)
    lowered = msg.lower()
    cls: ErrorClass | None = None
    for rule_code, fragment, rule_cls in MESSAGE_RULES:
        if rule_code == code and fragment in lowered:
            cls = rule_cls
            break
    if cls is None:
        # An unknown code was answered, so most likely not applied: retry after a backoff and
        # let the engine's deadline and verification decide, rather than abandon the account.
        cls = CODE_TABLE.get(code, Transient)
    if cls is RateLimited:
        return RateLimited(msg, retry_after_s=_retry_after(retry_after_s, msg), **kw)
    return cls(msg, **kw)


def _retry_after(header_s: float | None, msg: str) -> float:
    if header_s is not None:
        return max(0.0, header_s)
    # "...will be unblocked after 1727193814249" / "can retry after time: 1727193970155"
    found = _EPOCH_MS.findall(msg)
    if found:
        return max(0.0, int(found[-1]) / 1000.0 - time.time())
    return DEFAULT_PENALTY_S


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


def _items(data: Any, key: str) -> list[dict[str, Any]]:
    """The list in `data[key]`, or `data` itself when the venue sent a bare array."""
    if isinstance(data, dict):
        data = data.get(key)
    if data is None:
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
    ) -> None:
        if key_type != "hmac":
            raise ValueError(f"BingX keys are HMAC only, not {key_type!r}")
        self.account = account
        self.capabilities = CAPABILITIES
        self.timeout_s = timeout_s
        self.recv_window_ms = recv_window_ms
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
        # Budget windows follow the venue's clock, so our seconds are its seconds.
        clock = budget_clock or (lambda: self.clock.now_ms() / 1000.0)
        sleep = budget_sleep or asyncio.sleep
        self.group_budget = RateBudget(GROUP_LIMITS, clock=clock, sleep=sleep)
        self.budgets: dict[str, RateBudget] = {
            path: RateBudget(
                RateLimits(weight_per_window=rps, window_s=1.0), clock=clock, sleep=sleep
            )
            for path, rps in ENDPOINT_RPS.items()
        }
        self._started = False
        self._closed = False
        self._sync_task: asyncio.Task[None] | None = None
        self._list_legs: dict[str, tuple[str, ...]] = {}  # OCO list id -> leg order ids
        self._leg_list: dict[str, str] = {}  # leg order id -> OCO list id

    def __repr__(self) -> str:
        return f"BingxExchange(account={self.account!r})"

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

    async def _send(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]],
        signed: bool,
        priority: Priority,
    ) -> Any:
        budget = self.budgets.get(path)
        await self.group_budget.acquire(1, priority)
        if budget is not None:
            await budget.acquire(1, priority)
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
        return self._answer(response, method, path, budget)

    def _answer(
        self, response: RawResponse, method: str, path: str, budget: RateBudget | None
    ) -> Any:
        headers = response.headers
        if budget is not None:
            _observe(budget, headers)
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
        error = classify(response.status, code, msg, retry_after_s=_header_float(headers))
        if error is not None:
            error.account = self.account
            error.endpoint = f"{method} {path}"
            if isinstance(error, IpBanned):
                self.group_budget.block(error.retry_after_s, banned=True)
                log.error(
                    "bingx IP banned account=%s endpoint=%s retry_after_s=%.0f",
                    self.account,
                    path,
                    error.retry_after_s,
                )
            elif isinstance(error, RateLimited):
                (budget or self.group_budget).block(error.retry_after_s)
                log.warning(
                    "bingx rate limited account=%s endpoint=%s retry_after_s=%.1f",
                    self.account,
                    path,
                    error.retry_after_s,
                )
            raise error
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

    # -- reads -----------------------------------------------------------------------------
    @malformed_is_unknown
    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders and OCO lists: one no-symbol read, or one read per symbol given."""
        read_at = self.clock.now_ms()
        if symbols is None:
            order_reads = [self._open_orders(None, priority)]
        else:
            order_reads = [self._open_orders(s, priority) for s in dict.fromkeys(symbols)]
        results = await _gather([self._open_oco_legs(priority), *order_reads])
        legs, order_batches = results[0], results[1:]
        wanted = None if symbols is None else set(symbols)
        orders: dict[str, Order] = {}
        lists = self._lists_from_legs(legs, wanted)
        for batch in order_batches:
            orders.update((o.order_id, o) for o in map(parse_order, batch))
        if symbols is None and len(orders) >= OPEN_ORDERS_MAX:
            # The no-symbol read is capped: read each symbol seen on its own to see past it.
            log.warning("bingx openOrders hit its cap account=%s: reading per symbol", self.account)
            per_symbol = await _gather(
                [self._open_orders(s, priority) for s in {o.symbol for o in orders.values()}]
            )
            for batch in per_symbol:
                orders.update((o.order_id, o) for o in map(parse_order, batch))
        for leg in legs:
            symbol = str(leg["symbol"])
            if wanted is not None and symbol not in wanted:
                continue
            order_id = order_id_str(leg["orderId"])
            list_id = order_id_str(leg["orderListId"])
            known = orders.get(order_id)
            if known is None:
                # OCO legs the open-orders read does not list are open orders all the same.
                orders[order_id] = Order(
                    symbol=symbol,
                    order_id=order_id,
                    client_order_id=str(leg.get("clientOrderId") or ""),
                    side=str(leg.get("side", "")),
                    order_type=str(leg.get("orderType", "")),
                    price=num_str(leg.get("price")),
                    orig_qty=num_str(leg.get("quantity")),
                    status=str(leg.get("status") or "NEW"),
                    list_id=list_id,
                    time_ms=_int(leg.get("transactionTime") or 0),
                )
            elif known.list_id != list_id:
                orders[order_id] = replace(known, list_id=list_id)
        return Snapshot(tuple(orders.values()), tuple(lists), read_at)

    async def _open_orders(self, symbol: str | None, priority: Priority) -> list[dict[str, Any]]:
        params = [("symbol", symbol)] if symbol else []
        data = await self._request("GET", OPEN_ORDERS, params, priority=priority)
        return _items(data, "orders")

    async def _open_oco_legs(self, priority: Priority) -> list[dict[str, Any]]:
        legs: list[dict[str, Any]] = []
        for page in range(1, OCO_MAX_PAGES + 1):
            data = await self._request(
                "GET",
                OCO_OPEN_LIST,
                [("pageIndex", str(page)), ("pageSize", str(OCO_PAGE_SIZE))],
                priority=priority,
            )
            batch = _items(data, "orders")
            legs.extend(batch)
            if len(batch) < OCO_PAGE_SIZE:
                break
        return legs

    def _lists_from_legs(
        self, legs: list[dict[str, Any]], wanted: set[str] | None
    ) -> list[OrderList]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for leg in legs:
            grouped.setdefault(order_id_str(leg["orderListId"]), []).append(leg)
        # Every OCO read lists all open lists: it replaces what we knew, so the maps stay small.
        list_legs: dict[str, tuple[str, ...]] = {}
        leg_list: dict[str, str] = {}
        lists: list[OrderList] = []
        for list_id, members in grouped.items():
            order_ids = tuple(order_id_str(m["orderId"]) for m in members)
            list_legs[list_id] = order_ids
            for order_id in order_ids:
                leg_list[order_id] = list_id
            symbol = str(members[0]["symbol"])
            if wanted is not None and symbol not in wanted:
                continue
            lists.append(
                OrderList(
                    symbol=symbol,
                    list_id=list_id,
                    order_ids=order_ids,
                    client_order_ids=tuple(str(m.get("clientOrderId") or "") for m in members),
                    contingency_type="OCO",
                )
            )
        self._list_legs, self._leg_list = list_legs, leg_list
        return lists

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
        """`cancelOpenOrders`: no symbol cancels every order; else one call per symbol."""
        if symbols is None:
            acks = [await self._cancel_open_orders(None, priority)]
        else:
            acks = await _gather(
                [self._cancel_open_orders(s, priority) for s in dict.fromkeys(symbols)]
            )
        return CancelAck(cancelled=tuple(i for ack in acks for i in ack))

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
        """Cancel one order. Raises `AlreadyGone` when it is not open."""
        await self._request(
            "POST", CANCEL, [("orderId", order_id), ("symbol", symbol)], priority=priority
        )
        return CancelAck(cancelled=((symbol, order_id),))

    @malformed_is_unknown
    async def cancel_orders(
        self, symbol: str, order_ids: Sequence[str], *, priority: Priority = Priority.KILL
    ) -> BatchResult:
        """`cancelOrders` with `process=1`, in chunks of `batch_cancel_max`, concurrently."""
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
        return BatchResult(tuple(cancelled), tuple(gone), tuple(failed))

    @malformed_is_unknown
    async def _cancel_chunk(self, symbol: str, chunk: list[str], priority: Priority) -> BatchResult:
        data = await self._request(
            "POST",
            CANCEL_ORDERS,
            [("orderIds", ",".join(chunk)), ("process", "1"), ("symbol", symbol)],
            priority=priority,
        )
        cancelled = tuple(order_id_str(o.get("orderId")) for o in _items(data, "orders"))
        gone: list[str] = []
        failed: list[tuple[str, VenueError]] = []
        for fail in _items(data, "fails"):
            order_id = order_id_str(fail.get("orderId"))
            error = str(fail.get("error") or "")
            if fail_is_gone(error):
                gone.append(order_id)
            else:
                failed.append(
                    (
                        order_id,
                        Transient(
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
        """`oco/cancel` by one leg's id: it cancels the whole OCO."""
        legs = self._list_legs.get(list_id)
        if legs is None:
            self._lists_from_legs(await self._open_oco_legs(priority), None)
            legs = self._list_legs.get(list_id)
        if not legs:
            raise AlreadyGone(
                f"no open OCO list {list_id}",
                venue=self.venue,
                account=self.account,
                endpoint=f"POST {OCO_CANCEL}",
            )
        await self._request("POST", OCO_CANCEL, [("orderId", legs[0])], priority=priority)
        return CancelAck(cancelled=tuple((symbol, leg) for leg in legs), lists_cancelled=(list_id,))

    def _forget_list(self, list_id: str) -> None:
        for order_id in self._list_legs.pop(list_id, ()):
            self._leg_list.pop(order_id, None)

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
