"""Binance Spot in the simulator: REST `/api/v3/*` and the WebSocket API at `/ws-api/v3`.

Faithful to `reference/exchange-apis.md` §1 and §7: signed requests are checked as Binance
checks them (key header, HMAC-SHA256 hex or Ed25519 base64 over the query then the body as
received, the timestamp/recvWindow window), bodies and codes are Binance's, weights are the
documented ones per IP (6000 per calendar minute, times `rate_limit_scale`) with
`X-MBX-USED-WEIGHT-1M`, 429 with `Retry-After` and escalation to 418 by the base.

The WebSocket API speaks JSON request/response with echoed `id`, `status`, `result`/`error` and
`rateLimits`; every request there goes through the same weights, bans and faults as REST, per
message. User data arrives on subscriptions (`userDataStream.subscribe` after an Ed25519
`session.logon`, or `userDataStream.subscribe.signature` with any key) as
`{"subscriptionId": N, "event": {...}}`, fed by the book's listeners, so every change, whoever
made it, reaches every subscription of the account.

Order ids are numbered per symbol, as on Binance (§1.6): two symbols meet the same id. Where the
public material leaves Binance's answer open, a constructor switch (also `[venues.binance.options]`
in the sim TOML) picks it, and the connector must be right under each:

* `list_unknown_message`: a list that is not open is refused with -2011 "Unknown order list
  sent." (what users report; the default) or "Unknown order sent.".
* `empty_cancel_all`: `DELETE /api/v3/openOrders` on a symbol with nothing open answers -2011
  "Unknown order sent." (`"unknown_order"`, community reports; the default) or an empty array
  (`"empty_list"`; the docs say nothing).
* `rest_trading`, `ws_trading`: `"enabled"` (the default) or `"disabled"`, a server that takes
  no TRADE requests by that route and refuses them with "Rest API trading is not enabled." /
  "WebSocket API trading is not enabled." (errors.md; -2010 for a new order, -2011 for a
  cancel). Reads still work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from killswitch.sim.book import BookEvent, BookEventKind, OrderSpec, SimBook, SimOrder, SimOrderList
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.frames import PUSH_DUE, Due, next_frame, pushed
from killswitch.sim.ratelimit import Verdict, WeightWindow
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings, json_response

log = logging.getLogger(__name__)

WS_PATH = "/ws-api/v3"
WEIGHT_PER_MINUTE = 6000
ORDERS_PER_10S = 50
ORDERS_PER_DAY = 160_000
RECV_WINDOW_DEFAULT_MS = Decimal(5000)
RECV_WINDOW_MAX_MS = Decimal(60000)
PING_INTERVAL_S = 20.0  # the server pings every 20 s and drops a client silent for a minute
MAX_CONNECTION_S = 24 * 3600.0
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ETHBTC", "LTCBTC")
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")

# In the order exchangeInfo lists them.
ORDER_TYPE_NAMES = (
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)
ORDER_TYPES = frozenset(ORDER_TYPE_NAMES)
PRICED_TYPES = frozenset({"LIMIT", "LIMIT_MAKER", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"})
TIF_TYPES = frozenset({"LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"})
STOP_TYPES = frozenset({"STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"})

REST_WEIGHTS: dict[tuple[str, str], int] = {
    ("GET", "/api/v3/ping"): 1,
    ("GET", "/api/v3/time"): 1,
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("POST", "/api/v3/order"): 1,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/openOrders"): 1,
    ("POST", "/api/v3/orderList/oco"): 1,
    ("DELETE", "/api/v3/orderList"): 1,
    ("GET", "/api/v3/orderList"): 4,
    ("GET", "/api/v3/openOrderList"): 6,
    ("GET", "/api/v3/account"): 20,
    ("GET", "/api/v3/ticker/bookTicker"): 2,
    ("POST", "/api/v3/userDataStream"): 2,
    ("PUT", "/api/v3/userDataStream"): 2,
    ("DELETE", "/api/v3/userDataStream"): 2,
    ("POST", "/api/v1/userDataStream"): 2,
    ("PUT", "/api/v1/userDataStream"): 2,
    ("GET", "/api/v1/userDataStream"): 2,
    ("DELETE", "/api/v1/userDataStream"): 2,
    ("GET", WS_PATH): 2,  # connecting to the WebSocket API costs 2 [BN-WS "IP limits"]
    ("GET", "/sapi/v1/capital/config/getall"): 10,
    ("GET", "/sapi/v1/margin/allPairs"): 1,
    ("GET", "/sapi/v1/margin/isolated/allPairs"): 10,
}
OPEN_ORDERS_WEIGHT = (6, 80)  # with symbol, without

WS_WEIGHTS: dict[str, int] = {
    "ping": 1,
    "time": 1,
    "exchangeInfo": 20,
    "session.logon": 2,
    "session.status": 2,
    "session.logout": 2,
    "session.subscriptions": 2,
    "userDataStream.subscribe": 2,
    "userDataStream.subscribe.signature": 2,
    "userDataStream.unsubscribe": 2,
    "userDataStream.start": 2,
    "userDataStream.ping": 2,
    "userDataStream.stop": 2,
    "order.place": 1,
    "order.cancel": 1,
    "order.status": 4,
    "openOrders.cancelAll": 1,
    "openOrderLists.status": 6,
    "orderList.cancel": 1,
    "orderList.status": 4,
    "orderList.place.oco": 1,
}

UNKNOWN_ORDER = "Unknown order sent."
# Not in errors.md; what users of binance-java-api #377 and python-binance #1221 report for a
# list that is not open (§1.6). `list_unknown_message` switches it for the older reading.
UNKNOWN_ORDER_LIST = "Unknown order list sent."
FIRST_ORDER_ID = 12_510_053_279
# TRADE endpoints, by their ws-api names: a server "not configured to allow access to TRADE
# endpoints" refuses these alone [BN-ERR, "Rest API trading is not enabled." / "WebSocket API
# trading is not enabled."]; the `rest_trading` and `ws_trading` switches play such a server.
TRADE_METHODS = frozenset(
    {
        "order.place",
        "order.cancel",
        "openOrders.cancelAll",
        "orderList.place.oco",
        "orderList.cancel",
    }
)


class BnError(Exception):
    """A request refused the way Binance refuses it: HTTP status plus `{code, msg}`."""

    def __init__(self, status: int, code: int, msg: str, data: dict[str, Any] | None = None):
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.data = data

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.data is not None:
            body["data"] = self.data
        return body


def _trading_off(route: str, method: str) -> BnError:
    """A TRADE request on a server that takes none by this route: -2010 for a new order,
    -2011 for a cancel (errors.md lists the message under both)."""
    code = -2010 if ".place" in method else -2011
    return BnError(400, code, f"{route} trading is not enabled.")


def _missing(name: str) -> BnError:
    return BnError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _side(params: dict[str, str]) -> str:
    side = params.get("side") or ""
    if not side:
        raise _missing("side")
    if side not in ("BUY", "SELL"):
        raise BnError(400, -1117, "Invalid side.")
    return side


def _illegal(name: str, legal: str) -> BnError:
    return BnError(
        400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'."
    )


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


@dataclass(slots=True)
class Ctx:
    """One request as an operation sees it: who, with what, and what to report back."""

    account: SimAccount
    params: dict[str, str]
    orders_count: tuple[int, int] | None = None  # (10 s, 1 day) after a placement


@dataclass(eq=False, slots=True)
class Subscription:
    sid: int
    account: SimAccount
    kind: str  # "logon" (userDataStream.subscribe) or "signature"
    listener: Callable[[BookEvent], None]


@dataclass(eq=False)
class WsConn:
    """One WebSocket API connection: its session, its subscriptions, its outgoing queue."""

    ws: web.WebSocketResponse
    request: web.Request
    remote: str
    connected_ms: int
    connected_mono: float
    return_rate_limits: bool = True
    session_account: SimAccount | None = None
    authorized_ms: int | None = None
    subs: dict[int, Subscription] = field(default_factory=dict)
    signers: set[str] = field(default_factory=set)  # accounts whose key came on this connection
    sub_ids: itertools.count[int] = field(default_factory=itertools.count)
    # frames to send, each with the request log entry it answers (stamped `answered` once sent)
    out: asyncio.Queue[
        tuple[str, dict[str, Any] | None] | Due[tuple[str, dict[str, Any] | None]] | None
    ] = field(default_factory=asyncio.Queue)
    last_pong: float = 0.0
    closed: bool = False

    def send(self, frame: dict[str, Any], entry: dict[str, Any] | None = None) -> None:
        if not self.closed:
            self.out.put_nowait(pushed((orjson.dumps(frame).decode(), entry)))

    def accounts(self) -> set[str]:
        names = {sub.account.name for sub in self.subs.values()} | self.signers
        if self.session_account is not None:
            names.add(self.session_account.name)
        return names


Op = Callable[[Ctx], Any]


class BinanceSim(SimVenue):
    """Binance Spot: REST and WebSocket API dialect over the shared simulator core."""

    name = "binance"
    key_header = "X-MBX-APIKEY"

    def __init__(
        self,
        settings: VenueSettings,
        *,
        max_connection_s: float = MAX_CONNECTION_S,
        list_unknown_message: str = UNKNOWN_ORDER_LIST,
        empty_cancel_all: str = "unknown_order",
        rest_trading: str = "enabled",
        ws_trading: str = "enabled",
    ):
        if empty_cancel_all not in ("unknown_order", "empty_list"):
            raise ValueError(
                f"empty_cancel_all must be unknown_order or empty_list, not {empty_cancel_all!r}"
            )
        for name, value in (("rest_trading", rest_trading), ("ws_trading", ws_trading)):
            if value not in ("enabled", "disabled"):
                raise ValueError(f"{name} must be enabled or disabled, not {value!r}")
        # The base constructor mints books and routes, so the counters must exist first.
        # Binance numbers orders per symbol [§1.6]: every symbol has its own counter, all
        # starting at the same value, so orders on two symbols meet the same id.
        self._order_ids: dict[str, itertools.count[int]] = {}
        self._list_ids = itertools.count(1000)
        self._trade_ids = itertools.count(1)
        self._exec_ids = itertools.count(1)
        self._windows: dict[str, WeightWindow] = {}
        self._public_keys: dict[str, Ed25519PublicKey] = {}
        self.conns: set[WsConn] = set()
        self.max_connection_s = max_connection_s
        self.list_unknown_message = list_unknown_message
        self.empty_cancel_all = empty_cancel_all
        self.rest_trading = rest_trading
        self.ws_trading = ws_trading
        super().__init__(settings)
        scale = settings.rate_limit_scale
        self.weight_limit = max(1, int(WEIGHT_PER_MINUTE * scale))
        self.orders_10s_limit = max(1, int(ORDERS_PER_10S * scale))
        self.orders_day_limit = max(1, int(ORDERS_PER_DAY * scale))
        self.strict_symbols = frozenset(settings.symbols)
        self._ws_ops: dict[str, Op] = {ws: op for _, _, ws, op in self._order_ops()}

    # -- ids and books ---------------------------------------------------------------------
    def new_book(self) -> SimBook:
        return SimBook(
            new_symbol_order_id=self._next_order_id,
            new_list_id=lambda: str(next(self._list_ids)),
            now_ms=self.now_ms,
        )

    def _next_order_id(self, symbol: str) -> str:
        counter = self._order_ids.get(symbol)
        if counter is None:
            counter = self._order_ids[symbol] = itertools.count(FIRST_ORDER_ID)
        return str(next(counter))

    @property
    def ws_api_url(self) -> str:
        return f"{self.ws_url}{WS_PATH}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ws_api_url": self.ws_api_url}

    # -- routes ----------------------------------------------------------------------------
    def _order_ops(self) -> list[tuple[str, str, str, Op]]:
        """Each order operation once: its REST method and path, its WebSocket API method."""
        return [
            ("POST", "/api/v3/order", "order.place", self.op_place),
            ("DELETE", "/api/v3/order", "order.cancel", self.op_cancel),
            ("GET", "/api/v3/order", "order.status", self.op_query_order),
            ("DELETE", "/api/v3/openOrders", "openOrders.cancelAll", self.op_cancel_all),
            ("GET", "/api/v3/openOrders", "openOrders.status", self.op_open_orders),
            ("POST", "/api/v3/orderList/oco", "orderList.place.oco", self.op_place_oco),
            ("DELETE", "/api/v3/orderList", "orderList.cancel", self.op_cancel_list),
            ("GET", "/api/v3/orderList", "orderList.status", self.op_query_list),
            ("GET", "/api/v3/openOrderList", "openOrderLists.status", self.op_open_lists),
        ]

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/ping", self._public(dict))
        r.add_get("/api/v3/time", self._server_time)
        r.add_get("/api/v3/exchangeInfo", self._exchange_info)
        for method, path, ws, op in self._order_ops():
            r.add_route(method, path, self._signed(op, ws if ws in TRADE_METHODS else None))
        # Readiness (issue 14): what a key may do, and a book a live drill prices from.
        r.add_get("/api/v3/account", self._signed(self.op_account))
        r.add_get("/api/v3/ticker/bookTicker", self._book_ticker)
        for version, methods in (
            ("v3", ("POST", "PUT", "DELETE")),
            ("v1", ("POST", "PUT", "GET", "DELETE")),
        ):
            for method in methods:
                r.add_route(method, f"/api/{version}/userDataStream", self._retired)
        r.add_get(WS_PATH, self._ws_api)
        # What ccxt's load_markets() reads with default options, so a bot pointed here works
        # with only its URLs changed: coins (signed SAPI), and the futures exchangeInfo, which
        # a spot venue answers with no symbols.
        r.add_get("/sapi/v1/capital/config/getall", self._signed(self.op_capital_config))
        # No margin trading here (isMarginTradingAllowed is false): no margin pairs.
        r.add_get("/sapi/v1/margin/allPairs", self._signed(lambda ctx: []))
        r.add_get("/sapi/v1/margin/isolated/allPairs", self._signed(lambda ctx: []))
        r.add_get("/fapi/v1/exchangeInfo", self._no_futures)
        r.add_get("/dapi/v1/exchangeInfo", self._no_futures)

    def _public(
        self, result: Callable[[], Any]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return json_response(result())

        return handler

    async def _server_time(self, request: web.Request) -> web.Response:
        # A clock-skew fault on an account shows in the time it is told as well as in its
        # timestamp checks, as on MEXC and BingX: resyncing to this answer must cure the skew.
        account = self.account_for_key(request.headers.get(self.key_header))
        return json_response({"serverTime": self.now_ms(account.name if account else None)})

    def _signed(
        self, op: Op, trade: str | None = None
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            try:
                account, params = await self._rest_auth(request)
                if trade is not None and self.rest_trading == "disabled":
                    raise _trading_off("Rest API", trade)
                ctx = Ctx(account, params)
                response = json_response(op(ctx))
            except BnError as exc:
                return json_response(exc.body(), status=exc.status)
            if ctx.orders_count is not None:
                response.headers["X-MBX-ORDER-COUNT-10S"] = str(ctx.orders_count[0])
                response.headers["X-MBX-ORDER-COUNT-1D"] = str(ctx.orders_count[1])
            return response

        return handler

    async def _retired(self, request: web.Request) -> web.Response:
        # The REST listenKey endpoints stopped working on 2026-02-20 [BN-CL 2026-01-21]; the
        # docs give no error body for them, so we answer with the documented -1016
        # SERVICE_SHUTTING_DOWN ("This service is no longer available.").
        self.counters["retired userDataStream"] += 1
        return json_response({"code": -1016, "msg": "This service is no longer available."}, 400)

    def listed_symbols(self) -> list[str]:
        """The symbols exchangeInfo lists: configured (or the defaults), then any with orders."""
        symbols = sorted(self.strict_symbols or set(DEFAULT_SYMBOLS))
        for account in self.accounts.values():
            symbols.extend(s for s in self.book(account).symbols() if s not in symbols)
        return symbols

    async def _no_futures(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "assets": [],
                "symbols": [],
            }
        )

    def op_capital_config(self, ctx: Ctx) -> Any:
        """`GET /sapi/v1/capital/config/getall`: every coin of a listed symbol, one network."""
        coins: dict[str, None] = {}
        for symbol in self.listed_symbols():
            info = _symbol_info(symbol)
            coins[info["baseAsset"]] = None
            coins[info["quoteAsset"]] = None
        return [_coin_json(coin) for coin in coins]

    async def _exchange_info(self, request: web.Request) -> web.Response:
        wanted = request.query.get("symbol")
        symbols = self.listed_symbols()
        if wanted is not None:
            if wanted not in symbols:
                return json_response({"code": -1121, "msg": "Invalid symbol."}, 400)
            symbols = [wanted]
        return json_response(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": self._rate_limit_table(),
                "exchangeFilters": [],
                "symbols": [_symbol_info(s) for s in symbols],
            }
        )

    def _rate_limit_table(self) -> list[dict[str, Any]]:
        return [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.weight_limit,
            },
            {
                "rateLimitType": "ORDERS",
                "interval": "SECOND",
                "intervalNum": 10,
                "limit": self.orders_10s_limit,
            },
            {
                "rateLimitType": "ORDERS",
                "interval": "DAY",
                "intervalNum": 1,
                "limit": self.orders_day_limit,
            },
            {"rateLimitType": "CONNECTIONS", "interval": "MINUTE", "intervalNum": 5, "limit": 300},
        ]

    # -- rate limits -----------------------------------------------------------------------
    def weight(self, request: web.Request, account: SimAccount | None) -> list[tuple[str, int]]:
        key = (request.method, request.path)
        if key == ("GET", "/api/v3/openOrders"):
            weight = OPEN_ORDERS_WEIGHT[0 if "symbol" in request.query else 1]
        else:
            found = REST_WEIGHTS.get(key)
            if found is None:
                return []
            weight = found
        return [(f"ip:{self.client_id(request)}", weight)]

    def spend(self, bucket: str, weight: int, now: float) -> Verdict:
        # Binance counts weight per calendar minute of the wall clock, not the monotonic one.
        window = self._windows.get(bucket)
        if window is None:
            window = self._windows[bucket] = WeightWindow(self.weight_limit, 60.0)
        return window.spend(weight, time.time())

    def throttled(self, verdict: Verdict, request: web.Request) -> web.Response:
        error = self._throttle_error(verdict)
        headers = {"Retry-After": str(verdict.retry_after_s)}
        if verdict.used:
            headers["X-MBX-USED-WEIGHT-1M"] = str(verdict.used)
        return json_response({"code": error.code, "msg": error.msg}, error.status, headers)

    def _throttle_error(self, verdict: Verdict) -> BnError:
        now_ms = self.now_ms()
        retry_at = now_ms + verdict.retry_after_s * 1000
        data = {"serverTime": now_ms, "retryAfter": retry_at}
        if verdict.banned:
            return BnError(
                418,
                -1003,
                f"Way too much request weight used; IP banned until {retry_at}. "
                "Please use WebSocket Streams for live updates to avoid bans.",
                data,
            )
        return BnError(
            429,
            -1003,
            f"Too much request weight used; current limit is {self.weight_limit} request weight "
            "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
            data,
        )

    def server_error(self, status: int, request: web.Request) -> web.Response:
        return json_response(_server_error(status).body(), status)

    def decorate(
        self, response: web.StreamResponse, request: web.Request, used: dict[str, int]
    ) -> None:
        for count in used.values():
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(count)

    def reset_limits(self) -> None:
        super().reset_limits()
        self._windows.clear()

    def _count_order(self, account: SimAccount, n: int = 1) -> tuple[int, int]:
        now = time.time()
        counts = []
        for bucket, limit, size, label in (
            (f"orders10s:{account.name}", self.orders_10s_limit, 10.0, "10 SECOND"),
            (f"orders1d:{account.name}", self.orders_day_limit, 86400.0, "1 DAY"),
        ):
            window = self._windows.get(bucket)
            if window is None:
                window = self._windows[bucket] = WeightWindow(limit, size)
            verdict = window.spend(n, now)
            if not verdict.ok:
                raise BnError(
                    429, -1015, f"Too many new orders; current limit is {limit} orders per {label}."
                )
            counts.append(verdict.used)
        return counts[0], counts[1]

    # -- REST authentication -----------------------------------------------------------------
    async def _rest_auth(self, request: web.Request) -> tuple[SimAccount, dict[str, str]]:
        key = request.headers.get(self.key_header)
        if not key:
            raise BnError(401, -2014, "API-key format invalid.")
        account = self.accounts_by_key.get(key)
        if account is None:
            raise BnError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        # The signature covers the query string then the body exactly as sent: read the raw
        # request line, never a re-encoded URL.
        query = request.raw_path.partition("?")[2]
        body = (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
        params = _parse_params(body)
        params.update(_parse_params(query))  # the query string wins [BN-REST]
        signature = params.pop("signature", "")
        if not signature:
            raise _missing("signature")
        self._check_timestamp_params(params)
        payload = (_strip_signature(query) + _strip_signature(body)).encode()
        if not self._verify(account, payload, signature):
            self.counters["signature_failures"] += 1
            raise BnError(400, -1022, "Signature for this request is not valid.")
        self._check_window(account, params)
        return account, params

    def _verify(self, account: SimAccount, payload: bytes, signature: str) -> bool:
        if account.key_type == "ed25519":
            key = self._public_key(account)
            try:
                key.verify(base64.b64decode(signature, validate=True), payload)
            except (InvalidSignature, ValueError, binascii.Error):
                return False
            return True
        if not signature.isascii():
            return False
        expected = hmac.new(account.secret.encode(), payload, hashlib.sha256).hexdigest()
        # Binance reads the HMAC hex case-insensitively.
        return hmac.compare_digest(expected, signature.lower())

    def _public_key(self, account: SimAccount) -> Ed25519PublicKey:
        key = self._public_keys.get(account.name)
        if key is None:
            text = account.secret.strip()
            if text.startswith("-----BEGIN"):
                loaded = load_pem_public_key(text.encode())
                if not isinstance(loaded, Ed25519PublicKey):
                    raise TypeError(f"account {account.name}: not an Ed25519 public key")
                key = loaded
            else:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
            self._public_keys[account.name] = key
        return key

    def _check_timestamp_params(self, params: dict[str, str]) -> None:
        timestamp = params.get("timestamp")
        if not timestamp:
            raise _missing("timestamp")
        if not timestamp.isdigit():
            raise _illegal("timestamp", "^[0-9]{1,20}$")
        window = params.get("recvWindow")
        if window is not None:
            try:
                value = Decimal(window)
            except InvalidOperation:
                raise _illegal("recvWindow", "^[0-9]{1,20}(\\.[0-9]{1,3})?$") from None
            if value > RECV_WINDOW_MAX_MS:
                raise BnError(
                    400,
                    -1102,
                    "'recvWindow' contains unexpected value. Cannot be greater than '60000'.",
                )

    def _check_window(self, account: SimAccount, params: dict[str, str]) -> None:
        timestamp = int(params["timestamp"])
        if timestamp >= 10**14:  # microseconds are accepted too [BN-REST "Timing security"]
            timestamp //= 1000
        window = Decimal(params.get("recvWindow") or RECV_WINDOW_DEFAULT_MS)
        now = self.now_ms(account.name)
        if timestamp >= now + 1000:
            raise BnError(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if now - timestamp > window:
            raise BnError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    # -- operations (shared by REST and the WebSocket API) ----------------------------------
    def _symbol(self, params: dict[str, str]) -> str:
        symbol = params.get("symbol")
        if not symbol:
            raise _missing("symbol")
        if len(symbol) > 20:
            raise BnError(400, -1121, "Invalid symbol.")
        if (
            self.strict_symbols
            and symbol not in self.strict_symbols
            and not any(symbol in self.book(a).symbols() for a in self.accounts.values())
        ):
            raise BnError(400, -1121, "Invalid symbol.")
        return symbol

    def op_place(self, ctx: Ctx) -> Any:
        p = ctx.params
        symbol = self._symbol(p)
        side = _side(p)
        order_type = p.get("type") or ""
        if not order_type:
            raise _missing("type")
        if order_type not in ORDER_TYPES:
            raise BnError(400, -1116, "Invalid orderType.")
        book = self.book(ctx.account)
        spec = self._leg_spec(book, p, symbol, side, order_type, p.get("newClientOrderId", ""), "")
        ctx.orders_count = self._count_order(ctx.account)
        order = book.place(spec)
        if order_type == "MARKET":  # no matching engine: a market order fills at once
            book.fill(order.order_id, symbol=symbol)
        resp_type = p.get("newOrderRespType") or (
            "FULL" if order_type in ("LIMIT", "MARKET") else "ACK"
        )
        if resp_type == "ACK":
            return {
                "symbol": symbol,
                "orderId": int(order.order_id),
                "orderListId": -1,
                "clientOrderId": order.client_order_id,
                "transactTime": order.time_ms,
            }
        result = _placed_json(order)
        if resp_type == "FULL":
            result["fills"] = []
        return result

    def _leg_spec(
        self,
        book: SimBook,
        p: dict[str, str],
        symbol: str,
        side: str,
        order_type: str,
        client_id: str,
        prefix: str,
    ) -> OrderSpec:
        def name(field_name: str) -> str:
            return f"{prefix}{field_name[0].upper()}{field_name[1:]}" if prefix else field_name

        quantity = _decimal(p, "quantity")
        if quantity is None:
            raise _missing("quantity")
        price = _decimal(p, name("price"))
        if order_type in PRICED_TYPES and price is None:
            raise _missing(name("price"))
        tif = p.get(name("timeInForce"))
        if order_type in TIF_TYPES:
            if not tif:
                raise _missing(name("timeInForce"))
            if tif not in ("GTC", "IOC", "FOK"):
                raise BnError(400, -1115, "Invalid timeInForce.")
        stop = _decimal(p, name("stopPrice"))
        if order_type in STOP_TYPES and stop is None:
            raise _missing(name("stopPrice"))
        if client_id and _open_client_id(book, symbol, client_id):
            raise BnError(400, -2010, "Duplicate order sent.")
        return OrderSpec(
            symbol=symbol,
            side=side,
            order_type=order_type,
            price=price or Decimal(0),
            quantity=quantity,
            client_order_id=client_id,
            time_in_force=tif or "GTC",
            stop_price=stop or Decimal(0),
        )

    def op_place_oco(self, ctx: Ctx) -> Any:
        p = ctx.params
        symbol = self._symbol(p)
        side = _side(p)
        book = self.book(ctx.account)
        legs = []
        for prefix in ("above", "below"):
            leg_type = p.get(f"{prefix}Type") or ""
            if not leg_type:
                raise _missing(f"{prefix}Type")
            if leg_type not in ORDER_TYPES - {"MARKET", "LIMIT"}:
                raise BnError(400, -1158, "Order type not supported in OCO.")
            client_id = p.get(f"{prefix}ClientOrderId", "")
            legs.append(self._leg_spec(book, p, symbol, side, leg_type, client_id, prefix))
        ctx.orders_count = self._count_order(ctx.account, len(legs))
        order_list = book.place_list(
            legs, contingency_type="OCO", list_client_order_id=p.get("listClientOrderId", "")
        )
        reports = book.legs(order_list)
        return _list_json(order_list, book, [_placed_json(o) for o in reports])

    def _find_open(self, book: SimBook, p: dict[str, str], symbol: str) -> SimOrder | None:
        order_id, client_id = _named_by(p, "orderId", "origClientOrderId")
        if order_id:
            if not order_id.isdigit():
                raise _illegal("orderId", "^[0-9]{1,20}$")
            order = book.open.get((symbol, order_id))
            if order is not None and client_id and order.client_order_id != client_id:
                return None
            return order
        found = book.by_symbol_client_id.get((symbol, client_id or ""))
        return book.open.get(found) if found is not None else None

    def op_cancel(self, ctx: Ctx) -> Any:
        p = ctx.params
        symbol = self._symbol(p)
        restriction = p.get("cancelRestrictions")
        if restriction is not None and restriction not in ("ONLY_NEW", "ONLY_PARTIALLY_FILLED"):
            raise BnError(400, -1145, "Invalid cancelRestrictions")
        book = self.book(ctx.account)
        order = self._find_open(book, p, symbol)
        if order is None:
            raise BnError(400, -2011, UNKNOWN_ORDER)
        if restriction is not None and order.status != restriction.removeprefix("ONLY_"):
            raise BnError(400, -2011, "Order was not canceled due to cancel restrictions.")
        list_id = order.list_id if order.list_id in book.lists else None
        gone = book.cancel(
            order.order_id, symbol=symbol, cancel_client_order_id=p.get("newClientOrderId", "")
        )
        if list_id is not None:
            # Cancelling a leg cancels the whole list; the answer has the list shape [BN-REST].
            closed = book.get_list(list_id)
            assert closed is not None
            return _list_json(closed, book, [_cancel_json(o) for o in gone])
        return _cancel_json(gone[0])

    def op_cancel_all(self, ctx: Ctx) -> Any:
        symbol = self._symbol(ctx.params)
        book = self.book(ctx.account)
        targets = book.open_orders([symbol])
        if not targets:
            # Nothing open on the symbol: -2011 (community reports, §1.2), or by the switch an
            # empty array (the docs do not say).
            if self.empty_cancel_all == "empty_list":
                return []
            raise BnError(400, -2011, UNKNOWN_ORDER)
        result: list[dict[str, Any]] = []
        for order in targets:
            if (symbol, order.order_id) not in book.open:
                continue  # went with its list
            if order.list_id is not None and order.list_id in book.lists:
                gone = book.cancel_list(order.list_id)
                closed = book.get_list(order.list_id)
                assert closed is not None
                result.append(_list_json(closed, book, [_cancel_json(o) for o in gone]))
            else:
                result.extend(_cancel_json(o) for o in book.cancel(order.order_id, symbol=symbol))
        return result

    def _find_list(self, book: SimBook, p: dict[str, str]) -> SimOrderList | None:
        list_id, client_id = _named_by(p, "orderListId", "listClientOrderId")
        if list_id:
            if not list_id.lstrip("-").isdigit():
                raise _illegal("orderListId", "^[0-9]{1,20}$")
            found = book.get_list(list_id)
            if found is not None and client_id and found.list_client_order_id != client_id:
                return None
            return found
        for candidate in (*book.lists.values(), *reversed(book.closed_lists.values())):
            if candidate.list_client_order_id == client_id:
                return candidate
        return None

    def op_cancel_list(self, ctx: Ctx) -> Any:
        p = ctx.params
        symbol = self._symbol(p)
        book = self.book(ctx.account)
        found = self._find_list(book, p)
        if found is None or not found.open or found.symbol != symbol:
            raise BnError(400, -2011, self.list_unknown_message)
        gone = book.cancel_list(found.list_id, cancel_client_order_id=p.get("newClientOrderId", ""))
        closed = book.get_list(found.list_id)
        assert closed is not None
        return _list_json(closed, book, [_cancel_json(o) for o in gone])

    def op_open_orders(self, ctx: Ctx) -> Any:
        symbol = ctx.params.get("symbol")
        book = self.book(ctx.account)
        if symbol is not None:
            symbol = self._symbol(ctx.params)
            return [_order_json(o) for o in book.open_orders([symbol])]
        return [_order_json(o) for o in book.open_orders()]

    # Accounts whose key may read but not trade (`canTrade` false); tests set it per instance.
    trade_disabled: frozenset[str] = frozenset()

    def op_account(self, ctx: Ctx) -> Any:
        """`GET /api/v3/account`: permissions and (no) balances, as a spot account shows them."""
        can_trade = ctx.account.name not in self.trade_disabled
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "canTrade": can_trade,
            "canWithdraw": False,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.now_ms(ctx.account.name),
            "accountType": "SPOT",
            "balances": [],
            "permissions": ["SPOT"] if can_trade else [],
            "uid": 1000 + sorted(self.accounts).index(ctx.account.name),
        }

    async def _book_ticker(self, request: web.Request) -> web.Response:
        """`GET /api/v3/ticker/bookTicker?symbol=`, priced from the books (`book_ticker`)."""
        symbol = request.query.get("symbol", "")
        if symbol not in self.listed_symbols():
            return json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        return json_response(self.book_ticker(symbol, qty="1.00000000"))

    def op_open_lists(self, ctx: Ctx) -> Any:
        book = self.book(ctx.account)
        return [_list_json(lst, book, None) for lst in book.open_lists()]

    def op_query_order(self, ctx: Ctx) -> Any:
        p = ctx.params
        symbol = self._symbol(p)
        book = self.book(ctx.account)
        order_id, client_id = _named_by(p, "orderId", "origClientOrderId")
        order = (
            book.get(order_id, symbol)
            if order_id
            else book.get_by_client_id(client_id or "", symbol)
        )
        if (
            order is None
            or order.symbol != symbol
            or (client_id and order.client_order_id != client_id)
        ):
            raise BnError(400, -2013, "Order does not exist.")
        return _order_json(order)

    def op_query_list(self, ctx: Ctx) -> Any:
        book = self.book(ctx.account)
        found = self._find_list(book, ctx.params)
        if found is None:
            raise BnError(400, -2013, "Order list does not exist.")
        return _list_json(found, book, None)

    # -- WebSocket API -----------------------------------------------------------------------
    async def _ws_api(self, request: web.Request) -> web.StreamResponse:
        _, refusal = self.admit(request, None)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = WsConn(
            ws=ws,
            request=request,
            remote=self.client_id(request),  # whose "IP" it is: its key header, as for REST
            connected_ms=self.now_ms(),
            connected_mono=time.monotonic(),
            return_rate_limits=request.query.get("returnRateLimits", "true") != "false",
        )
        conn.last_pong = conn.connected_mono
        self.conns.add(conn)
        self.counters["ws connections"] += 1
        writer = self.spawn(self._ws_writer(conn))
        pinger = self.spawn(self._ws_pinger(conn))
        if self.faults.draw(FaultKind.WS_DROP, None, WS_PATH) is not None:
            self.counters["faults ws_drop"] += 1
            self._abort(conn)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._ws_request(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    conn.last_pong = time.monotonic()
                elif msg.type is WSMsgType.BINARY:
                    conn.send(_ws_error(None, BnError(400, -1135, "Invalid JSON Request")))
        finally:
            self._forget(conn)
            pinger.cancel()
            conn.out.put_nowait(None)
            await asyncio.wait([writer], timeout=1.0)  # let queued frames out, briefly
        return ws

    def _forget(self, conn: WsConn) -> None:
        conn.closed = True
        self.conns.discard(conn)
        for sub in conn.subs.values():
            self.book(sub.account).unsubscribe(sub.listener)
        conn.subs.clear()

    async def _ws_writer(self, conn: WsConn) -> None:
        while (item := await next_frame(conn.out)) is not None:
            if conn.ws.closed:
                return
            frame, entry = item
            try:
                await conn.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            if entry is not None:
                entry["answered"] = time.monotonic()
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.close()

    async def _ws_pinger(self, conn: WsConn) -> None:
        interval = self.settings.ping_interval_s or PING_INTERVAL_S
        pong_timeout = 3 * interval  # one minute at the documented 20 s
        while not conn.ws.closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - conn.connected_mono > self.max_connection_s:
                self.counters["ws closed max age"] += 1
                self._close_after_flush(conn)
                return
            if now - conn.last_pong > pong_timeout:
                self.counters["ws closed no pong"] += 1
                self._abort(conn)
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.ping(str(self.now_ms()).encode())

    def _abort(self, conn: WsConn) -> None:
        """Drop the TCP connection with no close frame, as a network failure would."""
        conn.closed = True
        transport = conn.request.transport
        if transport is not None:
            transport.abort()
        else:
            self._close_after_flush(conn)

    def _close_after_flush(self, conn: WsConn) -> None:
        conn.out.put_nowait(None)
        conn.closed = True

    async def _ws_request(self, conn: WsConn, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            conn.send(_ws_error(None, BnError(400, -1135, "Invalid JSON Request")))
            return
        if not isinstance(request, dict):
            conn.send(_ws_error(None, BnError(400, -1135, "Invalid JSON Request")))
            return
        req_id = request.get("id")
        method = str(request.get("method") or "").removeprefix("v3/")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            conn.send(_ws_error(req_id, BnError(400, -1135, "Invalid JSON Request")))
            return
        weight = WS_WEIGHTS.get(method)
        if method == "openOrders.status":
            weight = OPEN_ORDERS_WEIGHT[0 if "symbol" in params else 1]
        if weight is None:
            conn.send(_ws_error(req_id, BnError(400, -1020, "This operation is not supported.")))
            return
        self.counters[f"requests ws {method}"] += 1
        api_key = params.get("apiKey")
        account = self.account_for_key(str(api_key)) if api_key else conn.session_account
        name = account.name if account else None
        if name is not None:
            conn.signers.add(name)
        entry = {"t": time.time(), "method": "WS", "path": method, "account": name}
        self.request_log.append(entry)
        refusal, used = self._ws_admit(conn, account, method, weight)
        if refusal is not None:
            conn.send(_ws_error(req_id, refusal, self._rate_limits(conn, used, params)))
            if refusal.status == 418:  # banned: "you will be disconnected" [BN-WS "IP limits"]
                self._close_after_flush(conn)
            return
        delay = self.faults.latency_s(name, method)
        stall = self.faults.draw(FaultKind.STALL, name, method)
        # The venue acts half a round trip after the request left, and its answer leaves one
        # round trip after, its own work inside it (as for REST, `SimVenue._middleware`).
        dispatch = functools.partial(
            self._ws_dispatch,
            conn,
            req_id,
            method,
            params,
            account,
            used,
            entry,
            answer_at=time.monotonic() + delay,
        )
        if delay or stall is not None:
            self.spawn(self._ws_delayed(delay, stall, dispatch))
            return
        dispatch()

    async def _ws_delayed(
        self, delay: float, stall: Fault | None, dispatch: Callable[[], None]
    ) -> None:
        if delay:
            await asyncio.sleep(delay / 2)
        if stall is not None:
            # Hold the request past the client's timeout, then drop it unanswered.
            self.counters["faults stall"] += 1
            await asyncio.sleep(stall.stall_s)
            return
        dispatch()

    def _ws_admit(
        self, conn: WsConn, account: SimAccount | None, method: str, weight: int
    ) -> tuple[BnError | None, int]:
        """Bans, 429 storms and the weight window, per message as for REST requests."""
        now = time.monotonic()
        client = account.api_key if account else conn.remote
        tracker = self.ban_tracker(client)
        verdict = tracker.check(now)
        if verdict is None:
            storm = self.faults.draw(
                FaultKind.RATE_LIMIT, account.name if account else None, method
            )
            if storm is not None:
                self.counters["faults rate_limit"] += 1
                tracker.limited(now, storm.retry_after_s)
                verdict = Verdict(ok=False, used=0, retry_after_s=storm.retry_after_s)
            else:
                verdict = self.spend(f"ip:{client}", weight, now)
                if verdict.ok:
                    return None, verdict.used
                tracker.limited(now, verdict.retry_after_s)
        self.counters["http 418" if verdict.banned else "http 429"] += 1
        return self._throttle_error(verdict), verdict.used

    def _rate_limits(
        self, conn: WsConn, used: int, params: dict[str, Any], orders: tuple[int, int] | None = None
    ) -> list[dict[str, Any]] | None:
        flag = params.get("returnRateLimits")
        show = conn.return_rate_limits if flag is None else flag not in (False, "false")
        if not show:
            return None
        limits = []
        if orders is not None:
            limits.append(_limit("ORDERS", "SECOND", 10, self.orders_10s_limit, orders[0]))
            limits.append(_limit("ORDERS", "DAY", 1, self.orders_day_limit, orders[1]))
        limits.append(_limit("REQUEST_WEIGHT", "MINUTE", 1, self.weight_limit, used))
        return limits

    def _ws_dispatch(
        self,
        conn: WsConn,
        req_id: Any,
        method: str,
        params: dict[str, Any],
        account: SimAccount | None,
        used: int,
        entry: dict[str, Any] | None = None,
        *,
        answer_at: float = 0.0,
    ) -> None:
        """Answer one request; `entry` (its request log entry) is stamped `start` now and
        `answered` when its answer is on the wire, at `answer_at` (monotonic) or now."""
        if conn.closed:
            return
        send = functools.partial(self._ws_answer, conn, answer_at)
        if entry is not None:
            entry["start"] = time.monotonic()
        name = account.name if account else None
        before = self.faults.draw(FaultKind.ERROR_BEFORE, name, method)
        if before is not None:
            self.counters["faults error_before"] += 1
            send(_ws_error(req_id, _server_error(before.http_status)), entry)
            return
        orders: tuple[int, int] | None = None
        due = PUSH_DUE.set(answer_at)  # what the request's handling pushes travels back
        try:
            result, orders = self._ws_call(conn, method, params)
        except BnError as exc:
            send(_ws_error(req_id, exc, self._rate_limits(conn, used, params)), entry)
            return
        finally:
            PUSH_DUE.reset(due)
        after = self.faults.draw(FaultKind.ERROR_AFTER, name, method)
        if after is not None:
            self.counters["faults error_after"] += 1
            send(_ws_error(req_id, _server_error(after.http_status)), entry)
            return
        frame: dict[str, Any] = {"id": req_id, "status": 200, "result": result}
        limits = self._rate_limits(conn, used, params, orders)
        if limits is not None:
            frame["rateLimits"] = limits
        send(frame, entry)

    @staticmethod
    def _ws_answer(
        conn: WsConn, answer_at: float, frame: dict[str, Any], entry: dict[str, Any] | None
    ) -> None:
        left = answer_at - time.monotonic()
        if left > 0:
            asyncio.get_running_loop().call_later(left, conn.send, frame, entry)
        else:
            conn.send(frame, entry)

    def _ws_call(
        self, conn: WsConn, method: str, params: dict[str, Any]
    ) -> tuple[Any, tuple[int, int] | None]:
        if method == "ping":
            return {}, None
        if method == "time":
            account = conn.session_account
            return {"serverTime": self.now_ms(account.name if account else None)}, None
        if method == "exchangeInfo":
            return {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": self._rate_limit_table(),
                "exchangeFilters": [],
                "symbols": [
                    _symbol_info(s) for s in sorted(self.strict_symbols or DEFAULT_SYMBOLS)
                ],
            }, None
        if method == "session.logon":
            return self._ws_logon(conn, params), None
        if method == "session.status":
            return self._session_status(conn), None
        if method == "session.logout":
            for sub in [s for s in conn.subs.values() if s.kind == "logon"]:
                self._end_subscription(conn, sub)
            conn.session_account = None
            conn.authorized_ms = None
            return self._session_status(conn), None
        if method == "session.subscriptions":
            return [{"subscriptionId": sid} for sid in conn.subs], None
        if method == "userDataStream.subscribe":
            if conn.session_account is None:
                # Needs a session logged on with an Ed25519 key [BN-WS]; the docs give no body
                # for the refusal, so we answer with the documented -1002 UNAUTHORIZED.
                raise BnError(401, -1002, "You are not authorized to execute this request.")
            return {"subscriptionId": self._subscribe(conn, conn.session_account, "logon")}, None
        if method == "userDataStream.subscribe.signature":
            account = self._ws_auth(conn, params, ad_hoc_only=True)
            return {"subscriptionId": self._subscribe(conn, account, "signature")}, None
        if method == "userDataStream.unsubscribe":
            wanted = params.get("subscriptionId")
            for sub in list(conn.subs.values()):
                if wanted is None or str(sub.sid) == str(wanted):
                    self._end_subscription(conn, sub)
            return {}, None
        if method in ("userDataStream.start", "userDataStream.ping", "userDataStream.stop"):
            # Retired with the REST listenKey endpoints on 2026-02-20 [BN-CL 2026-01-21].
            raise BnError(400, -1016, "This service is no longer available.")
        op = self._ws_ops[method]
        account = self._ws_auth(conn, params, ad_hoc_only=False)
        if method in TRADE_METHODS and self.ws_trading == "disabled":
            raise _trading_off("WebSocket API", method)
        ctx = Ctx(account, {k: _ws_str(v) for k, v in params.items()})
        return op(ctx), ctx.orders_count

    def _ws_auth(self, conn: WsConn, params: dict[str, Any], *, ad_hoc_only: bool) -> SimAccount:
        ad_hoc = "apiKey" in params or "signature" in params or ad_hoc_only
        signature = ""
        if ad_hoc:
            account, signature = self._ws_signer(params)
        elif conn.session_account is not None:
            account = conn.session_account
        else:
            raise _missing("apiKey")
        self._check_timestamp_params({k: _ws_str(v) for k, v in params.items()})
        if ad_hoc and not self._verify(account, _ws_payload(params).encode(), signature):
            self.counters["signature_failures"] += 1
            raise BnError(400, -1022, "Signature for this request is not valid.")
        self._check_window(account, {k: _ws_str(v) for k, v in params.items()})
        return account

    def _ws_signer(self, params: dict[str, Any]) -> tuple[SimAccount, str]:
        """The account of a request's `apiKey` and the request's `signature`: both required."""
        api_key = params.get("apiKey")
        if not api_key:
            raise _missing("apiKey")
        account = self.account_for_key(str(api_key))
        if account is None:
            raise BnError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        signature = str(params.get("signature") or "")
        if not signature:
            raise _missing("signature")
        return account, signature

    def _ws_logon(self, conn: WsConn, params: dict[str, Any]) -> dict[str, Any]:
        account, signature = self._ws_signer(params)
        str_params = {k: _ws_str(v) for k, v in params.items()}
        self._check_timestamp_params(str_params)
        # Only Ed25519 keys may log on; Binance answers other key types as a bad signature
        # (sieblyio/binance#626).
        if account.key_type != "ed25519" or not self._verify(
            account, _ws_payload(params).encode(), signature
        ):
            self.counters["signature_failures"] += 1
            raise BnError(400, -1022, "Signature for this request is not valid.")
        self._check_window(account, str_params)
        if conn.session_account is not None and conn.session_account is not account:
            for sub in [s for s in conn.subs.values() if s.kind == "logon"]:
                self._end_subscription(conn, sub)
        conn.session_account = account
        conn.authorized_ms = self.now_ms()
        self._drop_if_faulted(conn, account)
        return self._session_status(conn)

    def _session_status(self, conn: WsConn) -> dict[str, Any]:
        account = conn.session_account
        return {
            "apiKey": account.api_key if account else None,
            "authorizedSince": conn.authorized_ms if account else None,
            "connectedSince": conn.connected_ms,
            "returnRateLimits": conn.return_rate_limits,
            "serverTime": self.now_ms(),
            "userDataStream": bool(conn.subs),
        }

    def _drop_if_faulted(self, conn: WsConn, account: SimAccount) -> None:
        if self.faults.draw(FaultKind.WS_DROP, account.name, WS_PATH) is not None:
            self.counters["faults ws_drop"] += 1
            self._abort(conn)

    def _subscribe(self, conn: WsConn, account: SimAccount, kind: str) -> int:
        if any(sub.account is account for sub in conn.subs.values()):
            # One subscription per account per connection [BN-WS]; the docs give no body, so
            # we answer with the documented -1191 TOO_MANY_SUBSCRIPTIONS wording.
            raise BnError(400, -1191, "Similar subscription is already active on this connection.")
        sid = next(conn.sub_ids)
        book = self.book(account)

        def listener(event: BookEvent) -> None:
            if conn.closed:
                return
            if self.faults.active(FaultKind.WS_SILENT, account.name, WS_PATH) is not None:
                self.counters["ws events silenced"] += 1
                return
            payload = _event_json(event, book, self._trade_ids, self._exec_ids)
            conn.send({"subscriptionId": sid, "event": payload})

        book.subscribe(listener)
        conn.subs[sid] = Subscription(sid, account, kind, listener)
        self._drop_if_faulted(conn, account)
        return sid

    def _end_subscription(self, conn: WsConn, sub: Subscription) -> None:
        self.book(sub.account).unsubscribe(sub.listener)
        conn.subs.pop(sub.sid, None)
        conn.send(
            {
                "subscriptionId": sub.sid,
                "event": {"e": "eventStreamTerminated", "E": self.now_ms()},
            }
        )

    # -- stream faults and lifecycle ---------------------------------------------------------
    def on_fault(self, fault: Fault) -> None:
        kind = fault.kind
        if kind not in (FaultKind.WS_DROP, FaultKind.SERVER_SHUTDOWN, FaultKind.LISTEN_KEY_EXPIRY):
            return
        hit = False
        for conn in list(self.conns):
            names: set[str | None] = set(conn.accounts()) or {None}
            if not any(fault.matches(n, WS_PATH) for n in names):
                continue
            hit = True
            if kind is FaultKind.WS_DROP:
                self._abort(conn)
            elif kind is FaultKind.SERVER_SHUTDOWN:
                conn.send({"event": {"e": "serverShutdown", "E": self.now_ms()}})
                self._close_after_flush(conn)
            else:
                for sub in list(conn.subs.values()):
                    if fault.matches(sub.account.name, WS_PATH):
                        self._end_subscription(conn, sub)
        if hit:
            self.counters[f"faults {kind.value}"] += 1
        if fault.count is not None:
            fault.count = max(0, fault.count - 1)

    async def stop(self) -> None:
        for conn in list(self.conns):
            self._close_after_flush(conn)
        await super().stop()


# -- rendering -------------------------------------------------------------------------------
def _parse_params(raw: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not raw:
        return params
    for key, value in parse_qsl(raw, keep_blank_values=True):
        if key in params:
            raise BnError(400, -1101, "Duplicate values for a parameter detected.")
        params[key] = value
    return params


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(part for part in raw.split("&") if not part.startswith("signature="))


def _ws_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _ws_payload(params: dict[str, Any]) -> str:
    return "&".join(f"{k}={_ws_str(v)}" for k, v in sorted(params.items()) if k != "signature")


def _decimal(params: dict[str, str], name: str) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise _illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$") from None
    if not value.is_finite() or value < 0:
        raise _illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$")
    return value


def _open_client_id(book: SimBook, symbol: str, client_id: str) -> bool:
    key = book.by_symbol_client_id.get((symbol, client_id))
    return key is not None and key in book.open


def _server_error(status: int) -> BnError:
    if status == 504:
        return BnError(
            504,
            -1007,
            "Timeout waiting for response from backend server. "
            "Send status unknown; execution status unknown.",
        )
    return BnError(
        status,
        -1006,
        "An unexpected response was received from the message bus. Execution status unknown.",
    )


def _ws_error(
    req_id: Any, error: BnError, rate_limits: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"id": req_id, "status": error.status, "error": error.body()}
    if rate_limits is not None:
        frame["rateLimits"] = rate_limits
    return frame


def _limit(kind: str, interval: str, num: int, limit: int, count: int) -> dict[str, Any]:
    return {
        "rateLimitType": kind,
        "interval": interval,
        "intervalNum": num,
        "limit": limit,
        "count": count,
    }


def _named_by(p: dict[str, str], id_param: str, client_param: str) -> tuple[str | None, str | None]:
    """The id and the client id a request names an order (list) by; one of them must be sent."""
    venue_id = p.get(id_param)
    client_id = p.get(client_param)
    if not venue_id and not client_id:
        raise BnError(
            400,
            -1102,
            f"Param '{client_param}' or '{id_param}' must be sent, but both were empty/null!",
        )
    return venue_id, client_id


def _list_id(order: SimOrder) -> int:
    return int(order.list_id) if order.list_id is not None else -1


def _order_json(o: SimOrder) -> dict[str, Any]:
    """An order as `GET /api/v3/openOrders` and `GET /api/v3/order` show it."""
    return {
        "symbol": o.symbol,
        "orderId": int(o.order_id),
        "orderListId": _list_id(o),
        "clientOrderId": o.client_order_id,
        "price": _fmt(o.price),
        "origQty": _fmt(o.orig_qty),
        "executedQty": _fmt(o.executed_qty),
        "cummulativeQuoteQty": _fmt(o.cum_quote_qty),
        "status": o.status,
        "timeInForce": o.time_in_force,
        "type": o.order_type,
        "side": o.side,
        "stopPrice": _fmt(o.stop_price),
        "icebergQty": "0.00000000",
        "time": o.time_ms,
        "updateTime": o.update_time_ms,
        "isWorking": o.is_open,
        "workingTime": o.time_ms,
        "origQuoteOrderQty": "0.00000000",
        "selfTradePreventionMode": "NONE",
    }


def _placed_json(o: SimOrder) -> dict[str, Any]:
    """A placement answer (`newOrderRespType=RESULT`), also an order list's `orderReports`."""
    result = _report_json(
        o,
        {
            "orderId": int(o.order_id),
            "orderListId": _list_id(o),
            "clientOrderId": o.client_order_id,
        },
        o.time_ms,
    )
    result["workingTime"] = o.time_ms
    result["selfTradePreventionMode"] = "NONE"
    return result


def _cancel_json(o: SimOrder) -> dict[str, Any]:
    """A cancel answer [BN-REST "Cancel order"]."""
    ids = {
        "origClientOrderId": o.client_order_id,
        "orderId": int(o.order_id),
        "orderListId": _list_id(o),
        "clientOrderId": o.cancel_client_order_id,
    }
    result = _report_json(o, ids, o.update_time_ms)
    result["selfTradePreventionMode"] = "NONE"
    return result


def _report_json(o: SimOrder, ids: dict[str, Any], transact_time_ms: int) -> dict[str, Any]:
    """What a placement and a cancel answer share, in Binance's key order: `ids` after `symbol`."""
    result: dict[str, Any] = {
        "symbol": o.symbol,
        **ids,
        "transactTime": transact_time_ms,
        "price": _fmt(o.price),
        "origQty": _fmt(o.orig_qty),
        "executedQty": _fmt(o.executed_qty),
        "origQuoteOrderQty": "0.000000",
        "cummulativeQuoteQty": _fmt(o.cum_quote_qty),
        "status": o.status,
        "timeInForce": o.time_in_force,
        "type": o.order_type,
        "side": o.side,
    }
    if o.stop_price:
        result["stopPrice"] = _fmt(o.stop_price)
    return result


def _list_json(
    lst: SimOrderList, book: SimBook, reports: list[dict[str, Any]] | None
) -> dict[str, Any]:
    orders = []
    for oid in lst.order_ids:
        leg = book.get(oid, lst.symbol)
        orders.append(
            {
                "symbol": lst.symbol,
                "orderId": int(oid),
                "clientOrderId": leg.client_order_id if leg else "",
            }
        )
    result: dict[str, Any] = {
        "orderListId": int(lst.list_id),
        "contingencyType": lst.contingency_type,
        "listStatusType": "EXEC_STARTED" if lst.open else "ALL_DONE",
        "listOrderStatus": "EXECUTING" if lst.open else "ALL_DONE",
        "listClientOrderId": lst.list_client_order_id,
        "transactionTime": lst.time_ms,
        "symbol": lst.symbol,
        "orders": orders,
    }
    if reports is not None:
        result["orderReports"] = reports
    return result


def _event_json(
    event: BookEvent,
    book: SimBook,
    trade_ids: itertools.count[int],
    exec_ids: itertools.count[int],
) -> dict[str, Any]:
    """A book change as the user-data stream's `executionReport` or `listStatus` [BN-UDS]."""
    if event.kind is BookEventKind.LIST_STATUS:
        lst = event.order_list
        assert lst is not None
        legs = []
        for oid in lst.order_ids:
            leg = book.get(oid, lst.symbol)
            legs.append({"s": lst.symbol, "i": int(oid), "c": leg.client_order_id if leg else ""})
        return {
            "e": "listStatus",
            "E": event.time_ms,
            "s": lst.symbol,
            "g": int(lst.list_id),
            "c": lst.contingency_type,
            "l": "EXEC_STARTED" if lst.open else "ALL_DONE",
            "L": "EXECUTING" if lst.open else "ALL_DONE",
            "r": "NONE",
            "C": lst.list_client_order_id,
            "T": event.time_ms,
            "O": legs,
        }
    o = event.order
    assert o is not None
    if event.kind is BookEventKind.NEW:
        exec_type = "NEW"
    elif event.kind is BookEventKind.TRADE:
        exec_type = "TRADE"
    else:
        exec_type = o.status  # CANCELED, or EXPIRED for an OCO leg whose sibling filled
    canceled = exec_type == "CANCELED"
    report: dict[str, Any] = {
        "e": "executionReport",
        "E": event.time_ms,
        "s": o.symbol,
        # On a cancel `c` is the cancel request's own id and `C` the cancelled order's [BN-UDS].
        "c": o.cancel_client_order_id if canceled else o.client_order_id,
        "S": o.side,
        "o": o.order_type,
        "f": o.time_in_force,
        "q": _fmt(o.orig_qty),
        "p": _fmt(o.price),
        "P": _fmt(o.stop_price),
        "F": "0.00000000",
        "g": _list_id(o),
        "C": o.client_order_id if canceled else "",
        "x": exec_type,
        "X": o.status,
        "r": "NONE",
        "i": int(o.order_id),
        "l": _fmt(event.last_qty),
        "z": _fmt(o.executed_qty),
        "L": _fmt(event.last_price),
        "n": "0",
        "N": None,
        "T": event.time_ms,
        "t": next(trade_ids) if exec_type == "TRADE" else -1,
        "I": next(exec_ids),
        "w": o.is_open,
        "m": False,
        "M": False,
        "O": o.time_ms,
        "Z": _fmt(o.cum_quote_qty),
        "Y": _fmt(event.last_qty * event.last_price),
        "Q": "0.00000000",
        "W": o.time_ms,
        "V": "NONE",
    }
    if exec_type == "EXPIRED":
        report["eR"] = "OCO_TRIGGER"
    return report


def _coin_json(coin: str) -> dict[str, Any]:
    """One coin of `capital/config/getall`, in the documented fields, balances zero."""
    return {
        "coin": coin,
        "name": coin,
        "depositAllEnable": True,
        "withdrawAllEnable": True,
        "free": "0",
        "freeze": "0",
        "ipoable": "0",
        "ipoing": "0",
        "isLegalMoney": False,
        "locked": "0",
        "storage": "0",
        "trading": True,
        "withdrawing": "0",
        "networkList": [
            {
                "network": coin,
                "coin": coin,
                "name": coin,
                "isDefault": True,
                "depositEnable": True,
                "withdrawEnable": True,
                "withdrawFee": "0",
                "withdrawMin": "0",
                "withdrawMax": "9999999999",
                "withdrawIntegerMultiple": "0.00000001",
                "minConfirm": 1,
                "unLockConfirm": 0,
                "busy": False,
                "sameAddress": False,
                "specialTips": "",
                "depositDesc": "",
                "withdrawDesc": "",
            }
        ],
    }


def _symbol_info(symbol: str) -> dict[str, Any]:
    quote = next((q for q in QUOTE_ASSETS if symbol.endswith(q) and symbol != q), symbol[-4:])
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": symbol[: -len(quote)],
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPE_NAMES),
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "allowAmend": False,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.00000001",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.00000001",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00000001",
                "maxQty": "9000000.00000000",
                "stepSize": "0.00000001",
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE"],
    }
