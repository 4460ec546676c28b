"""BingX error classification: (status, code, msg) to the error taxonomy, by `CODE_TABLE` and
message rules for the codes the venue reuses."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

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
from killswitch.exchanges.bingx.venue import BACKOFF_INITIAL_S

log = logging.getLogger(__name__)


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
