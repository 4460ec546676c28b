"""The MEXC spot v3 dialect of the simulator: REST, listenKeys and protobuf user-data pushes.

Follows the MEXC spot v3 docs (mexcdevelop/apidocs `spot_v3_en`) as summarised in
`exchange-apis.md` §2. Where the docs are silent the choice is marked UNVERIFIED in a comment
and, where a client could depend on it, made configurable:

* `open_orders_requires_symbol`: `GET /api/v3/openOrders` without `symbol` answers every symbol
  by default (what ccxt relies on); set it to refuse such reads as the doc table's "mandatory".
* `list_read`: what `GET /api/v3/openOrders` does with several comma-separated symbols, which
  only a changelog promises (§2.3): answers each (`"each"`, the default), only the first
  (`"first"`), or refuses the list as a bad symbol (`"refused"`).
* `order_all_enabled`: serve `DELETE /api/v3/order/all` (only ccxt documents it).
* `retry_after`: the `Retry-After` of a 429/418, which the docs promise but nobody has
  confirmed (§2.5): seconds (`"seconds"`, the default), none (`"none"`), or the time the wait
  ends in epoch ms (`"epoch_ms"`, as Binance's ws-api and BingX's texts name it).

Order ids are strings like `C02__505979017439002624115`. Every book change, whoever caused it,
is pushed as a `PushDataV3ApiWrapper{privateOrders=304}` binary frame to every connection of the
account subscribed to `spot@private.orders.v3.api.pb`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import WSMsgType, web

from killswitch.exchanges import mexc_proto as pb
from killswitch.sim.book import (
    BookEvent,
    BookEventKind,
    OrderSpec,
    SimBook,
    SimOrder,
    UnknownOrder,
)
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.frames import Due, next_frame, pushed
from killswitch.sim.ratelimit import Verdict, WeightWindow
from killswitch.sim.venue import Handler, SimAccount, SimVenue, VenueSettings, json_response

log = logging.getLogger(__name__)

SignedHandler = Callable[[web.Request, SimAccount, dict[str, str]], Awaitable[web.StreamResponse]]

WS_PATH = "/ws"
MAX_SYMBOLS_PER_CALL = 5
MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000

# Weight(IP) per endpoint, from the docs. Each endpoint has its own 500-per-10-s budget.
WEIGHTS: dict[str, int] = {
    "GET /api/v3/ping": 1,
    "GET /api/v3/time": 1,
    "GET /api/v3/exchangeInfo": 10,
    "POST /api/v3/order": 1,
    "POST /api/v3/order/test": 1,
    "DELETE /api/v3/order": 1,
    "DELETE /api/v3/openOrders": 1,
    "DELETE /api/v3/order/all": 1,
    "GET /api/v3/order": 2,
    "GET /api/v3/openOrders": 3,
    "GET /api/v3/account": 10,
    "GET /api/v3/ticker/bookTicker": 1,
    "POST /api/v3/userDataStream": 1,
    "PUT /api/v3/userDataStream": 1,
    "GET /api/v3/userDataStream": 1,
    "DELETE /api/v3/userDataStream": 1,
}
# Endpoints that also count against the account (UID) budget ("Weight(UID): 1").
UID_WEIGHTED = frozenset({"POST /api/v3/order"})
ENDPOINT_LIMIT = 500
ENDPOINT_WINDOW_S = 10.0

DEFAULT_SYMBOLS: tuple[str, ...] = (
    "BTCUSDT",
    "ETHUSDT",
    "MXUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "LTCUSDT",
)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
_ORDER_TYPES = frozenset({"LIMIT", "MARKET", "LIMIT_MAKER", "IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"})


class MexcError(Exception):
    """An error answer in MEXC's words: `{"code": ..., "msg": ...}` with an HTTP status."""

    def __init__(self, code: int | str, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status

    def response(self) -> web.Response:
        return json_response({"code": self.code, "msg": self.msg}, status=self.status)


def _mandatory(name: str) -> MexcError:
    # The wording MEXC sends for a missing parameter (seen for `signature` in client reports).
    return MexcError(
        700004, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


UNKNOWN_ORDER = MexcError(-2011, "Unknown order sent")
# UNVERIFIED: the docs give no code for querying an unknown order; -2013 is what MEXC answers
# in practice (Binance heritage) and what ccxt maps to OrderNotFound.
ORDER_NOT_FOUND = MexcError(-2013, "Order does not exist.")
# Seen in practice for PUT on an expired/unknown listenKey (mexc-api-demo#35), code as a string.
LISTEN_KEY_ERROR = MexcError("730708", "listen key information error")


@dataclass(slots=True)
class ListenKey:
    key: str
    account: str
    expires_at: float  # time.monotonic()


@dataclass(eq=False, slots=True)
class StreamConn:
    """One user-data websocket connection."""

    ws: web.WebSocketResponse
    account: SimAccount
    listen_key: str
    queue: asyncio.Queue[bytes | str | Due[bytes | str] | None] = field(
        default_factory=asyncio.Queue
    )
    channels: set[str] = field(default_factory=set)
    last_traffic: float = field(default_factory=time.monotonic)
    opened: float = field(default_factory=time.monotonic)
    closing: bool = False
    close_code: int = 1000


RETRY_AFTER_FORMS = ("seconds", "none", "epoch_ms")


LIST_READS = ("each", "first", "refused")


class MexcSim(SimVenue):
    """MEXC spot v3 on loopback."""

    name = "mexc"
    key_header = "X-MEXC-APIKEY"

    def __init__(
        self,
        settings: VenueSettings,
        *,
        open_orders_requires_symbol: bool = False,
        order_all_enabled: bool = True,
        retry_after: str = "seconds",
        list_read: str = "each",
        symbols: Sequence[str] = (),
        listen_key_ttl_s: float = 3600.0,
        max_listen_keys: int = 60,
        max_connections_per_key: int = 5,
        ws_no_subscription_timeout_s: float = 30.0,
        ws_idle_timeout_s: float = 60.0,
        ws_max_lifetime_s: float = 24 * 3600.0,
        ws_max_messages_per_s: int = 100,
        max_open_orders: int = 500,
    ) -> None:
        self._order_seq = itertools.count(secrets.randbelow(10**17) * 1000 + 10**20)
        self._list_seq = itertools.count(1)
        self._trade_seq = itertools.count(1)
        self.open_orders_requires_symbol = open_orders_requires_symbol
        self.order_all_enabled = order_all_enabled
        if retry_after not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMS}, not {retry_after!r}")
        self.retry_after = retry_after
        if list_read not in LIST_READS:
            raise ValueError(f"list_read must be one of {LIST_READS}, not {list_read!r}")
        self.list_read = list_read
        # exchangeInfo lists these, plus every symbol an order is placed on.
        self.known_symbols: set[str] = set(symbols or settings.symbols or DEFAULT_SYMBOLS)
        self.listen_key_ttl_s = listen_key_ttl_s
        self.max_listen_keys = max_listen_keys
        self.max_connections_per_key = max_connections_per_key
        self.ws_no_subscription_timeout_s = ws_no_subscription_timeout_s
        self.ws_idle_timeout_s = ws_idle_timeout_s
        self.ws_max_lifetime_s = ws_max_lifetime_s
        self.ws_max_messages_per_s = ws_max_messages_per_s
        self.max_open_orders = max_open_orders
        self.answer_pings = True  # tests turn it off to play a venue whose heartbeat stopped
        self.listen_keys: dict[str, ListenKey] = {}
        self.conns: set[StreamConn] = set()
        self._windows: dict[str, WeightWindow] = {}
        super().__init__(settings)
        for account in self.accounts.values():
            self.book(account).subscribe(self._listener_for(account))

    # -- SimVenue hooks -------------------------------------------------------------------
    def new_book(self) -> SimBook:
        return SimBook(
            new_order_id=lambda: f"C02__{next(self._order_seq)}",
            new_list_id=lambda: f"OCO__{next(self._list_seq)}",
            now_ms=self.now_ms,
        )

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/ping", self._ping)
        r.add_get("/api/v3/time", self._time)
        r.add_get("/api/v3/exchangeInfo", self._exchange_info)
        r.add_post("/api/v3/order", self._signed(self._place_order))
        r.add_post("/api/v3/order/test", self._signed(self._test_order))
        r.add_delete("/api/v3/order", self._signed(self._cancel_order))
        r.add_delete("/api/v3/openOrders", self._signed(self._cancel_open_orders))
        r.add_delete("/api/v3/order/all", self._signed(self._cancel_everything))
        r.add_get("/api/v3/order", self._signed(self._query_order))
        r.add_get("/api/v3/openOrders", self._signed(self._open_orders))
        # Readiness (issue 14): what a key may do, and a book a live drill prices from.
        r.add_get("/api/v3/account", self._signed(self._account))
        r.add_get("/api/v3/ticker/bookTicker", self._book_ticker)
        r.add_post("/api/v3/userDataStream", self._signed(self._create_listen_key))
        r.add_put("/api/v3/userDataStream", self._signed(self._extend_listen_key))
        r.add_get("/api/v3/userDataStream", self._signed(self._list_listen_keys))
        r.add_delete("/api/v3/userDataStream", self._signed(self._close_listen_key))
        r.add_get(WS_PATH, self._ws_handler)
        # What ccxt's mexc class also reads when it loads markets and currencies.
        r.add_get("/api/v1/contract/detail", self._contract_detail)
        r.add_get("/api/v3/capital/config/getall", self._signed(self._capital_config))

    def weight(self, request: web.Request, account: SimAccount | None) -> list[tuple[str, int]]:
        endpoint = f"{request.method} {request.path}"
        w = WEIGHTS.get(endpoint)
        if w is None:
            return []
        buckets = [(f"ip:{self.client_id(request)}|{endpoint}", w)]
        if account is not None and endpoint in UID_WEIGHTED:
            buckets.append((f"uid:{account.name}|{endpoint}", 1))
        return buckets

    def reset_limits(self) -> None:
        super().reset_limits()
        self._windows.clear()

    def spend(self, bucket: str, weight: int, now: float) -> Verdict:
        window = self._windows.get(bucket)
        if window is None:
            limit = max(1, int(ENDPOINT_LIMIT * self.settings.rate_limit_scale))
            window = self._windows[bucket] = WeightWindow(limit, ENDPOINT_WINDOW_S)
        return window.spend(weight, now)

    def throttled(self, verdict: Verdict, request: web.Request) -> web.Response:
        wait_s = max(1, verdict.retry_after_s)
        headers: dict[str, str] = {}
        if self.retry_after == "seconds":
            headers["Retry-After"] = str(wait_s)
        elif self.retry_after == "epoch_ms":
            account = self.account_for_key(request.headers.get(self.key_header))
            until_ms = self.now_ms(account.name if account else None) + wait_s * 1000
            headers["Retry-After"] = str(until_ms)
        if verdict.banned:
            # UNVERIFIED: MEXC documents the 418 ban and its Retry-After, not the body; this
            # mirrors the 429 body's shape.
            body = {"code": 418, "msg": "IP banned for too many requests after 429"}
            return json_response(body, status=418, headers=headers)
        return json_response({"code": 429, "msg": "Too Many Requests"}, status=429, headers=headers)

    def server_error(self, status: int, request: web.Request) -> web.Response:
        msg = {
            503: "service not available, please try again",
            504: "Gateway Time-out",
        }.get(status, "Internal error")
        return json_response({"code": status, "msg": msg}, status=status)

    def on_fault(self, fault: Fault) -> None:
        if fault.kind is FaultKind.WS_DROP:
            self._close_matching(fault, "ws_drop", code=1011)
        elif fault.kind is FaultKind.SERVER_SHUTDOWN:
            # MEXC has no shutdown notice: a going-away close is what a client would see.
            self._close_matching(fault, "server_shutdown", code=1001)
        elif fault.kind is FaultKind.LISTEN_KEY_EXPIRY:
            for key, lk in list(self.listen_keys.items()):
                if fault.matches(lk.account, WS_PATH):
                    self._expire_key(key)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        self.spawn(self._housekeeping())

    async def stop(self) -> None:
        for conn in list(self.conns):
            self._close_conn(conn)
        await super().stop()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ws_url": f"{self.ws_url}{WS_PATH}"}

    # -- request parsing and authentication ------------------------------------------------
    def _signed(self, handler: SignedHandler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                account, params = await self._authenticate(request)
                return await handler(request, account, params)
            except MexcError as err:
                return err.response()

        return wrapped

    async def _authenticate(self, request: web.Request) -> tuple[SimAccount, dict[str, str]]:
        api_key = request.headers.get(self.key_header)
        if not api_key:
            raise MexcError(400, "api key required")
        account = self.account_for_key(api_key)
        if account is None:
            raise MexcError(10072, "invalid access key")
        raw_query = request.rel_url.raw_query_string
        raw_body = (
            (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
        )
        is_json = request.content_type == "application/json"
        params: dict[str, str] = {}
        if raw_body and is_json:
            try:
                body = orjson.loads(raw_body)
            except orjson.JSONDecodeError as exc:
                raise MexcError(33333, "param is error") from exc
            if isinstance(body, dict):
                params.update({str(k): _as_str(v) for k, v in body.items()})
        elif raw_body:
            params.update(parse_qsl(raw_body, keep_blank_values=True))
        # The query string wins on duplicates (docs, "General Information on Endpoints").
        params.update(parse_qsl(raw_query, keep_blank_values=True))
        signature = params.pop("signature", "")
        if not signature:
            raise _mandatory("signature")
        total = _strip_signature(raw_query) + (raw_body if is_json else _strip_signature(raw_body))
        expected = hmac.new(account.secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        # Lowercase hex only, per the docs: an uppercase signature does not verify.
        if not hmac.compare_digest(expected, signature):
            self.counters["signature_failures"] += 1
            raise MexcError(700002, "Signature for this request is not valid.")
        ts_text = params.get("timestamp", "")
        if not ts_text:
            raise _mandatory("timestamp")
        try:
            timestamp = int(ts_text)
            recv_window = int(params.get("recvWindow") or DEFAULT_RECV_WINDOW_MS)
        except ValueError as exc:
            raise MexcError(33333, "param is error") from exc
        if recv_window > MAX_RECV_WINDOW_MS:
            raise MexcError(700005, "recvWindow must less than 60000")
        now = self.now_ms(account.name)
        if not (timestamp < now + 1000 and now - timestamp <= recv_window):
            self.counters["timestamp_failures"] += 1
            raise MexcError(700003, "Timestamp for this request is outside of the recvWindow.")
        return account, params

    # -- public endpoints -----------------------------------------------------------------
    # Accounts whose key may read but not trade (`canTrade` false); tests set it per instance.
    trade_disabled: frozenset[str] = frozenset()

    async def _account(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        """`GET /api/v3/account`: permissions and (no) balances."""
        can_trade = account.name not in self.trade_disabled
        return json_response(
            {
                "makerCommission": None,
                "takerCommission": None,
                "buyerCommission": None,
                "sellerCommission": None,
                "canTrade": can_trade,
                "canWithdraw": False,
                "canDeposit": True,
                "updateTime": None,
                "accountType": "SPOT",
                "balances": [],
                "permissions": ["SPOT"],
            }
        )

    async def _book_ticker(self, request: web.Request) -> web.Response:
        """`GET /api/v3/ticker/bookTicker?symbol=`, priced from the books (`book_ticker`)."""
        symbol = request.query.get("symbol", "")
        if symbol not in self.known_symbols:
            return MexcError(30014, "invalid symbol").response()
        return json_response(self.book_ticker(symbol, qty="1"))

    async def _ping(self, request: web.Request) -> web.Response:
        return json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        account = self.account_for_key(request.headers.get(self.key_header))
        return json_response({"serverTime": self.now_ms(account.name if account else None)})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        symbols = sorted(self.known_symbols)
        wanted = request.query.get("symbol") or request.query.get("symbols")
        if wanted:
            names = {s.strip() for s in wanted.split(",") if s.strip()}
            unknown = names - self.known_symbols
            if unknown:
                return MexcError(30014, "invalid symbol").response()
            symbols = sorted(names)
        return json_response(
            {
                "timezone": "CST",
                "serverTime": self.now_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [_symbol_info(s) for s in symbols],
            }
        )

    async def _contract_detail(self, request: web.Request) -> web.Response:
        # The futures API's envelope; a spot-only venue lists no contracts.
        return json_response({"success": True, "code": 0, "data": []})

    async def _capital_config(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        return json_response([])

    # -- trading ----------------------------------------------------------------------------
    def _symbol(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol", "")
        if not symbol:
            raise _mandatory("symbol")
        if not _SYMBOL_RE.match(symbol):
            raise MexcError(10007, "bad symbol")
        return symbol

    def _spec(self, params: dict[str, str]) -> OrderSpec:
        symbol = self._symbol(params)
        side = params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise _mandatory("side") if not side else MexcError(33333, "param is error")
        order_type = params.get("type", "")
        if order_type not in _ORDER_TYPES:
            raise _mandatory("type") if not order_type else MexcError(33333, "param is error")
        try:
            quantity = Decimal(params.get("quantity") or params.get("quoteOrderQty") or "0")
            price = Decimal(params.get("price") or "0")
        except InvalidOperation as exc:
            raise MexcError(33333, "param is error") from exc
        if quantity <= 0:
            raise _mandatory("quantity")
        if order_type != "MARKET" and price <= 0:
            raise _mandatory("price")
        return OrderSpec(
            symbol=symbol,
            side=side,
            order_type=order_type,
            price=price if price > 0 else Decimal(1),
            quantity=quantity,
            client_order_id=params.get("newClientOrderId", ""),
        )

    async def _test_order(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        self._spec(params)
        return json_response({})

    async def _place_order(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        spec = self._spec(params)
        book = self.book(account)
        if len(book.open) >= self.max_open_orders:
            raise MexcError(30029, "Cannot exceed the maximum order limit")
        self.known_symbols.add(spec.symbol)
        order = book.place(spec)
        # No matching engine: a market order fills at once, IOC/FOK find no liquidity.
        if spec.order_type == "MARKET":
            book.fill(order.order_id, symbol=order.symbol)
        elif spec.order_type in ("IMMEDIATE_OR_CANCEL", "FILL_OR_KILL"):
            book.cancel(order.order_id, symbol=order.symbol)
        return json_response(
            {
                "symbol": order.symbol,
                "orderId": order.order_id,
                "orderListId": -1,
                "price": str(order.price),
                "origQty": str(order.orig_qty),
                "type": order.order_type,
                "side": order.side,
                "transactTime": order.time_ms,
            }
        )

    def _find(self, book: SimBook, params: dict[str, str]) -> SimOrder | None:
        order_id = params.get("orderId")
        client_id = params.get("origClientOrderId")
        if order_id:
            order = book.get(order_id)
            if order is not None and client_id and order.client_order_id != client_id:
                return None
            return order
        if client_id:
            return book.get_by_client_id(client_id)
        raise MexcError(
            700004, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null"
        )

    async def _cancel_order(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        symbol = self._symbol(params)
        book = self.book(account)
        order = self._find(book, params)
        if order is None or order.symbol != symbol or not order.is_open:
            raise UNKNOWN_ORDER
        try:
            gone = book.cancel(
                order.order_id,
                symbol=order.symbol,
                cancel_client_order_id=params.get("newClientOrderId", ""),
            )
        except UnknownOrder as exc:
            raise UNKNOWN_ORDER from exc
        mine = next((o for o in gone if o.order_id == order.order_id), gone[0])
        return json_response(_cancel_row(mine, with_list_id=False))

    def _symbols_param(self, params: dict[str, str]) -> list[str]:
        raw = params.get("symbol", "")
        if not raw:
            raise _mandatory("symbol")
        symbols = [s for s in (p.strip() for p in raw.split(",")) if s]
        if len(symbols) > MAX_SYMBOLS_PER_CALL:
            # UNVERIFIED: the docs cap the list at 5 without naming the error.
            raise MexcError(33333, "param is error")
        for symbol in symbols:
            if not _SYMBOL_RE.match(symbol):
                raise MexcError(10007, "bad symbol")
        return symbols

    async def _cancel_open_orders(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        symbols = self._symbols_param(params)
        gone = self.book(account).cancel_symbols(symbols, include_lists=True)
        return json_response([_cancel_row(o, with_list_id=True) for o in gone])

    async def _cancel_everything(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        if not self.order_all_enabled:
            raise web.HTTPNotFound()
        self.book(account).cancel_symbols(None, include_lists=True)
        # The shape ccxt documents for this (UNVERIFIED) endpoint.
        return json_response({"code": 200, "msg": "success", "timestamp": self.now_ms()})

    async def _query_order(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        order = self._find(self.book(account), params)
        symbol = params.get("symbol")
        if order is None or (symbol and order.symbol != symbol):
            raise ORDER_NOT_FOUND
        return json_response(_order_row(order))

    async def _open_orders(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        book = self.book(account)
        if params.get("symbol"):
            symbols = self._symbols_param(params)
            if len(symbols) > 1 and self.list_read == "refused":
                raise MexcError(10007, "bad symbol")
            if self.list_read == "first":
                symbols = symbols[:1]
            orders = book.open_orders(symbols)
        elif self.open_orders_requires_symbol:
            raise _mandatory("symbol")
        else:
            orders = book.open_orders()
        return json_response([_order_row(o) for o in orders])

    # -- listenKeys -----------------------------------------------------------------------
    def _live_key(self, key: str, account: SimAccount) -> ListenKey | None:
        lk = self.listen_keys.get(key)
        if lk is None or lk.account != account.name:
            return None
        if time.monotonic() >= lk.expires_at:
            self._expire_key(key)
            return None
        return lk

    async def _create_listen_key(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        live = [lk for lk in self.listen_keys.values() if lk.account == account.name]
        if len(live) >= self.max_listen_keys:
            # UNVERIFIED: the 60-keys-per-UID limit is documented, its error is not.
            raise MexcError(730003, "Unsupported operation, please contact the customer service")
        key = secrets.token_hex(32)
        self.listen_keys[key] = ListenKey(
            key, account.name, time.monotonic() + self.listen_key_ttl_s
        )
        return json_response({"listenKey": key})

    async def _extend_listen_key(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        lk = self._named_key(params, account)
        lk.expires_at = time.monotonic() + self.listen_key_ttl_s
        return json_response({"listenKey": lk.key})

    async def _list_listen_keys(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        keys = [k for k in list(self.listen_keys) if self._live_key(k, account) is not None]
        return json_response({"listenKey": keys})

    async def _close_listen_key(
        self, request: web.Request, account: SimAccount, params: dict[str, str]
    ) -> web.Response:
        key = self._named_key(params, account).key
        self._expire_key(key, send_invalid_key=False)
        return json_response({"listenKey": key})

    def _named_key(self, params: dict[str, str], account: SimAccount) -> ListenKey:
        """The live key of `account` that the `listenKey` parameter names."""
        key = params.get("listenKey", "")
        if not key:
            raise _mandatory("listenKey")
        lk = self._live_key(key, account)
        if lk is None:
            raise LISTEN_KEY_ERROR
        return lk

    def _expire_key(self, key: str, *, send_invalid_key: bool = True) -> None:
        self.listen_keys.pop(key, None)
        for conn in [c for c in self.conns if c.listen_key == key]:
            if send_invalid_key:
                # UNVERIFIED: the docs do not say what an open connection sees when its key
                # dies; the sim sends the same text a bad key gets at connect, then closes.
                conn.queue.put_nowait("Invalid listen key")
            self._close_conn(conn)

    # -- websocket --------------------------------------------------------------------------
    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        key = request.query.get("listenKey", "")
        lk = self.listen_keys.get(key)
        if lk is not None and time.monotonic() >= lk.expires_at:
            self._expire_key(key)
            lk = None
        if lk is None:
            self.counters["ws invalid_listen_key"] += 1
            await ws.send_str("Invalid listen key")
            await ws.close()
            return ws
        account = self.accounts[lk.account]
        if sum(1 for c in self.conns if c.listen_key == key) >= self.max_connections_per_key:
            # UNVERIFIED: the 5-connections-per-key limit is documented, its refusal is not.
            await ws.close(code=1008, message=b"too many connections for this listenKey")
            return ws
        # A standing drop (no count) refuses every connection until cleared; a counted one
        # spends a count per refusal.
        if self.faults.draw(FaultKind.WS_DROP, account.name, WS_PATH) is not None:
            self.counters["faults ws_drop"] += 1
            await ws.close(code=1011, message=b"ws_drop")
            return ws
        conn = StreamConn(ws=ws, account=account, listen_key=key)
        self.conns.add(conn)
        self.counters["ws connections"] += 1
        writer = asyncio.ensure_future(self._ws_writer(conn))
        try:
            await self._ws_reader(conn)
        finally:
            self.conns.discard(conn)
            conn.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_reader(self, conn: StreamConn) -> None:
        second = int(time.monotonic())
        in_second = 0
        async for msg in conn.ws:
            conn.last_traffic = time.monotonic()
            if msg.type is not WSMsgType.TEXT:
                continue
            now_s = int(conn.last_traffic)
            if now_s != second:
                second, in_second = now_s, 0
            in_second += 1
            if in_second > self.ws_max_messages_per_s:
                self.counters["ws over_limit"] += 1
                break
            self._ws_command(conn, msg.data)

    def _ws_command(self, conn: StreamConn, text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.counters["ws bad_json"] += 1
            return
        if not isinstance(data, dict):
            return
        method = str(data.get("method", "")).upper()
        if method == "PING":
            self.counters["ws pings"] += 1
            if self.answer_pings:
                conn.queue.put_nowait('{"id":0,"code":0,"msg":"PONG"}')
            return
        params = data.get("params") or []
        if method not in ("SUBSCRIPTION", "UNSUBSCRIPTION") or not isinstance(params, list):
            return
        for channel in (str(p) for p in params):
            if channel not in (pb.ORDERS_CHANNEL, pb.DEALS_CHANNEL, pb.ACCOUNT_CHANNEL):
                # UNVERIFIED wording; the ack shape is the documented one.
                ack = {"id": 0, "code": 0, "msg": f"Not Subscribed successfully! [{channel}]"}
            elif method == "SUBSCRIPTION":
                conn.channels.add(channel)
                ack = {"id": 0, "code": 0, "msg": channel}
            else:
                conn.channels.discard(channel)
                ack = {"id": 0, "code": 0, "msg": channel}
            conn.queue.put_nowait(orjson.dumps(ack).decode())

    async def _ws_writer(self, conn: StreamConn) -> None:
        ws = conn.ws
        while (item := await next_frame(conn.queue)) is not None:
            try:
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(item)
            except (ConnectionResetError, RuntimeError):
                break
            conn.last_traffic = time.monotonic()
        if conn.closing and not ws.closed:
            await ws.close(code=conn.close_code)

    def _close_conn(self, conn: StreamConn, code: int = 1000) -> None:
        if conn.closing:
            return
        conn.closing = True
        conn.close_code = code
        conn.queue.put_nowait(None)

    def _close_matching(self, fault: Fault, reason: str, *, code: int) -> None:
        closed = 0
        for conn in list(self.conns):
            if not conn.closing and fault.matches(conn.account.name, WS_PATH):
                self.counters[f"faults {reason}"] += 1
                self._close_conn(conn, code)
                closed += 1
        if closed and fault.count is not None:
            fault.count -= 1  # one firing: `count=1` drops the live streams once

    async def _housekeeping(self) -> None:
        """Expire listenKeys and enforce the documented idle/no-subscription/24 h closes."""
        tick = max(0.05, min(1.0, self.ws_no_subscription_timeout_s / 4, self.listen_key_ttl_s / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for key, lk in list(self.listen_keys.items()):
                if now >= lk.expires_at:
                    self._expire_key(key)
            for conn in list(self.conns):
                if conn.closing:
                    continue
                if not conn.channels and now - conn.opened >= self.ws_no_subscription_timeout_s:
                    self.counters["ws closed no_subscription"] += 1
                    self._close_conn(conn)
                elif now - conn.last_traffic >= self.ws_idle_timeout_s:
                    self.counters["ws closed idle"] += 1
                    self._close_conn(conn)
                elif now - conn.opened >= self.ws_max_lifetime_s:
                    self.counters["ws closed lifetime"] += 1
                    self._close_conn(conn)

    # -- pushes -------------------------------------------------------------------------------
    def _listener_for(self, account: SimAccount) -> Any:
        def listener(event: BookEvent) -> None:
            self._push(account, event)

        return listener

    def _push(self, account: SimAccount, event: BookEvent) -> None:
        order = event.order
        if order is None or event.kind is BookEventKind.LIST_STATUS:
            return
        targets = [c for c in self.conns if c.account is account and not c.closing]
        if not targets:
            return
        if self.faults.active(FaultKind.WS_SILENT, account.name, WS_PATH) is not None:
            self.counters["ws silenced_events"] += 1
            return
        orders_frame = encode_order_push(order, event, self.now_ms(account.name))
        deals_frame = (
            encode_deal_push(order, event, next(self._trade_seq), self.now_ms(account.name))
            if event.kind is BookEventKind.TRADE
            else None
        )
        for conn in targets:
            if pb.ORDERS_CHANNEL in conn.channels:
                conn.queue.put_nowait(pushed(orders_frame))
            if deals_frame is not None and pb.DEALS_CHANNEL in conn.channels:
                conn.queue.put_nowait(pushed(deals_frame))


# -- rendering ------------------------------------------------------------------------------
def _as_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(p for p in raw.split("&") if not p.startswith("signature="))


def rest_status(order: SimOrder) -> str:
    """The book's status in MEXC's REST words."""
    if order.status in ("CANCELED", "EXPIRED"):
        return "PARTIALLY_CANCELED" if order.executed_qty > 0 else "CANCELED"
    return order.status


def push_status(order: SimOrder) -> int:
    """The book's status as `PrivateOrdersV3Api.status`."""
    return {
        "NEW": pb.STATUS_NEW,
        "FILLED": pb.STATUS_FILLED,
        "PARTIALLY_FILLED": pb.STATUS_PARTIALLY_FILLED,
        "PARTIALLY_CANCELED": pb.STATUS_PARTIALLY_CANCELED,
    }.get(rest_status(order), pb.STATUS_CANCELED)


def _list_id(order: SimOrder) -> str | int:
    return order.list_id if order.list_id is not None else -1


def _terms(order: SimOrder) -> dict[str, Any]:
    """Price, quantities, status, type and side: what a cancel answer and an order row share."""
    return {
        "price": str(order.price),
        "origQty": str(order.orig_qty),
        "executedQty": str(order.executed_qty),
        "cummulativeQuoteQty": str(order.cum_quote_qty),
        "status": rest_status(order),
        "timeInForce": order.time_in_force,
        "type": order.order_type,
        "side": order.side,
    }


def _cancel_row(order: SimOrder, *, with_list_id: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "symbol": order.symbol,
        "origClientOrderId": order.client_order_id,
        "orderId": order.order_id,
    }
    if with_list_id:
        row["orderListId"] = _list_id(order)
    row["clientOrderId"] = order.cancel_client_order_id
    row.update(_terms(order))
    return row


def _order_row(order: SimOrder) -> dict[str, Any]:
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": _list_id(order),
        "clientOrderId": order.client_order_id,
        **_terms(order),
        "stopPrice": str(order.stop_price),
        "icebergQty": "0",
        "time": order.time_ms,
        "updateTime": order.update_time_ms,
        "isWorking": order.is_open,
        "origQuoteOrderQty": "0",
    }


def _symbol_info(symbol: str) -> dict[str, Any]:
    quote = next((q for q in ("USDT", "USDC", "BTC", "ETH") if symbol.endswith(q)), symbol[-4:])
    return {
        "symbol": symbol,
        "status": "1",
        "baseAsset": symbol[: -len(quote)] or symbol,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET", "LIMIT_MAKER"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "quoteAmountPrecision": "1",
        "baseSizePrecision": "0",
        "permissions": ["SPOT"],
        "filters": [],
        "maxQuoteAmount": "2000000",
        "makerCommission": "0",
        "takerCommission": "0.0005",
        "quoteAmountPrecisionMarket": "1",
        "maxQuoteAmountMarket": "100000",
        "fullName": symbol,
        "tradeSideType": 1,
    }


def encode_order_push(order: SimOrder, event: BookEvent, send_time_ms: int) -> bytes:
    """One `spot@private.orders.v3.api.pb` frame for a book change."""
    remaining = order.orig_qty - order.executed_qty
    avg = order.cum_quote_qty / order.executed_qty if order.executed_qty > 0 else Decimal(0)
    wrapper = pb.PushDataV3ApiWrapper(
        channel=pb.ORDERS_CHANNEL, symbol=order.symbol, sendTime=send_time_ms
    )
    body = wrapper.privateOrders
    body.id = order.order_id
    body.clientId = order.client_order_id
    body.price = str(order.price)
    body.quantity = str(order.orig_qty)
    body.amount = str(order.price * order.orig_qty)
    body.avgPrice = str(avg)
    body.orderType = pb.ORDER_TYPE_CODES.get(order.order_type, 100)
    body.tradeType = pb.TRADE_TYPE_BUY if order.side == "BUY" else pb.TRADE_TYPE_SELL
    body.isMaker = event.kind is BookEventKind.TRADE
    body.remainAmount = str(remaining * order.price)
    body.remainQuantity = str(remaining)
    if event.kind is BookEventKind.TRADE:
        body.lastDealQuantity = str(event.last_qty)
    body.cumulativeQuantity = str(order.executed_qty)
    body.cumulativeAmount = str(order.cum_quote_qty)
    body.status = push_status(order)
    body.createTime = order.time_ms
    if order.list_id is not None:
        body.ocoId = order.list_id
    return bytes(wrapper.SerializeToString())


def encode_deal_push(order: SimOrder, event: BookEvent, trade_seq: int, send_time_ms: int) -> bytes:
    """One `spot@private.deals.v3.api.pb` frame for a fill."""
    wrapper = pb.PushDataV3ApiWrapper(
        channel=pb.DEALS_CHANNEL, symbol=order.symbol, sendTime=send_time_ms
    )
    body = wrapper.privateDeals
    body.price = str(event.last_price)
    body.quantity = str(event.last_qty)
    body.amount = str(event.last_price * event.last_qty)
    body.tradeType = pb.TRADE_TYPE_BUY if order.side == "BUY" else pb.TRADE_TYPE_SELL
    body.isMaker = True
    body.tradeId = f"{order.order_id[5:]}X{trade_seq}"
    body.clientOrderId = order.client_order_id
    body.orderId = order.order_id
    body.feeAmount = "0"
    body.feeCurrency = "USDT"
    body.time = event.time_ms
    return bytes(wrapper.SerializeToString())
