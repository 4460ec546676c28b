"""BingX spot, simulated: REST under `/openApi/...`, the listenKey stream at `/market`.

Facts from `reference/exchange-apis.md` §3 [BX-DOC]. Each question the sources leave open
(§3.7) is a switch of `BingxBehaviour`, set per venue in the sim TOML (`[venues.bingx.options]`,
`variant = "strictest"` and/or single switches) or at run time through `/_sim/behaviour`:

* `cancel_all_covers_oco`: whether `cancelOpenOrders` also removes OCO legs.
* `leg_id_cancels_list`: whether `cancel`/`cancelOrders` take an OCO leg's id (and cancel its
  whole list, as Binance does) or answer it as an order that does not exist.
* `oco_list_shape`: `oco/openOrderList` as a flat array of legs (docs-v3, JKorf) or as
  `{"ocoOrders": [lists]}` (BingX's 2026 reference).
* `oco_page_unit`: what `pageSize` counts in the `ocoOrders` shape: lists (`"lists"`), or legs
  (`"legs"`, as in the flat shape), the page's legs then grouped by list: a full page of 100
  legs is 50 lists. No source says which; the flat shape always counts legs.
* `oco_page_cap`: the most items a page of `oco/openOrderList` serves whatever `pageSize` asks
  (None: as asked). The docs give `pageSize` no maximum: a venue may serve fewer than asked
  without saying so, and a full page then looks short.
* `empty_read`: what a read with nothing to show answers: an empty list (`"empty"`), or
  `100204 "No data"` (`"no_data"`), among docs-v3's codes that "may be thrown from every
  interface".
* `limits`: `"strict"` (cancel 5/s; cancelOrders, cancelOpenOrders, oco/cancel 2/s; per IP and
  API 3/s on trade endpoints, 2/s on the others) or `"docs_v3"` (10/s nearly everywhere).
* `heartbeat`: JSON `{"ping","time"}` -> `{"pong","time"}`, or text `Ping` -> `Pong`.
* `client_id_field`: the executionReport's client order id as `C`, `c`, or absent, or both in
  Binance's layout (`"c+C"`): `c` the order's id and `C` "", except on a cancel, where `C` is
  the order's id and `c` the cancel's own.
* `recv_window_max_ms`: 5000 (common parameters) or 60000.
* `gone_style`: a cancel of an order that is not open is refused with 80016/80018 (`"codes"`),
  100421 "cancel fail, order not exist" / 100400 "...FILLED or CANCELLED already..."
  (`"docs_table"`), or 100404 "Order does not exist..." (`"v2026"`).
* `throttle_form`: a 100410 names the epoch its disabled period ends (`"epoch"`) or just says
  "rate limited" (`"plain"`). Never a Retry-After header.
* `ban_form`: a 418 names the epoch its ban ends (`"epoch"`) or just says "IP has been banned.
  Stop requests and wait" (`"plain"`, BingX's 2026 error table). Never a Retry-After header.
* `open_orders_show_legs`: whether `trade/openOrders` lists OCO legs with the other open
  orders, or leaves them out (then only `oco/openOrderList` shows them).

`VARIANTS` names two complete sets: `"strictest"` (every answer the hardest to live with) and
`"most_permissive"`. Whatever the form, more than `error_lock_count` (20) answers with one error
code on one API of one account inside `error_lock_window_s` (480 s) lock that API ("over 20 error
code:... can retry after time: <epoch>"), as BingX documents.

What ccxt's `load_markets()` reads with default options is served too (issue 12 item 8), so
an unmodified ccxt bot works with only its URLs changed: the coins of the listed symbols at
`GET /openApi/wallets/v1/capital/config/getall` (signed), the spot symbols at
`/openApi/spot/v1/common/symbols`, and empty lists of USDT-M and coin-M contracts at
`/openApi/swap/v2/quote/contracts` and `/openApi/cswap/v1/market/contracts` (a spot venue).

Signing: the values are URL-decoded and joined `k=v&...` in the order received (query string,
then a form body); a JSON body is signed with its keys sorted a-z. Every server frame on the
stream is gzip-compressed; the server pings `{"ping":id,"time":...}` every 5 s and drops a client
that leaves `max_missed_pongs` pings unanswered.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import itertools
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
from aiohttp import WSMsgType, web

from killswitch.sim.book import BookEvent, BookEventKind, OrderSpec, SimBook, SimOrder
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.frames import Due, next_frame, pushed
from killswitch.sim.ratelimit import Verdict, WeightWindow
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings, json_response

SPOT = "/openApi/spot/v1"
USER_DATA_STREAM = "/openApi/user/auth/userDataStream"
STREAM_PATH = "/market"
# Readiness (issue 14): the API key's permissions (BingX "Query API KEY permissions").
API_PERMISSIONS = "/openApi/v1/account/apiPermissions"
# Permission codes as that answer lists them (1 spot trading, 2 read, 3 perpetual futures
# trading, 4 universal transfer, 5 withdraw, 7 sub-account transfer).
PERMISSION_SPOT_TRADING = 1
PERMISSION_READ = 2
EXECUTION_REPORT = "spot.executionReport"
# What ccxt's `load_markets()` reads besides the spot symbols (issue 12 item 8): the coins
# (signed), the USDT-M perpetual contracts and the coin-M contracts. A spot-only venue lists no
# contracts of either kind.
CAPITAL_CONFIG = "/openApi/wallets/v1/capital/config/getall"
SWAP_CONTRACTS = "/openApi/swap/v2/quote/contracts"
CSWAP_CONTRACTS = "/openApi/cswap/v1/market/contracts"

DEFAULT_SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT", "SUI-USDT")

# path -> (UID requests per second, IP group), strict reading [reference §3.2/§3.3/§3.5,
# corrected 2026-12-06]. Per IP and API: 3/s in group 3 (trade), 2/s in group 2, shared by
# every account behind the IP; the listenKey calls 2/s per UID and 2/s per IP (BingX 2026
# reference, rate-limits §5). Group 1 (market): 100 per 10 s per API, `common/symbols` 1/s
# (`IP_PER_PATH_STRICT`). Every group: 1000 per 10 s in total per IP (group 1: 100)
# [BX-DOC "基础信息"].
ENDPOINT_LIMITS: dict[str, tuple[int | None, int]] = {
    f"{SPOT}/trade/order": (5, 3),
    f"{SPOT}/trade/cancel": (5, 3),
    f"{SPOT}/trade/cancelOrders": (2, 3),
    f"{SPOT}/trade/cancelOpenOrders": (2, 3),
    f"{SPOT}/trade/cancelAllAfter": (1, 2),
    f"{SPOT}/trade/openOrders": (10, 2),
    f"{SPOT}/trade/query": (10, 2),
    f"{SPOT}/oco/order": (2, 2),
    f"{SPOT}/oco/cancel": (2, 2),
    f"{SPOT}/oco/openOrderList": (5, 2),
    f"{SPOT}/oco/orderList": (5, 2),
    USER_DATA_STREAM: (2, 2),
    f"{SPOT}/server/time": (None, 1),
    "/openApi/swap/v2/server/time": (None, 1),
    f"{SPOT}/common/symbols": (None, 1),
    SWAP_CONTRACTS: (None, 1),
    CSWAP_CONTRACTS: (None, 1),
    API_PERMISSIONS: (None, 2),
    f"{SPOT}/ticker/bookTicker": (None, 1),
}
# The docs-v3 site's reading: 10/s per UID nearly everywhere; per IP and API 100 (group 2) or
# 200 (group 3) per 10 s.
DOCS_V3_UID = {f"{SPOT}/trade/order": 5, f"{SPOT}/oco/order": 2}
IP_PER_API_STRICT = {1: (100, 10.0), 2: (2, 1.0), 3: (3, 1.0)}  # (limit, window s)
IP_PER_API_DOCS_V3 = {1: (100, 10.0), 2: (100, 10.0), 3: (200, 10.0)}
# Paths outside the strict per-IP seconds (group 1 figures).
IP_RELAXED = frozenset({f"{SPOT}/trade/order"})
# Strict per-IP figures of single paths: (limit, window s). "Rate limit: 1/s per IP" (BingX
# 2026 reference, spot-market §1).
IP_PER_PATH_STRICT = {f"{SPOT}/common/symbols": (1, 1.0)}
IP_GROUP_TOTAL = {1: 100, 2: 1000, 3: 1000}  # per 10 s
ORDER_PATHS = frozenset({f"{SPOT}/trade/order", f"{SPOT}/oco/order"})

OPEN_STATUSES = ("NEW", "PENDING", "PARTIALLY_FILLED")
ORDER_TYPES = frozenset(
    {"MARKET", "LIMIT", "TAKE_STOP_LIMIT", "TAKE_STOP_MARKET", "TRIGGER_LIMIT", "TRIGGER_MARKET"}
)
TRIGGER_TYPES = frozenset(
    {"TAKE_STOP_LIMIT", "TAKE_STOP_MARKET", "TRIGGER_LIMIT", "TRIGGER_MARKET"}
)
# The book is venue-neutral and admin seeds use Binance's type names: say them in BingX words.
TYPE_NAMES = {
    "LIMIT_MAKER": "LIMIT",
    "STOP_LOSS_LIMIT": "TAKE_STOP_LIMIT",
    "TAKE_PROFIT_LIMIT": "TAKE_STOP_LIMIT",
    "STOP_LOSS": "TAKE_STOP_MARKET",
    "TAKE_PROFIT": "TAKE_STOP_MARKET",
}
CLIENT_ID = re.compile(r"^[A-Za-z0-9_]{1,40}$")
SYMBOL = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+$")
CANCEL_RESTRICTIONS = frozenset(OPEN_STATUSES)

TIMESTAMP_MSG = "Null timestamp or timestamp mismatch"
LISTEN_KEY_TTL_S = 3600.0  # a listenKey is valid for 1 h unless extended [§3.4]
# More answers than this with one error code on one API inside the window lock that API ("over
# 20 error code:100202 requests within 480000 ms for this api" [§3.5]).
ERROR_LOCK_COUNT = 20
ERROR_LOCK_WINDOW_S = 480.0
CHINA_TZ = timezone(timedelta(hours=8))


@dataclass(frozen=True, slots=True)
class BingxBehaviour:
    """One answer to each open question of reference §3.7 (see the module docstring)."""

    cancel_all_covers_oco: bool = False
    leg_id_cancels_list: bool = True
    oco_list_shape: str = "legs"  # legs | ocoOrders
    oco_page_unit: str = "lists"  # lists | legs (what pageSize counts in the ocoOrders shape)
    # The most items one page of oco/openOrderList serves, whatever pageSize asks (the docs
    # give pageSize no maximum): None, as asked; or a cap the venue applies silently.
    oco_page_cap: int | None = None
    # A read with nothing to show: an empty answer, or the docs' common code 100204 "No data".
    empty_read: str = "empty"
    limits: str = "strict"  # strict | docs_v3
    heartbeat: str = "json"  # json | text
    client_id_field: str = "C"  # C | c | none | c+C
    recv_window_max_ms: int = 60_000
    gone_style: str = "codes"  # codes | docs_table | v2026
    throttle_form: str = "epoch"  # epoch | plain
    ban_form: str = "epoch"  # epoch | plain
    open_orders_show_legs: bool = True
    # What an open order's status reads: NEW as the docs' tables say, or WORKING (the docs'
    # own stream demo; BingX.Net maps it to open since April 2026).
    open_status: str = "NEW"
    # cancelAllAfter's answer: docs-v3's (triggerTime in s, status, note) or the 2026
    # reference's (triggerTime in ms alone, 0 once closed).
    dms_answer: str = "status"
    # When a listenKey runs out under an open stream: the socket is closed, or it is told
    # `listenKeyExpired` and left open with no more events (api-ai-skills websocket.md).
    key_expiry: str = "close"

    CHOICES: ClassVar[dict[str, tuple[object, ...]]] = {
        "cancel_all_covers_oco": (False, True),
        "leg_id_cancels_list": (False, True),
        "oco_list_shape": ("legs", "ocoOrders"),
        "oco_page_unit": ("lists", "legs"),
        "oco_page_cap": (None, 10),
        "empty_read": ("empty", "no_data"),
        "limits": ("strict", "docs_v3"),
        "heartbeat": ("json", "text"),
        "client_id_field": ("C", "c", "none", "c+C"),
        "recv_window_max_ms": (5000, 60_000),
        "gone_style": ("codes", "docs_table", "v2026"),
        "throttle_form": ("epoch", "plain"),
        "ban_form": ("epoch", "plain"),
        "open_orders_show_legs": (False, True),
        "open_status": ("NEW", "WORKING"),
        "dms_answer": ("status", "trigger_ms"),
        "key_expiry": ("close", "push"),
    }

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, not {getattr(self, name)!r}"
                )

    def with_changes(self, **changes: Any) -> BingxBehaviour:
        unknown = sorted(set(changes) - set(self.CHOICES))
        if unknown:
            raise ValueError(f"unknown behaviour switch: {', '.join(unknown)}")
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.CHOICES}

    def describe(self) -> str:
        """A short label: the variant's name when it is one, else the switches."""
        for name, variant in VARIANTS.items():
            if variant == self:
                return name
        return ",".join(f"{k}={v}" for k, v in self.to_json().items())


VARIANTS: dict[str, BingxBehaviour] = {
    # Every open question answered the hardest way for a kill.
    "strictest": BingxBehaviour(
        cancel_all_covers_oco=False,
        leg_id_cancels_list=False,
        oco_list_shape="ocoOrders",
        oco_page_unit="legs",
        oco_page_cap=10,
        empty_read="no_data",
        limits="strict",
        heartbeat="text",
        client_id_field="none",
        recv_window_max_ms=5000,
        gone_style="docs_table",
        throttle_form="plain",
        ban_form="plain",
        open_orders_show_legs=False,
        open_status="WORKING",
        dms_answer="trigger_ms",
        key_expiry="push",
    ),
    # Every open question answered the easiest way: the defaults, but for the two switches
    # whose default is the harder answer.
    "most_permissive": BingxBehaviour(cancel_all_covers_oco=True, limits="docs_v3"),
}


def behaviour_of(variant: str | None = None, **switches: object) -> BingxBehaviour:
    """A named variant (or the default), with single switches changed."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, not {variant!r}")
    base = VARIANTS[variant] if variant is not None else BingxBehaviour()
    return base.with_changes(**{k: v for k, v in switches.items() if v is not None})


class BxError(Exception):
    """A refusal in BingX's envelope: `{"code", "msg", "debugMsg", "data"}`."""

    def __init__(self, code: int, msg: str, status: int = 200) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def envelope(data: Any) -> web.Response:
    return json_response({"code": 0, "msg": "", "debugMsg": "", "data": data})


def error_response(code: int, msg: str, status: int = 200, **headers: str) -> web.Response:
    return json_response(
        {"code": code, "msg": msg, "debugMsg": "", "data": {}}, status=status, headers=headers
    )


def num(value: Decimal) -> str:
    """A decimal as BingX writes it in REST bodies: a plain string, no exponent."""
    return format(value, "f")


def decode_pairs(raw: str) -> list[tuple[str, str]]:
    """`k=v&k=v` into URL-decoded pairs, in order, empty parts skipped."""
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if part:
            key, _, value = part.partition("=")
            if "%" in part:
                key, value = unquote(key), unquote(value)
            pairs.append((key, value))
    return pairs


def json_value(value: Any) -> str:
    """A JSON body value as it appears in the signed `k=v` string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


@dataclass(eq=False)
class _Stream:
    """One `/market` websocket of one account."""

    account: str
    listen_key: str
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    queue: asyncio.Queue[bytes | Due[bytes] | None] = field(default_factory=asyncio.Queue)
    topics: set[str] = field(default_factory=set)
    unanswered: dict[str, float] = field(default_factory=dict)
    text_pings: int = 0
    key_expired: bool = False  # told `listenKeyExpired`, left open, fed nothing more


@dataclass(slots=True)
class _ListenKey:
    account: str
    expires_at: float  # monotonic


@dataclass(slots=True)
class _DeadMansSwitch:
    trigger_time_s: int = 0
    timer: asyncio.TimerHandle | None = None
    firing: bool = False


class BingxSim(SimVenue):
    """BingX spot in its own words: envelope, codes, 19-digit ids, gzip stream, cancelAllAfter."""

    name = "bingx"
    key_header = "X-BX-APIKEY"

    def __init__(
        self,
        settings: VenueSettings,
        *,
        variant: str | None = None,
        listen_key_ttl_s: float = LISTEN_KEY_TTL_S,
        max_missed_pongs: int = 3,
        rate_limit_penalty_s: float = 1.0,
        error_lock_count: int = ERROR_LOCK_COUNT,
        error_lock_window_s: float = ERROR_LOCK_WINDOW_S,
        order_retry_after: bool = True,
        dead_mans_switch_time_scale: float = 1.0,
        dead_mans_switch_batch: int = 200,
        **switches: object,
    ) -> None:
        # `switches` are `BingxBehaviour` fields changed from the variant (None: unchanged).
        self.behaviour = behaviour_of(variant, **switches)
        self.listen_key_ttl_s = listen_key_ttl_s
        self.max_missed_pongs = max_missed_pongs
        # A 100410's disabled period: until its window ends, plus this long.
        self.rate_limit_penalty_s = rate_limit_penalty_s
        self.error_lock_count = error_lock_count
        self.error_lock_window_s = error_lock_window_s
        # (account, path, code) -> times (monotonic) of error answers; (account, path) -> end
        self._errors: dict[tuple[str, str, int], deque[float]] = {}
        self._locks: dict[tuple[str, str], tuple[float, int]] = {}
        # path -> `data` to answer every signed request on it with, instead of the handler.
        self.canned_data: dict[str, Any] = {}
        self.order_retry_after = order_retry_after
        self.dms_time_scale = dead_mans_switch_time_scale
        self.dms_batch = max(1, dead_mans_switch_batch)
        # One id sequence for the venue: ids are unique across accounts and above 2**53, so a
        # client that parses them as doubles visibly corrupts them.
        self._order_ids = itertools.count(1_976_495_057_808_654_337, 7919)
        self._list_ids = itertools.count(1_876_495_057_808_000_011, 104_729)
        self._secrets: dict[str, bytes] = {}
        self._windows: dict[str, WeightWindow] = {}
        self._window_account: dict[str, str | None] = {}  # whose clock counts the window
        self._bucket_cache: dict[tuple[str, str | None, str], list[tuple[str, int]]] = {}
        self._listen_keys: dict[str, _ListenKey] = {}
        self._streams: dict[str, set[_Stream]] = {}
        self._dms: dict[str, _DeadMansSwitch] = {}
        self._symbols: dict[str, None] = dict.fromkeys(settings.symbols or DEFAULT_SYMBOLS)
        super().__init__(settings)
        for account in self.accounts.values():
            self._secrets[account.name] = account.secret.encode()
            self._streams[account.name] = set()
            self._dms[account.name] = _DeadMansSwitch()
            self.book(account).subscribe(partial(self._on_book_event, account.name))

    # -- hooks -----------------------------------------------------------------------------
    def new_book(self) -> SimBook:
        return SimBook(
            new_order_id=lambda: str(next(self._order_ids)),
            new_list_id=lambda: str(next(self._list_ids)),
            now_ms=self.now_ms,
        )

    # -- behaviour switches ------------------------------------------------------------------
    @property
    def cancel_all_covers_oco(self) -> bool:
        return self.behaviour.cancel_all_covers_oco

    @property
    def gone_style(self) -> str:
        return self.behaviour.gone_style

    def set_behaviour(self, behaviour: BingxBehaviour) -> None:
        """Answer the open questions another way from now on (limits start afresh)."""
        limits_changed = behaviour.limits != self.behaviour.limits
        self.behaviour = behaviour
        if limits_changed:
            self._windows.clear()
            self._window_account.clear()
            self._bucket_cache.clear()

    async def _admin_behaviour(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                data = orjson.loads(await request.read() or b"{}")
            except orjson.JSONDecodeError as exc:
                return json_response({"error": f"body is not JSON: {exc}"}, status=400)
            if not isinstance(data, dict):
                return json_response({"error": "body must be a JSON object"}, status=400)
            try:
                variant = data.pop("variant", None)
                base = self.behaviour if variant is None else behaviour_of(str(variant))
                self.set_behaviour(base.with_changes(**data))
            except (ValueError, TypeError) as exc:
                return json_response({"error": str(exc)}, status=400)
        return json_response({"variant": self.behaviour.describe(), **self.behaviour.to_json()})

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_sim/behaviour", self._admin_behaviour)
        r.add_post("/_sim/behaviour", self._admin_behaviour)
        signed: list[tuple[str, str, Callable[[SimAccount, dict[str, str]], Any]]] = [
            ("POST", f"{SPOT}/trade/order", self._place_order),
            ("POST", f"{SPOT}/trade/cancel", self._cancel),
            ("POST", f"{SPOT}/trade/cancelOrders", self._cancel_orders),
            ("POST", f"{SPOT}/trade/cancelOpenOrders", self._cancel_open_orders),
            ("POST", f"{SPOT}/trade/cancelAllAfter", self._cancel_all_after),
            ("GET", f"{SPOT}/trade/openOrders", self._open_orders),
            ("GET", f"{SPOT}/trade/query", self._query),
            ("POST", f"{SPOT}/oco/order", self._oco_order),
            ("POST", f"{SPOT}/oco/cancel", self._oco_cancel),
            ("GET", f"{SPOT}/oco/openOrderList", self._oco_open_order_list),
            ("GET", f"{SPOT}/oco/orderList", self._oco_order_list),
            ("GET", API_PERMISSIONS, self._api_permissions),
            ("GET", CAPITAL_CONFIG, self._capital_config),
        ]
        for method, path, handler in signed:
            r.add_route(method, path, self._signed_route(handler))
        r.add_get(f"{SPOT}/server/time", self._server_time)
        r.add_get("/openApi/swap/v2/server/time", self._server_time)
        r.add_get(f"{SPOT}/common/symbols", self._common_symbols)
        r.add_get(SWAP_CONTRACTS, self._swap_contracts)
        r.add_get(CSWAP_CONTRACTS, self._cswap_contracts)
        r.add_get(f"{SPOT}/ticker/bookTicker", self._book_ticker)
        r.add_post(USER_DATA_STREAM, self._listen_key_create)
        r.add_put(USER_DATA_STREAM, self._listen_key_extend)
        r.add_delete(USER_DATA_STREAM, self._listen_key_delete)
        r.add_get(STREAM_PATH, self._market_ws)

    def client_id(self, request: web.Request) -> str:
        # BingX limits each API of each UID on its own ("each api has its own independent rate
        # limit") and disables that API for ~5 min: 429 blocks and strikes are per endpoint.
        key = request.headers.get(self.key_header) or (request.remote or "?")
        return f"{key} {request.path}" if request.path in ENDPOINT_LIMITS else key

    def weight(self, request: web.Request, account: SimAccount | None) -> list[tuple[str, int]]:
        # The venue counts UID limits per account and IP limits per IP: every account behind
        # one IP shares them (on loopback, every client of the sim).
        if request.path not in ENDPOINT_LIMITS:
            return []
        client = request.remote or "?"
        cache_key = (client, account.name if account else None, request.path)
        buckets = self._bucket_cache.get(cache_key)
        if buckets is None:
            if len(self._bucket_cache) > 10_000:  # junk keys from a misbehaving client
                self._bucket_cache.clear()
            buckets = self._bucket_cache[cache_key] = self._buckets(request.path, client, account)
        return buckets

    def _buckets(self, path: str, client: str, account: SimAccount | None) -> list[tuple[str, int]]:
        limits = ENDPOINT_LIMITS.get(path)
        if limits is None:
            return []
        per_uid, group = limits
        strict = self.behaviour.limits == "strict"
        if not strict and per_uid is not None:
            per_uid = DOCS_V3_UID.get(path, 10)
        per_ip = IP_PER_API_STRICT if strict and path not in IP_RELAXED else IP_PER_API_DOCS_V3
        ip_limit, ip_window = per_ip[group]
        if strict and path in IP_PER_PATH_STRICT:
            ip_limit, ip_window = IP_PER_PATH_STRICT[path]
        buckets: list[tuple[str, int]] = []
        name = account.name if account is not None else None
        if per_uid is not None and account is not None:
            buckets.append(self._bucket(f"uid {account.name} {path}", per_uid, 1.0, name))
        buckets.append(self._bucket(f"ip {client} {path}", ip_limit, ip_window, name))
        buckets.append(self._bucket(f"group{group} {client}", IP_GROUP_TOTAL[group], 10.0, name))
        return buckets

    def _bucket(
        self, key: str, limit: int, window_s: float, account: str | None
    ) -> tuple[str, int]:
        if key not in self._windows:
            scaled = max(1, int(limit * self.settings.rate_limit_scale))
            self._windows[key] = WeightWindow(limit=scaled, window_s=window_s)
            self._window_account[key] = account
        return key, 1

    def _window_clock(self, bucket: str) -> float:
        # The venue counts its windows by its own clock: with a clock-skew fault on the
        # account, the skewed one (which is also what a client that synced to it counts by).
        return self.now_ms(self._window_account.get(bucket)) / 1000.0

    def spend(self, bucket: str, weight: int, now: float) -> Verdict:
        window = self._windows[bucket]
        clock = self._window_clock(bucket)
        verdict = window.spend(weight, clock)
        if not verdict.ok:
            # Disabled until the window ends, and a little more (§3.5: seconds, not minutes).
            verdict.retry_after_s = max(
                1, math.ceil(window.reset_in_s(clock) + self.rate_limit_penalty_s)
            )
            path = bucket.rsplit(" ", 1)[-1] if not bucket.startswith("group") else bucket
            self.counters[f"100410 earned {path}"] += 1
        return verdict

    def throttled(self, verdict: Verdict, request: web.Request) -> web.Response:
        """A 100410 (429) or a ban (418), in one of BingX's forms: never a Retry-After."""
        account = self.account_for_key(request.headers.get(self.key_header))
        now_ms = self.now_ms(account.name if account else None)
        until_ms = now_ms + verdict.retry_after_s * 1000
        if verdict.banned:
            if self.behaviour.ban_form == "plain":
                msg = "IP has been banned. Stop requests and wait"
            else:
                msg = (
                    "your IP has been banned for continuing to send requests after receiving "
                    f"429, it will be unblocked after {until_ms}"
                )
            self.counters[f"418 {request.path}"] += 1
            return error_response(100410, msg, 418, **self._courtesy(request, verdict))
        self.counters["bingx 100410"] += 1
        if self.behaviour.throttle_form == "plain":
            msg = "rate limited"
        else:
            msg = (
                "code:100410:The endpoint trigger frequency limit rule is currently in the "
                f"disabled period and will be unblocked after {until_ms}"
            )
        return error_response(100410, msg, 429, **self._courtesy(request, verdict))

    def _courtesy(self, request: web.Request, verdict: Verdict) -> dict[str, str]:
        """BingX sends no Retry-After. On order placement only (no kill ever places), the sim
        adds one for drill bots (`sim/rogue.py`) that pause only on a Retry-After header."""
        if request.path in ORDER_PATHS and self.order_retry_after:
            return {"Retry-After": str(verdict.retry_after_s)}
        return {}

    # -- the error-count lock ----------------------------------------------------------------
    def _locked(self, account: str, path: str) -> web.Response | None:
        lock = self._locks.get((account, path))
        if lock is None:
            return None
        until, code = lock
        now = time.monotonic()
        if now >= until:
            del self._locks[(account, path)]
            return None
        self.counters[f"100410 lock {path}"] += 1
        self.counters["bingx 100410"] += 1
        epoch = self.now_ms(account) + int((until - now) * 1000)
        return error_response(
            100410,
            f"over {self.error_lock_count} error code:{code} requests within "
            f"{int(self.error_lock_window_s * 1000)} ms for this api, please verify and fix it "
            f",can retry after time: {epoch}",
            429,
        )

    def _count_error(self, account: str, path: str, code: int) -> None:
        if code == 100410:
            return
        now = time.monotonic()
        errors = self._errors.setdefault((account, path, code), deque())
        errors.append(now)
        while errors and errors[0] <= now - self.error_lock_window_s:
            errors.popleft()
        if len(errors) > self.error_lock_count:
            self._locks[(account, path)] = (errors[0] + self.error_lock_window_s, code)
            self.counters[f"error locks {path}"] += 1

    def admit(
        self, request: web.Request, account: SimAccount | None
    ) -> tuple[dict[str, int], web.Response | None]:
        # Count what a client earned by sending into a wait it was told of (a strike), apart
        # from 100410s a storm injected and requests that were in flight when one left.
        tracker = self.bans.get(self.client_id(request))
        before = (tracker.strikes, tracker.bans) if tracker is not None else (0, 0)
        used, refusal = super().admit(request, account)
        tracker = self.bans.get(self.client_id(request))
        if tracker is not None and (tracker.strikes, tracker.bans) != before:
            self.counters[f"100410 into a wait {request.path}"] += 1
        return used, refusal

    def earned_throttles(self, *, ignore: Iterable[str] = ()) -> dict[str, int]:
        """Throttling answers a client earned (window, error lock, sending into a wait, 418),
        by counter, leaving out paths in `ignore` (a rogue bot's order path)."""
        skip = tuple(ignore)
        kinds = ("100410 earned ", "100410 lock ", "100410 into a wait ", "418 ")
        return {
            key: value
            for key, value in self.counters.items()
            if value and key.startswith(kinds) and not key.endswith(skip or ("\0",))
        }

    def server_error(self, status: int, request: web.Request) -> web.Response:
        if status == 504:
            # [BX-DOC]: 504 = sent to the service centre, no answer; the outcome is unknown.
            return error_response(101500, "rpc timeout", 504)
        if status in (502, 503):
            return error_response(100503, "Server busy", status)
        return error_response(100500, "Internal system error", status)

    def decorate(
        self, response: web.StreamResponse, request: web.Request, used: dict[str, int]
    ) -> None:
        if not used:
            return
        key = next((b for b in used if b.startswith("uid ")), next(iter(used)))
        window = self._windows[key]
        now = self._window_clock(key)
        response.headers["X-RateLimit-Requests-Remain"] = str(window.remaining(now))
        response.headers["X-RateLimit-Requests-Expire"] = str(int(window.reset_in_s(now) * 1000))

    def reset_limits(self) -> None:
        super().reset_limits()
        self._errors.clear()
        self._locks.clear()
        self._windows.clear()
        self._window_account.clear()
        self._bucket_cache.clear()

    def on_fault(self, fault: Fault) -> None:
        if fault.kind in (FaultKind.WS_DROP, FaultKind.SERVER_SHUTDOWN):
            closed = 0
            for stream in self._matching_streams(fault):
                closed += 1
                if fault.kind is FaultKind.WS_DROP:
                    self._abort(stream)
                else:
                    # BingX documents no shutdown notice: a restart just closes the socket.
                    self.spawn(self._close(stream, 1001, "server restarting"))
            if closed and fault.count is not None:
                fault.count -= 1
        elif fault.kind is FaultKind.LISTEN_KEY_EXPIRY:
            for key, entry in list(self._listen_keys.items()):
                if fault.account is None or entry.account == fault.account:
                    self._expire_key(key)
            self.faults.remove(fault.id)

    def supports_lists(self) -> bool:
        return True

    async def stop(self) -> None:
        for dms in self._dms.values():
            if dms.timer is not None:
                dms.timer.cancel()
                dms.timer = None
        for streams in self._streams.values():
            for stream in list(streams):
                self._abort(stream)
        await super().stop()

    # -- authentication ------------------------------------------------------------------
    def _signed_route(
        self, handler: Callable[[SimAccount, dict[str, str]], Any]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            account: SimAccount | None = None
            try:
                account, params = await self._authenticate(request)
                locked = self._locked(account.name, request.path)
                if locked is not None:
                    return locked
                if request.path in self.canned_data:
                    # A test's stand-in answer (an unknown shape, a malformed row).
                    return envelope(self.canned_data[request.path])
                result = handler(account, params)
                if asyncio.iscoroutine(result):
                    result = await result
            except BxError as exc:
                if account is not None:
                    self._count_error(account.name, request.path, exc.code)
                return error_response(exc.code, exc.msg, exc.status)
            return envelope(result)

        return route

    async def _authenticate(self, request: web.Request) -> tuple[SimAccount, dict[str, str]]:
        api_key = request.headers.get(self.key_header)
        if not api_key:
            raise BxError(100413, "Null apiKey", 401)
        account = self.accounts_by_key.get(api_key)
        if account is None:
            raise BxError(100413, "Incorrect apiKey", 401)
        pairs = decode_pairs(request.query_string)
        body_pairs: list[tuple[str, str]] = []
        json_signature: str | None = None
        if request.body_exists:
            raw = await request.read()
            if raw:
                if request.content_type == "application/json":
                    try:
                        data = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        raise BxError(100400, "invalid JSON body") from None
                    if not isinstance(data, dict):
                        raise BxError(100400, "invalid JSON body")
                    sig = data.pop("signature", None)
                    json_signature = None if sig is None else str(sig)
                    body_pairs = sorted((str(k), json_value(v)) for k, v in data.items())
                else:
                    body_pairs = decode_pairs(raw.decode("utf-8", "replace"))
        signature = json_signature
        signed: list[tuple[str, str]] = []
        for key, value in itertools.chain(pairs, body_pairs):
            if key == "signature":
                signature = value
            else:
                signed.append((key, value))
        if not signature:
            self.counters["signature_failures"] += 1
            raise BxError(100412, "Null signature", 401)
        payload = "&".join(f"{k}={v}" for k, v in signed).encode()
        expected = hmac.new(self._secrets[account.name], payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            self.counters["signature_failures"] += 1
            raise BxError(100001, "Signature verification failed", 401)
        params = dict(signed)
        self._check_timestamp(account, params)
        return account, params

    def _check_timestamp(self, account: SimAccount, params: dict[str, str]) -> None:
        raw = params.get("timestamp", "")
        if not raw.isdigit():
            raise BxError(100421, TIMESTAMP_MSG)
        window = 5000.0
        if "recvWindow" in params:
            try:
                window = float(params["recvWindow"]) or 5000.0
            except ValueError:
                raise BxError(100400, "recvWindow is invalid") from None
            if window > self.behaviour.recv_window_max_ms:
                raise BxError(
                    100400,
                    f"Invalid parameter recvWindow: must not exceed "
                    f"{self.behaviour.recv_window_max_ms} ms",
                )
        # [BX-DOC]: the timestamp must be within 5 s of server time, or within recvWindow.
        if abs(self.now_ms(account.name) - int(raw)) > window:
            self.counters["timestamp_failures"] += 1
            raise BxError(100421, TIMESTAMP_MSG)

    # -- rendering -------------------------------------------------------------------------
    @staticmethod
    def restriction_status(order: SimOrder) -> str:
        """The status `cancelRestrictions` is matched against (NEW, PENDING, ...)."""
        if order.status == "NEW" and TYPE_NAMES.get(order.order_type, order.order_type) in (
            TRIGGER_TYPES
        ):
            return "PENDING"  # a stop/trigger order waiting for its price
        if order.status == "EXPIRED":
            return "CANCELED"  # BingX has no EXPIRED: an OCO sibling ends cancelled
        return order.status

    def status_of(self, order: SimOrder) -> str:
        """The status an answer or a push shows."""
        status = self.restriction_status(order)
        if status == "NEW" and self.behaviour.open_status == "WORKING":
            return "WORKING"
        return status

    def order_json(self, order: SimOrder) -> dict[str, Any]:
        return {
            "symbol": order.symbol,
            "orderId": int(order.order_id),
            "price": num(order.price),
            "stopPrice": num(order.stop_price),
            "origQty": num(order.orig_qty),
            "executedQty": num(order.executed_qty),
            "cummulativeQuoteQty": num(order.cum_quote_qty),
            "status": self.status_of(order),
            "type": TYPE_NAMES.get(order.order_type, order.order_type),
            "side": order.side,
            "time": order.time_ms,
            "updateTime": order.update_time_ms,
            "origQuoteOrderQty": "0",
            "clientOrderID": order.client_order_id,
        }

    def oco_leg_json(self, order: SimOrder, book: SimBook) -> dict[str, Any]:
        order_list = book.get_list(order.list_id or "")
        first = order_list is not None and order_list.order_ids[0] == order.order_id
        return {
            "transactionTime": order.time_ms,
            "orderId": order.order_id,
            "clientOrderId": order.client_order_id,
            "symbol": order.symbol,
            "orderType": "ocoLimit" if first else "ocoTps",
            "side": order.side,
            "triggerPrice": float(order.stop_price),
            "price": float(order.price),
            "quantity": float(order.orig_qty),
            "orderListId": order.list_id,
            "status": self.status_of(order),
        }

    def oco_list_json(self, order_list: Any, book: SimBook) -> dict[str, Any]:
        """One open OCO list as BingX's 2026 reference shows `oco/openOrderList` items."""
        legs = [book.get(oid, order_list.symbol) for oid in order_list.order_ids]
        return {
            "orderListId": order_list.list_id,
            "contingencyType": "OCO",
            "listStatusType": "EXEC_STARTED",
            "listOrderStatus": "EXECUTING",
            "listClientOrderId": order_list.list_client_order_id,
            "transactionTime": min((o.time_ms for o in legs if o is not None), default=0),
            "symbol": order_list.symbol,
            "orders": [
                {"orderId": o.order_id, "clientOrderId": o.client_order_id}
                for o in legs
                if o is not None
            ],
        }

    def execution_report(self, event: BookEvent) -> dict[str, Any] | None:
        """`spot.executionReport` data for a book change, or None for list-only changes."""
        order = event.order
        if order is None:
            return None
        if event.kind is BookEventKind.TRADE:
            exec_type = "TRADE"
        elif event.kind is BookEventKind.CANCELED:
            exec_type = "CANCELED"
        else:
            exec_type = "NEW"
        last_quote = event.last_qty * event.last_price
        return {
            "e": "executionReport",
            "E": event.time_ms,
            "s": order.symbol,
            "S": order.side,
            "o": TYPE_NAMES.get(order.order_type, order.order_type),
            "q": float(order.orig_qty),
            "p": float(order.price),
            "x": exec_type,
            "X": self.status_of(order),
            "i": int(order.order_id),
            "l": float(event.last_qty),
            "z": float(order.executed_qty),
            "L": float(event.last_price),
            "n": 0,
            "N": order.symbol.partition("-")[2],
            "T": event.time_ms,
            "t": int(event.time_ms) if exec_type == "TRADE" else -1,
            "O": order.time_ms,
            "Z": float(order.cum_quote_qty),
            "Y": float(last_quote),
            "Q": 0,
            "m": exec_type == "TRADE",
            **self._client_id_field(order, exec_type),
        }

    def _client_id_field(self, order: SimOrder, exec_type: str) -> dict[str, str]:
        field_name = self.behaviour.client_id_field
        if field_name == "c+C":  # Binance's layout
            if exec_type == "CANCELED":
                return {"c": f"cancel{order.order_id}", "C": order.client_order_id}
            return {"c": order.client_order_id, "C": ""}
        return {} if field_name == "none" else {field_name: order.client_order_id}

    # -- lookups ---------------------------------------------------------------------------
    @staticmethod
    def _required(params: dict[str, str], *names: str) -> None:
        for name in names:
            if not params.get(name):
                raise BxError(100400, f"miss arguments: {name} is required")

    @staticmethod
    def _symbol(params: dict[str, str]) -> str:
        symbol = params.get("symbol", "")
        if not symbol:
            raise BxError(100400, "miss arguments: symbol is required")
        if not SYMBOL.match(symbol):
            raise BxError(100400, "invalid symbol, send symbol like BTC-USDT")
        return symbol

    def _find(self, book: SimBook, order_id: str | None, client_id: str | None) -> SimOrder | None:
        if order_id:
            return book.get(order_id) if order_id.isdigit() else None
        if client_id:
            return book.get_by_client_id(client_id)
        raise BxError(100400, "miss arguments: orderId or clientOrderID is required")

    def _not_open(self, order: SimOrder | None) -> BxError:
        """The refusal for cancelling an order that is unknown or no longer open."""
        if self.gone_style == "v2026":
            return BxError(
                100404, "Order does not exist. The order may have been filled or cancelled."
            )
        if self.gone_style == "docs_table":
            if order is None:
                return BxError(100421, "cancel fail, order not exist")
            return BxError(
                100400,
                "the order you want to cancel is FILLED or CANCELLED already, or is not a "
                "valid order id ,please verify",
            )
        if order is not None and order.status == "FILLED":
            return BxError(80018, "order already filled")
        return BxError(80016, "order not exist")

    def _refuses_leg(self, book: SimBook, order: SimOrder) -> bool:
        """With `leg_id_cancels_list` off, a leg of an open OCO is "not exist" to cancel by id."""
        return (
            not self.behaviour.leg_id_cancels_list
            and order.list_id is not None
            and order.list_id in book.lists
        )

    @staticmethod
    def _fail_text(order: SimOrder | None) -> str:
        if order is None:
            return "cancel order fail, order not exist"
        status = "FILLED" if order.status == "FILLED" else "CANCELED"
        return f"cancel order fail, order status :{status},can not delete"

    # -- REST: trading -------------------------------------------------------------------
    def _place_order(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbol = self._symbol(p)
        self._required(p, "side", "type")
        side, order_type = p["side"], p["type"]
        if side not in ("BUY", "SELL"):
            raise BxError(100400, f"invalid side: {side}")
        if order_type not in ORDER_TYPES:
            raise BxError(100400, f"invalid type: {order_type}")
        price = _decimal(p, "price")
        quantity = _decimal(p, "quantity")
        quote_qty = _decimal(p, "quoteOrderQty")
        stop_price = _decimal(p, "stopPrice")
        if order_type.endswith("LIMIT") and price <= 0:
            raise BxError(100400, "price can't be lte 0 in limit order")
        if quantity <= 0 and quote_qty <= 0:
            raise BxError(100400, "quantity/quoteOrderQty can't both be lte 0 in limit order")
        if order_type in TRIGGER_TYPES and stop_price <= 0:
            raise BxError(100400, "stopPrice is required for trigger orders")
        client_id = p.get("newClientOrderId", "")
        if client_id and not CLIENT_ID.match(client_id):
            raise BxError(100400, "newClientOrderId only supports letters, numbers and _, 1-40")
        if quantity <= 0:
            quantity = quote_qty / (price if price > 0 else Decimal(1))
        self._symbols.setdefault(symbol)
        book = self.book(account)
        order = book.place(
            OrderSpec(
                symbol=symbol,
                side=side,
                order_type=order_type,
                price=price if price > 0 else Decimal(1),
                quantity=quantity,
                client_order_id=client_id,
                time_in_force=p.get("timeInForce", "GTC"),
                stop_price=stop_price,
            )
        )
        if order_type == "MARKET":
            book.fill(order.order_id)  # no matching engine: a market order fills at once
        body = self.order_json(order)
        body["transactTime"] = order.update_time_ms
        return body

    def _cancel(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbol = self._symbol(p)
        restriction = p.get("cancelRestrictions")
        if restriction is not None and restriction not in CANCEL_RESTRICTIONS:
            raise BxError(100400, f"invalid cancelRestrictions: {restriction}")
        book = self.book(account)
        order = self._find(book, p.get("orderId"), p.get("clientOrderID"))
        if order is None or order.symbol != symbol or not order.is_open:
            raise self._not_open(order if order is not None and order.symbol == symbol else None)
        if self._refuses_leg(book, order):
            raise self._not_open(None)
        if restriction is not None and self.restriction_status(order) != restriction:
            raise BxError(
                100400,
                f"cancel restrictions not met: order status {self.restriction_status(order)}, "
                f"cancelRestrictions {restriction}",
            )
        book.cancel(order.order_id)
        return self.order_json(order)

    def _cancel_orders(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbol = self._symbol(p)
        process = p.get("process", "0")
        if process not in ("0", "1"):
            raise BxError(100400, f"invalid process: {process}")
        order_ids = [x for x in p.get("orderIds", "").split(",") if x]
        client_ids = [x for x in p.get("clientOrderIDs", "").split(",") if x]
        if not order_ids and not client_ids:
            raise BxError(100400, "miss arguments: orderIds or clientOrderIDs is required")
        book = self.book(account)
        wanted: list[tuple[str, SimOrder | None]] = [
            (oid, book.get(oid) if oid.isdigit() else None) for oid in order_ids
        ] + [(cid, book.get_by_client_id(cid)) for cid in client_ids]
        fails: list[dict[str, str]] = []
        valid: list[SimOrder] = []
        for ident, order in wanted:
            if order is None or order.symbol != symbol or not order.is_open:
                shown = order if order is not None and order.symbol == symbol else None
                fails.append({"orderId": ident, "error": self._fail_text(shown)})
            elif self._refuses_leg(book, order):
                fails.append({"orderId": ident, "error": self._fail_text(None)})
            else:
                valid.append(order)
        if fails and process == "0":
            # process=0: one bad id fails the whole batch [BX-DOC].
            raise BxError(100400, f"{fails[0]['error']}, orderId: {fails[0]['orderId']}")
        done: list[dict[str, Any]] = []
        for order in valid:
            if order.is_open:
                book.cancel(order.order_id)
            done.append(self.order_json(order))
        return {"orders": done, "fails": fails}

    def _cancel_open_orders(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbols = None
        if p.get("symbol"):
            symbols = [self._symbol(p)]
        gone = self.book(account).cancel_symbols(symbols, include_lists=self.cancel_all_covers_oco)
        return {"orders": [self.order_json(o) for o in gone]}

    def _cancel_all_after(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        kind = p.get("type", "")
        dms = self._dms[account.name]
        if kind not in ("ACTIVATE", "CLOSE"):
            raise BxError(100400, f"invalid type: {kind!r}, must be ACTIVATE or CLOSE")
        if dms.firing:
            # [BX-DOC]: while the mass cancel runs, ACTIVATE and CLOSE are rejected.
            return {
                "triggerTime": dms.trigger_time_s,
                "status": "FAILED",
                "note": "cancelling all pending orders, please try again later",
            }
        if kind == "CLOSE":
            if dms.timer is not None:
                dms.timer.cancel()
                dms.timer = None
            dms.trigger_time_s = 0
            if self.behaviour.dms_answer == "trigger_ms":
                return {"triggerTime": 0}
            return {"triggerTime": 0, "status": "CLOSED", "note": "closed successfully"}
        raw = p.get("timeOut", "")
        if not raw.lstrip("-").isdigit():
            raise BxError(100400, "miss arguments: timeOut is required")
        timeout_s = int(raw)
        if not 10 <= timeout_s <= 120:
            raise BxError(100400, f"timeOut {timeout_s} out of range, must be 10-120 seconds")
        delay_s = timeout_s * self.dms_time_scale
        if dms.timer is not None:
            dms.timer.cancel()
        loop = asyncio.get_running_loop()
        dms.trigger_time_s = int(time.time() + delay_s)
        dms.timer = loop.call_later(delay_s, self._fire_dead_mans_switch, account.name)
        if self.behaviour.dms_answer == "trigger_ms":
            return {"triggerTime": int((time.time() + delay_s) * 1000)}
        return {
            "triggerTime": dms.trigger_time_s,
            "status": "ACTIVATED",
            "note": f"all pending orders will be cancelled in {timeout_s}s unless renewed",
        }

    def _fire_dead_mans_switch(self, account_name: str) -> None:
        dms = self._dms[account_name]
        dms.timer = None
        dms.firing = True
        self.counters["dead_mans_switch fired"] += 1
        self.spawn(self._mass_cancel(account_name))

    async def _mass_cancel(self, account_name: str) -> None:
        book = self.book(self.accounts[account_name])
        dms = self._dms[account_name]
        try:
            # [BX-DOC]: pending orders are cancelled in batches, which can take a while.
            while book.orders:
                for order_id in list(book.orders)[: self.dms_batch]:
                    if order_id in book.orders:
                        book.cancel(order_id)
                await asyncio.sleep(0)
        finally:
            dms.firing = False
            dms.trigger_time_s = 0

    # -- REST: OCO -------------------------------------------------------------------------
    def _oco_order(self, account: SimAccount, p: dict[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(p)
        self._required(p, "side", "quantity", "limitPrice", "orderPrice", "triggerPrice")
        side = p["side"]
        if side not in ("BUY", "SELL"):
            raise BxError(100400, f"invalid side: {side}")
        for name in ("listClientOrderId", "aboveClientOrderId", "belowClientOrderId"):
            if p.get(name) and not p[name].isdigit():
                raise BxError(100400, f"{name} only supports numeric strings")
        quantity = _decimal(p, "quantity")
        legs = [
            OrderSpec(
                symbol,
                side,
                "LIMIT",
                _decimal(p, "limitPrice"),
                quantity,
                p.get("aboveClientOrderId", ""),
            ),
            OrderSpec(
                symbol,
                side,
                "TAKE_STOP_LIMIT",
                _decimal(p, "orderPrice"),
                quantity,
                p.get("belowClientOrderId", ""),
                stop_price=_decimal(p, "triggerPrice"),
            ),
        ]
        self._symbols.setdefault(symbol)
        book = self.book(account)
        order_list = book.place_list(legs, list_client_order_id=p.get("listClientOrderId", ""))
        return [self.oco_leg_json(book.orders[oid], book) for oid in order_list.order_ids]

    def _oco_cancel(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        book = self.book(account)
        order_id, client_id = p.get("orderId"), p.get("clientOrderId")
        if not order_id and not client_id:
            raise BxError(100400, "miss arguments: orderId or clientOrderId is required")
        order = self._find(book, order_id, client_id)
        if order is None or order.list_id is None or order.list_id not in book.lists:
            raise self._not_open(order if order is not None and order.list_id else None)
        book.cancel_list(order.list_id)
        return {"orderId": order.order_id, "clientOrderId": order.client_order_id}

    def _oco_open_order_list(self, account: SimAccount, p: dict[str, str]) -> Any:
        page = self._oco_page(account, p)
        items = page["ocoOrders"] if isinstance(page, dict) else page
        if not items and self.behaviour.empty_read == "no_data":
            raise BxError(100204, "No data")
        return page

    def _oco_page(self, account: SimAccount, p: dict[str, str]) -> Any:
        self._required(p, "pageIndex", "pageSize")
        try:
            page, size = int(p["pageIndex"]), int(p["pageSize"])
        except ValueError:
            raise BxError(100400, "pageIndex and pageSize must be integers") from None
        if page < 1 or size < 1:
            raise BxError(100400, "pageIndex and pageSize must be > 0")
        if self.behaviour.oco_page_cap is not None:
            size = min(size, self.behaviour.oco_page_cap)
        book = self.book(account)
        start = (page - 1) * size
        by_lists = self.behaviour.oco_page_unit == "lists"
        if self.behaviour.oco_list_shape == "ocoOrders" and by_lists:
            # BingX's 2026 reference: a page of lists, each with its legs' ids.
            lists = book.open_lists()[start : start + size]
            return {"ocoOrders": [self.oco_list_json(lst, book) for lst in lists]}
        legs = [
            (order_list, book.orders[oid])
            for order_list in book.open_lists()
            for oid in order_list.order_ids
            if oid in book.orders
        ]
        page_legs = legs[start : start + size]
        if self.behaviour.oco_list_shape == "ocoOrders":
            # A page of `size` legs, grouped by list (a list's legs may straddle two pages).
            grouped: dict[str, dict[str, Any]] = {}
            for order_list, leg in page_legs:
                entry = grouped.get(order_list.list_id)
                if entry is None:
                    entry = grouped[order_list.list_id] = self.oco_list_json(order_list, book)
                    entry["orders"] = []
                entry["orders"].append(
                    {"orderId": leg.order_id, "clientOrderId": leg.client_order_id}
                )
            return {"ocoOrders": list(grouped.values())}
        return [self.oco_leg_json(o, book) for _, o in page_legs]

    def _oco_order_list(self, account: SimAccount, p: dict[str, str]) -> list[Any]:
        book = self.book(account)
        list_id = p.get("orderListId")
        client_id = p.get("clientOrderId")
        if not list_id and not client_id:
            raise BxError(100400, "miss arguments: orderListId or clientOrderId is required")
        found = None
        if list_id:
            found = book.get_list(list_id)
        else:
            found = next(
                (
                    lst
                    for lst in itertools.chain(book.lists.values(), book.closed_lists.values())
                    if lst.list_client_order_id == client_id
                ),
                None,
            )
        if found is None:
            raise BxError(80016, "order not exist")
        legs = [book.get(oid) for oid in found.order_ids]
        return [self.oco_leg_json(o, book) for o in legs if o is not None]

    # -- REST: reads -----------------------------------------------------------------------
    def _open_orders(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbols = [self._symbol(p)] if p.get("symbol") else None
        orders = self.book(account).open_orders(symbols)
        if not self.behaviour.open_orders_show_legs:
            orders = [o for o in orders if o.list_id is None]
        if not orders and self.behaviour.empty_read == "no_data":
            raise BxError(100204, "No data")
        return {"orders": [self.order_json(o) for o in orders[:2000]]}

    def _query(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        symbol = self._symbol(p)
        order = self._find(self.book(account), p.get("orderId"), p.get("clientOrderID"))
        if order is None or order.symbol != symbol:
            raise BxError(80016, "order not exist")
        body = self.order_json(order)
        body.update({"fee": "0", "feeAsset": symbol.partition("-")[2], "avgPrice": "0"})
        return body

    async def _server_time(self, request: web.Request) -> web.Response:
        account = self.account_for_key(request.headers.get(self.key_header))
        return envelope({"serverTime": self.now_ms(account.name if account else None)})

    # Accounts whose key may read but not trade (no spot-trading permission); per instance.
    trade_disabled: frozenset[str] = frozenset()

    def _api_permissions(self, account: SimAccount, p: dict[str, str]) -> dict[str, Any]:
        permissions = [PERMISSION_READ]
        if account.name not in self.trade_disabled:
            permissions.insert(0, PERMISSION_SPOT_TRADING)
        return {"apiKey": "", "ipAddresses": [], "note": account.name, "permissions": permissions}

    async def _book_ticker(self, request: web.Request) -> web.Response:
        """`GET /openApi/spot/v1/ticker/bookTicker?symbol=`: the best bid is the highest open
        buy in any account's book (100 when there is none)."""
        symbol = request.query.get("symbol", "")
        books = [self.book(account) for account in self.accounts.values()]
        listed = symbol in self._symbols or any(symbol in b.symbols() for b in books)
        if not listed:
            return error_response(100204, "symbol not found")
        bids = [o.price for b in books for o in b.open_orders([symbol]) if o.side == "BUY"]
        bid = max(bids, default=Decimal(100))
        return envelope(
            [
                {
                    "eventType": "bookTicker",
                    "symbol": symbol,
                    "bidPrice": f"{bid:f}",
                    "bidVolume": "1",
                    "askPrice": f"{bid * 2:f}",
                    "askVolume": "1",
                }
            ]
        )

    def _listed(self) -> list[str]:
        """The configured symbols and every symbol an order was placed on."""
        for account in self.accounts.values():
            for symbol in self.book(account).symbols():
                self._symbols.setdefault(symbol)
        return list(self._symbols)

    def _capital_config(self, account: SimAccount, p: dict[str, str]) -> list[dict[str, Any]]:
        """`GET /openApi/wallets/v1/capital/config/getall`: each coin of a listed symbol, one
        network named after it, in the fields ccxt's `fetch_currencies` reads."""
        coins = dict.fromkeys(c for s in self._listed() for c in s.split("-"))
        return [_coin_json(coin) for coin in coins]

    async def _swap_contracts(self, request: web.Request) -> web.Response:
        # USDT-M perpetuals, `{"code":0,"msg":"","data":[contracts]}`: a spot venue has none.
        return json_response({"code": 0, "msg": "", "data": []})

    async def _cswap_contracts(self, request: web.Request) -> web.Response:
        # Coin-M perpetuals, `{"code":0,"msg":"","timestamp":ms,"data":[contracts]}`: none.
        return json_response({"code": 0, "msg": "", "timestamp": self.now_ms(), "data": []})

    async def _common_symbols(self, request: web.Request) -> web.Response:
        self._listed()
        return envelope(
            {
                "symbols": [
                    {
                        "symbol": symbol,
                        "minQty": 0,
                        "maxQty": 0,
                        "minNotional": 2,
                        "maxNotional": 20000000,
                        "status": 1,
                        "tickSize": 0.0001,
                        "stepSize": 0.0001,
                        "apiStateSell": True,
                        "apiStateBuy": True,
                        "timeOnline": 1672502400000,
                        "offTime": 0,
                        "maxMarketNotional": 20000000,
                    }
                    for symbol in self._symbols
                ]
            }
        )

    # -- listenKey -------------------------------------------------------------------------
    async def _listen_key_create(self, request: web.Request) -> web.Response:
        account = self.account_for_key(request.headers.get(self.key_header))
        if account is None:
            return error_response(100413, "Incorrect apiKey", 401)
        key = uuid.uuid4().hex + uuid.uuid4().hex
        self._listen_keys[key] = _ListenKey(account.name, time.monotonic() + self.listen_key_ttl_s)
        return json_response({"listenKey": key})

    def _listen_key_param(self, request: web.Request) -> tuple[str, web.Response | None]:
        key = request.query.get("listenKey", "")
        if not request.query_string:
            return key, web.Response(status=204)  # [BX-DOC]: 204 when no parameters were sent
        entry = self._listen_keys.get(key)
        if entry is None or entry.expires_at <= time.monotonic():
            return key, web.Response(status=404)  # [BX-DOC]: 404 when the key does not exist
        return key, None

    async def _listen_key_extend(self, request: web.Request) -> web.Response:
        key, refusal = self._listen_key_param(request)
        if refusal is not None:
            return refusal
        self._listen_keys[key].expires_at = time.monotonic() + self.listen_key_ttl_s
        return json_response({})

    async def _listen_key_delete(self, request: web.Request) -> web.Response:
        key, refusal = self._listen_key_param(request)
        if refusal is not None:
            return refusal
        self._expire_key(key)
        return json_response({})

    def _expire_key(self, key: str) -> None:
        entry = self._listen_keys.pop(key, None)
        if entry is None:
            return
        for stream in list(self._streams.get(entry.account, ())):
            if stream.listen_key != key or stream.key_expired:
                continue
            if self.behaviour.key_expiry == "push":
                stream.key_expired = True
                told = {"e": "listenKeyExpired", "E": int(time.time() * 1000), "listenKey": key}
                stream.queue.put_nowait(gzip.compress(orjson.dumps(told), compresslevel=1, mtime=0))
            else:
                self.spawn(self._close(stream, 1000, "listenKey expired"))

    # -- the user-data stream --------------------------------------------------------------
    def _matching_streams(self, fault: Fault) -> list[_Stream]:
        return [
            stream
            for name, streams in self._streams.items()
            if fault.account is None or fault.account == name
            for stream in streams
            if fault.matches(name, STREAM_PATH)
        ]

    @staticmethod
    def _abort(stream: _Stream) -> None:
        """Drop the TCP connection without a close frame, as a network failure does."""
        if stream.transport is not None:
            stream.transport.close()
        stream.queue.put_nowait(None)

    async def _close(self, stream: _Stream, code: int, reason: str) -> None:
        stream.queue.put_nowait(None)
        await stream.ws.close(code=code, message=reason.encode())

    def _on_book_event(self, account_name: str, event: BookEvent) -> None:
        streams = self._streams[account_name]
        if not streams:
            return
        if self.faults.active(FaultKind.WS_SILENT, account_name, STREAM_PATH) is not None:
            return
        data = self.execution_report(event)
        if data is None:
            return
        frame = gzip.compress(
            orjson.dumps({"code": 0, "dataType": EXECUTION_REPORT, "data": data}),
            compresslevel=1,
            mtime=0,
        )
        for stream in streams:
            if EXECUTION_REPORT in stream.topics and not stream.key_expired:
                stream.queue.put_nowait(pushed(frame))

    async def _market_ws(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("listenKey", "")
        entry = self._listen_keys.get(key)
        if entry is None or entry.expires_at <= time.monotonic():
            return web.Response(status=404, text="listenKey does not exist")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        stream = _Stream(entry.account, key, ws, request.transport)
        drop = self.faults.draw(FaultKind.WS_DROP, entry.account, STREAM_PATH)
        if drop is not None:
            self.counters["faults ws_drop"] += 1
            self._abort(stream)
            return ws
        self._streams[entry.account].add(stream)
        self.counters["streams opened"] += 1
        writer = asyncio.ensure_future(self._write(stream))
        pinger = asyncio.ensure_future(self._ping(stream))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_client_text(stream, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    try:
                        text = gzip.decompress(msg.data).decode()
                    except (OSError, EOFError, UnicodeDecodeError):
                        text = msg.data.decode("utf-8", "replace")
                    await self._on_client_text(stream, text)
                else:
                    break
        finally:
            self._streams[entry.account].discard(stream)
            pinger.cancel()
            stream.queue.put_nowait(None)
            await asyncio.wait([writer, pinger])
        return ws

    async def _on_client_text(self, stream: _Stream, text: str) -> None:
        if text.strip() == "Pong":
            if stream.text_pings > 0:
                stream.text_pings -= 1
                self.counters["stream pongs"] += 1
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        if "pong" in msg:
            if stream.unanswered.pop(str(msg["pong"]), None) is not None:
                self.counters["stream pongs"] += 1
            return
        req_type = msg.get("reqType")
        if req_type not in ("sub", "unsub"):
            return
        data_type = str(msg.get("dataType", ""))
        reply: dict[str, Any] = {
            "code": 0,
            "id": msg.get("id", ""),
            "msg": "SUCCESS",
            "timestamp": self.now_ms(stream.account),
        }
        if data_type not in (EXECUTION_REPORT, "ACCOUNT_UPDATE"):
            reply.update(code=100400, msg=f"invalid dataType: {data_type}")
        elif req_type == "sub":
            if len(stream.topics) >= 200:
                reply.update(code=80403, msg="subscribe topics exceed the limit of 200")
            else:
                stream.topics.add(data_type)
        else:
            stream.topics.discard(data_type)
        stream.queue.put_nowait(gzip.compress(orjson.dumps(reply), compresslevel=1, mtime=0))

    async def _write(self, stream: _Stream) -> None:
        while (frame := await next_frame(stream.queue)) is not None:
            if stream.ws.closed:
                return
            try:
                await stream.ws.send_bytes(frame)
            except (ConnectionError, RuntimeError):
                return

    async def _ping(self, stream: _Stream) -> None:
        interval = self.settings.ping_interval_s or 5.0
        while True:
            await asyncio.sleep(interval)
            key = self._listen_keys.get(stream.listen_key)
            if not stream.key_expired and (key is None or key.expires_at <= time.monotonic()):
                self._expire_key(stream.listen_key)
                if not stream.key_expired:  # closed, not told and left open
                    await self._close(stream, 1000, "listenKey expired")
                    return
            if len(stream.unanswered) + stream.text_pings >= self.max_missed_pongs:
                self.counters["streams dropped for missed pongs"] += 1
                await self._close(stream, 1000, "pong timeout")
                return
            if self.behaviour.heartbeat == "text":
                stream.text_pings += 1
                stream.queue.put_nowait(gzip.compress(b"Ping", compresslevel=1, mtime=0))
                continue
            ping_id = str(uuid.uuid4())
            stream.unanswered[ping_id] = time.monotonic()
            when = datetime.now(CHINA_TZ).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0800"
            stream.queue.put_nowait(
                gzip.compress(
                    orjson.dumps({"ping": ping_id, "time": when}), compresslevel=1, mtime=0
                )
            )

    # -- helpers for tests, drills and bots --------------------------------------------------
    def listen_keys(self, account: str) -> list[str]:
        """The live listenKeys of `account`."""
        now = time.monotonic()
        return [
            k for k, v in self._listen_keys.items() if v.account == account and v.expires_at > now
        ]

    def stream_count(self, account: str) -> int:
        """Open `/market` connections of `account`."""
        return len(self._streams.get(account, ()))

    def subscribed_count(self, account: str) -> int:
        """Connections of `account` that receive `spot.executionReport` events."""
        return sum(EXECUTION_REPORT in s.topics for s in self._streams.get(account, ()))

    def dead_mans_switch_armed(self, account: str) -> bool:
        return self._dms[account].timer is not None

    def symbols(self) -> Iterable[str]:
        return list(self._symbols)


def _coin_json(coin: str) -> dict[str, Any]:
    """One coin of `capital/config/getall` as BingX documents it; numbers are strings."""
    return {
        "coin": coin,
        "name": coin,
        "networkList": [
            {
                "name": coin,
                "network": coin,
                "isDefault": True,
                "minConfirm": "1",
                "withdrawEnable": True,
                "depositEnable": True,
                "withdrawFee": "0",
                "withdrawMax": "9999999999",
                "withdrawMin": "0",
                "depositMin": "0",
                "withdrawPrecision": "8",
                "depositPrecision": "8",
                "contractAddress": "",
                "needTagOrMemo": "false",
                "displayName": coin,
            }
        ],
    }


def _decimal(params: dict[str, str], name: str) -> Decimal:
    raw = params.get(name)
    if not raw:
        return Decimal(0)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BxError(100400, f"{name} is invalid: {raw}") from None
    if not value.is_finite():
        raise BxError(100400, f"{name} is invalid: {raw}")
    return value
