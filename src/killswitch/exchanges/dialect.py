"""How each venue says what happened to a request, and the one `classify` that reads it.

A `Dialect` is data, one frozen value per venue: its code table, the rules for codes whose
meaning is in the message, the HTTP statuses that decide by themselves, the codes that mean
success, and its retry-after defaults. `classify(dialect, http_status, code, msg, headers)` is
the only place an answer becomes a class of the error taxonomy (`base.py`); the connectors
decode their envelope and hand the raw (status, code, message, headers) over.

The tree, in the order `classify` walks it::

    answer (http status, code, msg, headers)
     |
     +-- 2xx and code in `success_codes` -------------------------> None (success)
     |     (a code that is not a number is never a success: past 418/429/5xx it is `unknown`)
     +-- 418 ------------------------------------------------------> IpBanned(retry_after)
     +-- 429 ------------------------------------------------------> RateLimited(retry_after)
     +-- 5xx ------------------------------------------------------> OutcomeUnknown
     +-- (code, message) matches a `MessageRule` -------------------> its class
     |     e.g. Binance -2011 "Unknown order sent." / "Unknown order list sent." -> AlreadyGone
     |          Binance -2011 "Order was not canceled due to cancel restrictions." -> Fatal
     +-- code in `message_codes` (meaning is in the message), no rule matched
     |                                                          -----> `unknown` (OutcomeUnknown)
     +-- code in `codes` ------------------------------------------> its class
     |     AlreadyGone   unknown order, already filled/cancelled: success for a kill
     |     RateLimited   venue throttle code (-1003, 429 in MEXC's body)
     |     ClockSkew     -1021 / 700003: resync server time, retry at once
     |     OutcomeUnknown  -1006, -1007, MEXC 503/504 in the body: re-read, then decide
     |     Transient     -1001 disconnected, -1008 busy: backoff with jitter
     |     Fatal         bad key, signature, permission, bad request: stop that account
     +-- code in a `code_ranges` family (Binance -11xx: request issues) -> its class
     +-- http status in `statuses` ---------------------------------> its class
     |     401 -> Fatal (unauthorized)
     |     403 -> RateLimited(403's own default wait): a web application firewall block,
     |            possibly a rate block; not proof of a bad key
     +-- anything else --------------------------------------------> `unknown` (OutcomeUnknown)

The last branch is the one rule for an answer nobody can classify, the same on every venue:
`OutcomeUnknown`, so the engine re-reads the venue and decides from what it shows. Never a
blind retry loop (`Transient`), never a give-up (`Fatal`): an answer we cannot read says
nothing about whether the order is still working.

Retry-after: a `Retry-After` header when present (a value in the past means now); else the
caller's `retry_after_s` (Binance ws-api's epoch-ms `retryAfter`, BingX's epoch in the 100410
text, converted by the connector); else the dialect's default for that class. Where that
default is a guess (BingX's 2 s, MEXC's 10 s), the connector's budget may replace it.

A header is read as the RFC says, seconds or an HTTP date; but MEXC's is unconfirmed and
others name epochs in their texts, so a number too large to be a wait (over 1e9: 31 years) is
read as an epoch, in ms above 1e12, else in s, against the venue's clock. No wait is longer
than `MAX_WAIT_S`, the longest ban any venue documents (3 days): a unit misread never blocks
an account for longer than the venue itself could.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import MappingProxyType

from killswitch.exchanges.base import (
    AlreadyGone,
    ClockSkew,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
    VenueError,
)

ErrorClass = type[VenueError]

MAX_WAIT_S = 3 * 24 * 3600.0  # the longest documented ban (Binance, MEXC: 2 min to 3 days)
EPOCH_S_OVER = 1e9  # a Retry-After above this is no wait but a time: epoch seconds...
EPOCH_MS_OVER = 1e12  # ...or, above this, epoch milliseconds


@dataclass(frozen=True, slots=True)
class MessageRule:
    """`code` with a message equal to (or, with `contains`, holding) `text` is `error`.

    Messages compare case-insensitively, ignoring surrounding spaces and a trailing full stop
    (Binance writes "Unknown order sent.", MEXC "Unknown order sent").
    """

    code: int
    text: str
    error: ErrorClass
    contains: bool = False

    def matches(self, code: int | None, msg: str) -> bool:
        if code != self.code:
            return False
        want, got = _norm(self.text), _norm(msg)
        return want in got if self.contains else want == got


@dataclass(frozen=True, slots=True)
class Dialect:
    """One venue's error vocabulary. See the module docstring for the order of the rules."""

    venue: str
    codes: Mapping[int, ErrorClass]
    message_rules: tuple[MessageRule, ...] = ()
    message_codes: frozenset[int] = frozenset()  # codes decided by message alone
    code_ranges: tuple[tuple[int, int, ErrorClass], ...] = ()  # (low, high, class), inclusive
    statuses: Mapping[int, ErrorClass] = field(
        default_factory=lambda: MappingProxyType({401: Fatal, 403: RateLimited})
    )
    success_codes: frozenset[int | None] = frozenset({None})
    unknown: ErrorClass = OutcomeUnknown  # the unknown-answer rule: the same on every venue
    # A code no table names: False, the HTTP status decides (Binance, MEXC send their error
    # bodies under an error status); True, it is `unknown` whatever the status (BingX: the
    # envelope's code is the answer, and the status decides only where there is no code).
    codes_decide: bool = False
    retry_after_s: float = 1.0  # a 429 or throttle code without Retry-After
    ban_s: float = 120.0  # a 418 without Retry-After (the shortest documented ban)
    # Waits for throttles that come under another status, without Retry-After (403: WAF).
    status_retry_after_s: Mapping[int, float] = field(
        default_factory=lambda: MappingProxyType({403: 5.0})
    )

    def rule_for(
        self, http_status: int, code: int | None, msg: str, *, garbled: bool = False
    ) -> ErrorClass | None:
        """The class an answer falls in; None for a success. `garbled`: a code came that is
        not a number (an envelope we cannot read), so it is no success and no known code."""
        if 200 <= http_status < 300 and not garbled and code in self.success_codes:
            return None
        if http_status == 418:
            return IpBanned
        if http_status == 429:
            return RateLimited
        if http_status >= 500:
            return OutcomeUnknown
        if garbled:
            return self.unknown
        if code is not None:
            for rule in self.message_rules:
                if rule.matches(code, msg):
                    return rule.error
            if code in self.message_codes:
                return self.unknown
            known = self.codes.get(code)
            if known is not None:
                return known
            for low, high, error in self.code_ranges:
                if low <= code <= high:
                    return error
            if self.codes_decide and code not in self.success_codes:
                return self.unknown
        return self.statuses.get(http_status, self.unknown)


def classify(
    dialect: Dialect,
    http_status: int | None,
    code: int | str | None,
    msg: str,
    headers: Mapping[str, str] | None = None,
    *,
    retry_after_s: float | None = None,
    now_ms: float | None = None,
) -> VenueError | None:
    """Map a venue answer to the error taxonomy; None when it is a success.

    `code` may come as text (MEXC sometimes quotes it); it is read as a number when it is one.
    `retry_after_s` is a wait the caller read elsewhere (ws-api `retryAfter`, BingX's text);
    a `Retry-After` header wins over it. `now_ms` is the venue's time (our estimate; the
    host's clock when not given), against which a header naming a time is read.
    """
    status = http_status or 0
    icode = _int_code(code)
    cls = dialect.rule_for(status, icode, msg, garbled=code is not None and icode is None)
    if cls is None:
        return None
    text = msg or f"http {status}"
    kw: dict[str, object] = {
        "venue": dialect.venue,
        "http_status": http_status,
        "code": icode if icode is not None else code,
    }
    if issubclass(cls, RateLimited):
        wait = header_wait(headers, now_ms)
        if wait is None and retry_after_s is not None and not math.isnan(retry_after_s):
            wait = retry_after_s
        if cls is IpBanned:
            default = dialect.ban_s
        else:
            default = dialect.status_retry_after_s.get(status, dialect.retry_after_s)
        wait = default if wait is None else wait
        return cls(text, retry_after_s=min(MAX_WAIT_S, max(0.0, wait)), **kw)
    return cls(text, **kw)  # type: ignore[arg-type]


def _norm(msg: str) -> str:
    return msg.strip().rstrip(".").strip().lower()


def _int_code(code: int | str | None) -> int | None:
    if code is None or isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    try:
        return int(code)
    except ValueError:
        return None


def header_wait(headers: Mapping[str, str] | None, now_ms: float | None = None) -> float | None:
    """The seconds a `Retry-After` header says to wait, at most `MAX_WAIT_S`; None when there
    is none we can read. Seconds, or an HTTP date; a number over `EPOCH_S_OVER` is an epoch
    (ms over `EPOCH_MS_OVER`), read against `now_ms` (the venue's time; else the host's). A
    time in the past means now."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    now = time.time() * 1000.0 if now_ms is None else now_ms
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now / 1000.0
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    if seconds > EPOCH_S_OVER:
        epoch_ms = seconds if seconds > EPOCH_MS_OVER else seconds * 1000.0
        seconds = (epoch_ms - now) / 1000.0
    return min(MAX_WAIT_S, max(0.0, seconds))


# -- the venues -------------------------------------------------------------------------------
# Binance [BN-ERR, reference §1.6]. -2011 CANCEL_REJECTED means "gone" or "refused": only the
# message tells, and a message not listed is not guessed at (the unknown rule: re-read).
#
# "Rest API trading is not enabled." / "WebSocket API trading is not enabled." (errors.md, for
# -1010, -2010 and -2011): the server the request reached takes no TRADE requests (cancels are
# TRADE) by that route. Refused, not executed, and no retry on that route changes it: Fatal.
# The connector sends such a request by its other route at once, and stops sending trading
# requests by the refusing one; only when both refuse does the Fatal stand. So does -1020
# UNSUPPORTED_OPERATION ("This operation is not supported.") from the ws-api.
_TRADING_OFF_CODES = (-1010, -2010, -2011)
BINANCE_REST_TRADING_OFF = tuple(
    MessageRule(code, "Rest API trading is not enabled.", Fatal) for code in _TRADING_OFF_CODES
)
BINANCE_WS_TRADING_OFF = tuple(
    MessageRule(code, "WebSocket API trading is not enabled.", Fatal) for code in _TRADING_OFF_CODES
)
BINANCE_UNSUPPORTED = -1020  # UNSUPPORTED_OPERATION

BINANCE = Dialect(
    venue="binance",
    codes=MappingProxyType(
        {
            -1000: OutcomeUnknown,  # UNKNOWN: an unknown error while processing the request
            -1001: Transient,  # DISCONNECTED: please try again
            -1002: Fatal,  # UNAUTHORIZED
            -1003: RateLimited,  # TOO_MANY_REQUESTS
            -1006: OutcomeUnknown,  # UNEXPECTED_RESP: execution status unknown
            -1007: OutcomeUnknown,  # TIMEOUT: send status unknown; execution status unknown
            -1008: Transient,  # SERVER_BUSY
            -1015: RateLimited,  # TOO_MANY_ORDERS
            -1016: Fatal,  # SERVICE_SHUTTING_DOWN: this service is no longer available
            BINANCE_UNSUPPORTED: Fatal,  # "This operation is not supported.": never executed
            -1021: ClockSkew,  # INVALID_TIMESTAMP
            -1022: Fatal,  # INVALID_SIGNATURE
            -1099: Fatal,  # not found, authenticated, or authorized
            -2010: Fatal,  # NEW_ORDER_REJECTED
            -2013: AlreadyGone,  # NO_SUCH_ORDER
            -2014: Fatal,  # BAD_API_KEY_FMT
            -2015: Fatal,  # REJECTED_MBX_KEY
            -2026: AlreadyGone,  # ORDER_ARCHIVED
        }
    ),
    message_rules=(
        MessageRule(-2011, "Unknown order sent.", AlreadyGone),
        # Not in errors.md; reported by users for a list that is not open (§1.6).
        MessageRule(-2011, "Unknown order list sent.", AlreadyGone),
        MessageRule(-2011, "Order was not canceled due to cancel restrictions.", Fatal),
        MessageRule(-2011, "This account may not place or cancel orders.", Fatal),
        MessageRule(-2011, "This action is disabled on this account.", Fatal),
        MessageRule(-2011, "Market is closed.", Transient),  # still live; may open again
        *BINANCE_REST_TRADING_OFF,
        *BINANCE_WS_TRADING_OFF,
    ),
    message_codes=frozenset({-2011}),
    code_ranges=((-1199, -1100, Fatal),),  # 11xx: request issues [BN-ERR]
    retry_after_s=1.0,
    ban_s=120.0,  # bans last 2 min to 3 days
)

# MEXC spot v3 [MX-DOC "Error Code", reference §2.5]. Error bodies carry `code` (sometimes as
# text); a 2xx answer with code 0 or 200 is a success; 429/503/504 may come inside a 200.
MEXC = Dialect(
    venue="mexc",
    codes=MappingProxyType(
        {
            -2013: AlreadyGone,  # "Order does not exist." (order query)
            700003: ClockSkew,  # timestamp outside recvWindow
            10073: ClockSkew,  # "invalid Request-Time"
            429: RateLimited,
            500: OutcomeUnknown,
            503: OutcomeUnknown,  # "5XX means status UNKNOWN" [MX-DOC "HTTP Return Codes"]
            504: OutcomeUnknown,
            # auth, permission
            400: Fatal,  # api key required
            401: Fatal,
            # 403 in the body is left to the status rule: MEXC says HTTP 403 is its WAF.
            602: Fatal,
            10072: Fatal,
            700001: Fatal,
            700002: Fatal,
            700006: Fatal,
            700007: Fatal,
            # bad request
            26: Fatal,
            10007: Fatal,
            30014: Fatal,
            30021: Fatal,
            # a symbol the venue will not trade now: refused for that symbol (BAD_SYMBOL_CODES)
            30000: Fatal,  # suspended transaction for the symbol
            30016: Fatal,  # trading disabled
            30020: Fatal,  # no permission for the symbol
            730001: Fatal,  # Pair not found
            30026: Fatal,
            30029: Fatal,
            33333: Fatal,
            44444: Fatal,
            700004: Fatal,
            700005: Fatal,
            700008: Fatal,
            730708: Fatal,  # listen key information error
        }
    ),
    message_rules=(
        MessageRule(-2011, "Unknown order sent", AlreadyGone),
        MessageRule(-2011, "Unknown order list sent", AlreadyGone),
        # MEXC documents only "Unknown order sent" for -2011; Binance, whose codes MEXC
        # copies, also uses it for refusals that leave the order live.
        MessageRule(-2011, "restriction", Fatal, contains=True),
    ),
    message_codes=frozenset({-2011}),
    success_codes=frozenset({None, 0, 200}),
    retry_after_s=10.0,
    ban_s=120.0,
)

# BingX spot [BX-DOC, reference §3.4]. Every answer is an envelope `{code, msg, data}`: a code
# other than 0 is an error whatever the HTTP status. 100421 and 100400 are reused for unrelated
# answers: only the message says which, and one no rule names is the unknown rule's. A 100410
# carries no Retry-After: the connector reads the epoch in its text; without one, a brief
# backoff, never a blanket 5-minute lock (§3.5).
BINGX = Dialect(
    venue="bingx",
    codes=MappingProxyType(
        {
            80016: AlreadyGone,  # order does not exist
            80018: AlreadyGone,  # order already filled
            100404: AlreadyGone,  # "Order does not exist. The order may have been filled..."
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
            80014: Fatal,  # invalid parameter; "timestamp is invalid" is a message rule
            100204: Fatal,  # no data / symbol not found
            100202: Fatal,  # insufficient balance
            100490: Fatal,  # symbol offline
        }
    ),
    # The first rule whose text is in the message decides.
    message_rules=tuple(
        MessageRule(code, text, error, contains=True)
        for code, text, error in (
            # Every spot trade endpoint's error table: "80014 timestamp is invalid".
            (80014, "timestamp", ClockSkew),
            (100421, "order not exist", AlreadyGone),  # spot: "cancel fail, order not exist"
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
    ),
    message_codes=frozenset({100421, 100400}),
    success_codes=frozenset({None, 0}),
    codes_decide=True,
    # No epoch and no header: a brief wait (the connector's jittered, escalating backoff
    # replaces it). A 403 is BingX's firewall or a rate block, not proof of a bad key. A 418
    # ("IP has been banned. Stop requests and wait") lasts minutes to tens of minutes and names
    # no end: the shortest documented ban (the connector's guess doubles on repeats).
    retry_after_s=2.0,
    ban_s=120.0,
    status_retry_after_s=MappingProxyType({403: 2.0}),
)
