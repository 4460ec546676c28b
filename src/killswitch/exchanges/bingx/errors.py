"""BingX's error answers: `classify` through `dialect.BINGX`, the wait a 100410's text names,
and the batch-cancel texts that mean "gone"."""

from __future__ import annotations

import math
import re
import time

from killswitch.exchanges import dialect
from killswitch.exchanges.base import Fatal, VenueError

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

    `code` is the envelope's business code (None when the body had none); `retry_after_s` a
    Retry-After header's seconds. Without one, a throttle waits until the epoch its text
    names, read on `now_ms` (the venue's time; the host's clock when not given).
    """
    if retry_after_s is None or not math.isfinite(retry_after_s):
        retry_after_s = text_wait(msg, now_ms)
    return dialect.classify(
        dialect.BINGX, http_status, code, msg, retry_after_s=retry_after_s, now_ms=now_ms
    )


def epoch_in(msg: str) -> int | None:
    """The epoch in ms a 100410's text names ("...unblocked after 1727193814249",
    "...can retry after time: 1727193970155"), or None."""
    found = _EPOCH_MS.findall(msg)
    return int(found[-1]) if found else None


def text_wait(msg: str, now_ms: float | None = None) -> float | None:
    """Seconds from `now_ms` (the host's clock when not given) to the epoch `msg` names."""
    epoch = epoch_in(msg)
    if epoch is None:
        return None
    now = time.time() * 1000 if now_ms is None else now_ms
    return max(0.0, (epoch - now) / 1000.0)


def fail_is_gone(error: str) -> bool:
    """True when a batch cancel's `fails[].error` says the order is no longer open."""
    lowered = error.lower().replace(" ", "")
    return any(fragment.replace(" ", "") in lowered for fragment in GONE_FRAGMENTS)


# "No data" (docs-v3's common codes: "Errors may be thrown from every interface"); the same
# code answers "symbol not found" (reference §3.5).
NO_DATA = 100204


def read_found_nothing(exc: VenueError, symbol: str | None) -> bool:
    """Does a read's refusal `exc` say there is nothing to read? A 100204 on a read naming no
    symbol (there is no symbol to be not found), or one whose text says "no data". A 100204
    naming a symbol otherwise stays a refusal of that symbol: never read as "nothing open"."""
    if not isinstance(exc, Fatal) or exc.code != NO_DATA:
        return False
    return symbol is None or "no data" in exc.msg.lower()
