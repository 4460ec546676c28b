"""BingX's endpoints, rate limits, capabilities and timing constants (reference §3)."""

from __future__ import annotations

import functools
import logging
import zlib

from killswitch.exchanges.base import RateLimits
from killswitch.exchanges.paths import (
    KindRate,
    PathCapabilities,
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
API_PERMISSIONS = "/openApi/v1/account/apiPermissions"
EXECUTION_REPORT = "spot.executionReport"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer

# An order is closed only on a status known to end it: any other (NEW, PENDING,
# PARTIALLY_FILLED, the docs' own demo's WORKING, ccxt's RUNNING, one not seen yet) is open, never
# read as "nothing open" (review 43: WORKING was read as closed).
CLOSED_STATUSES = frozenset({"FILLED", "CANCELED", "CANCELLED", "FAILED", "EXPIRED", "REJECTED"})
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
# Orders whose client id one `client_ids` call asks `trade/query` for (2/s per IP: 10 s).
CLIENT_ID_QUERIES = 20
# recvWindow: the common parameters say at most 5000 ms; other pages say 60000 (§3.7).
RECV_WINDOW_MAX_MS = 5000
# A 100410 without an epoch: back off this long, doubling per repeat, with jitter (§3.5).
# A 100410 without an epoch: 2-2.5 s for the first three in a row (a per-second limit and its
# penalty are over by then), then doubling to at most 16 s while the venue keeps refusing.
BACKOFF_INITIAL_S = 2.0
BACKOFF_FLAT_REPEATS = 3
BACKOFF_MAX_S = 16.0
EPOCH_MARGIN_S = 0.05  # arrive after the named epoch, not on it: plus our clock's round trip
# A 418 naming no end: "IP has been banned. Stop requests and wait", for minutes to tens of
# minutes, never a Retry-After (BingX 2026 reference, error codes and rate limits §3). Wait
# the shortest documented ban (Binance's too), doubling while the IP stays banned.
BAN_MIN_S = 120.0
BAN_MAX_S = 3600.0
# The error lock: more than 20 answers with an error code on one API in 480 s [§3.5].
ERROR_LOCK_COUNT = 20
ERROR_LOCK_WINDOW_S = 480.0
# The APIs whose ordinary answers to a kill include error codes ("order not exist" to a cancel
# or a query of an order already gone, "No data" to an empty read): a request on its way there
# counts as the error it may earn until it is answered (review 78: a wave's single cancels all
# passed the count before any was answered, and earned the lock).
ERROR_ANSWER_PATHS = frozenset(
    {CANCEL, CANCEL_ORDERS, CANCEL_OPEN_ORDERS, OPEN_ORDERS, QUERY, OCO_CANCEL, OCO_OPEN_LIST}
)

# Requests per second per UID and API [reference §3.2/§3.3, corrected 2026-12-06]. openOrders
# and query have no stricter figure than docs-v3's 10/s; the listenKey calls are 2/s per UID
# and 2/s per IP (BingX 2026 reference, rate-limits §5 and spot-ws-account).
ENDPOINT_RPS: dict[str, int] = {
    CANCEL: 5,
    CANCEL_ORDERS: 2,
    CANCEL_OPEN_ORDERS: 2,
    CANCEL_ALL_AFTER: 1,
    OPEN_ORDERS: 10,
    QUERY: 10,
    OCO_CANCEL: 2,
    OCO_OPEN_LIST: 5,
    USER_DATA_STREAM: 2,
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
    API_PERMISSIONS: 2,  # readiness: every account checks its key at start, all at once
    USER_DATA_STREAM: 2,  # every account's stream at start, or after a blip dropped them all
    SYMBOLS: 1,  # "Rate limit: 1/s per IP" (BingX 2026 reference, spot-market §1)
}
# IP budgets no kill ever uses: background work may take all of them.
IP_BACKGROUND_ONLY = frozenset({API_PERMISSIONS, USER_DATA_STREAM})
# Market endpoints (server time, symbols) and every account API count in IP groups of 100 and
# 1000 per 10 s [BX-DOC "基础信息"]: one budget per connector well inside both.
GROUP_LIMITS = RateLimits(weight_per_window=100, window_s=10.0)
# The market endpoints' IP group (100 per 10 s) is shared by every account behind our IP: one
# budget for all of them, in the process, with room to spare; `common/symbols` also has its
# own 1/s per IP (`IP_RPS`), and one cached list for every account behind the IP.
IP_GROUP1_PATHS = frozenset({SERVER_TIME, SYMBOLS})
IP_GROUP1_LIMIT = 90
IP_GROUP1_WINDOW_S = 10.0
# A request holds its slot from its send until a venue second and this much after its answer
# lands (`SlidingBudget`): the margin is for timers and clock rates, not for the network.
BUDGET_MARGIN_S = 0.05
# A request given up without an answer (a timeout, a dropped connection) may still be on its
# way: its slot is held as if it arrived this much later. Past the default recvWindow (5 s)
# the venue refuses it as expired, and a connection we closed carries nothing later.
UNANSWERED_HOLD_S = 5.0


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


_KIND_PATHS = (
    ("cancel_all", CANCEL_OPEN_ORDERS),
    ("cancel_all_account", CANCEL_OPEN_ORDERS),
    ("cancel_orders", CANCEL_ORDERS),
    ("cancel_order", CANCEL),
    ("cancel_list", OCO_CANCEL),
)


@functools.cache  # read by every plan of a kill: built once per number of accounts
def kind_rates(accounts_behind_ip: int = 1) -> tuple[KindRate, ...]:
    """How fast one account may send each cancel kind: its UID budget, or its share of the
    per-IP one when that is less. A kill of every account (the common case) sends them all at
    once, so with two accounts behind the IP each gets half of its 3/s. Planned as if it had
    all of it, an account gives single cancels (5/s by UID) more than their 1.5/s and leaves
    the batch and `oco/cancel` budgets idle at the end of the kill."""
    share = max(1, accounts_behind_ip)
    rates = []
    for kind, path in _KIND_PATHS:
        limit = min(float(ENDPOINT_RPS[path]), IP_RPS.get(path, ENDPOINT_RPS[path]) / share)
        rates.append(KindRate(kind, max(1, int(limit)), limit / (1.0 + BUDGET_MARGIN_S)))
    return tuple(rates)


RATES = kind_rates()

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
