"""The exchange interface: one Protocol, one error taxonomy, one capabilities value.

Error tree (classified from the venue's raw code and message through a table per venue)::

    VenueError                      carries venue, account, http status, code, msg
     +-- AlreadyGone                unknown order, already filled/cancelled: success for a kill
     +-- RateLimited(retry_after_s) 429 / venue throttle code: wait, then retry
     |    +-- IpBanned              418: stop all traffic to that host until it expires
     |    +-- AllowanceHeld         held by us, never sent: an error answer could lock the API
     +-- ClockSkew                  -1021 / 700003 / 100421: resync server time, retry at once
     +-- OutcomeUnknown             sent, no answer (5xx, timeout, -1007, 101500): re-read state
     +-- Transient                  never sent or refused for now (disconnect, busy): backoff
     +-- Fatal                      bad key, signature, permission: stop retrying that account

The engine plans from `Capabilities`, never from a venue's name. Connectors know nothing of
triggers or scopes.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, ParamSpec, Protocol, TypeVar, runtime_checkable

from killswitch.model import ListKey, Order, OrderKey, Snapshot, StreamEvent


class VenueError(Exception):
    """A request to a venue did not do what was asked. Subclasses say what to do next."""

    retriable: ClassVar[bool] = False

    def __init__(
        self,
        msg: str,
        *,
        venue: str = "",
        account: str = "",
        http_status: int | None = None,
        code: int | str | None = None,
        endpoint: str = "",
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.venue = venue
        self.account = account
        self.http_status = http_status
        self.code = code
        self.endpoint = endpoint

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "venue": self.venue,
            "account": self.account,
            "http_status": self.http_status,
            "code": self.code,
            "msg": self.msg,
            "endpoint": self.endpoint,
        }

    def __str__(self) -> str:
        where = f"{self.venue}/{self.account} {self.endpoint}".strip()
        return f"{self.kind}({where}: http={self.http_status} code={self.code} msg={self.msg!r})"


class AlreadyGone(VenueError):
    """The order is not open any more (unknown, filled or cancelled). Never retried."""


class RateLimited(VenueError):
    """The venue throttled us; `retry_after_s` is how long to stay away."""

    retriable = True

    def __init__(self, msg: str, *, retry_after_s: float, **kw: object) -> None:
        super().__init__(msg, **kw)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "retry_after_s": self.retry_after_s}


class IpBanned(RateLimited):
    """HTTP 418: the host is banned until `retry_after_s` passes. Send nothing to it."""


class AllowanceHeld(RateLimited):
    """Not sent: one more error answer could lock the API (BingX's error allowance), or would
    spend what kills keep back. Nothing reached the venue; `retry_after_s` is how long the
    allowance holds it."""


class ClockSkew(VenueError):
    """The venue rejected our timestamp. Resync the server-time offset and retry at once."""

    retriable = True


class OutcomeUnknown(VenueError):
    """Sent, but no reliable answer: the request may or may not have been applied."""

    retriable = True


class Transient(VenueError):
    """Not applied, worth retrying after a backoff (connect error, busy, disconnected)."""

    retriable = True


class Fatal(VenueError):
    """Bad key, signature, permission or request: retrying cannot help."""


# What the venues say of a symbol they do not take (Binance -1121 "Invalid symbol."; MEXC
# 10007 "bad symbol", 30014 "invalid symbol", 30021 "invalid symbol", 30000 "suspended
# transaction for the symbol", 30016 "trading disabled", 30020 "no permission for the symbol",
# 730001 "Pair not found"; BingX 100204 "symbol not found", 100490 "symbol offline"): a refusal
# of that request, not of the account.
BAD_SYMBOL_CODES = frozenset(
    {-1121, -1100, 10007, 30000, 30014, 30016, 30020, 30021, 730001, 100204, 100490}
)


def refuses_symbol(exc: VenueError) -> bool:
    """Is `exc` a venue refusing (Fatal) a symbol it was sent? -1100 ("illegal characters")
    counts only when it names the symbol: it may be about an id."""
    if not isinstance(exc, Fatal) or exc.code not in BAD_SYMBOL_CODES:
        return False
    return exc.code != -1100 or "symbol" in exc.msg.lower()


# What reading a venue answer of the wrong shape raises: a missing field, a wrong type.
MALFORMED_ANSWER: tuple[type[Exception], ...] = (
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
)

P = ParamSpec("P")
R = TypeVar("R")


def malformed_is_unknown(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Make a connector method raise `OutcomeUnknown` for an answer it cannot read.

    A 2xx body with a field missing or of the wrong type says nothing reliable about what the
    venue did: the engine re-reads and retries, as after a 5xx, instead of giving up on the
    account. Connectors decorate each `Exchange` method that reads an answer.
    """

    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except MALFORMED_ANSWER as exc:
            owner = args[0] if args else None
            raise OutcomeUnknown(
                f"malformed answer: {type(exc).__name__}: {exc}"[:300],
                venue=str(getattr(owner, "venue", "")),
                account=str(getattr(owner, "account", "")),
                endpoint=fn.__name__,
            ) from exc

    return guarded


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A venue's documented request budget for one account/IP, as the connector enforces it.

    `weight_per_window` is spent by `weight` units per request inside `window_s`. Cancels may use
    the budget up to `1 - kill_headroom`; background reads only up to `background_share`.
    """

    weight_per_window: int
    window_s: float
    cancel_weight: int = 1
    snapshot_weight: int = 1  # an all-symbols open-orders read
    snapshot_symbol_weight: int = 1  # a one-symbol open-orders read
    list_snapshot_weight: int = 1
    kill_headroom: float = 0.1
    background_share: float = 0.5
    max_requests_per_s: float | None = None  # a per-endpoint/UID cap on top of weight
    # False where the venue does not say where its windows start (MEXC): then a request counts
    # for a whole window after it lands, so no window of the venue's can pass the cap.
    windows_aligned: bool = True


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a venue can do, as the planner needs it."""

    cancel_all_max_symbols: int  # symbols one cancel-all call covers (Binance 1, MEXC 5)
    cancel_all_without_symbol: bool  # BingX cancelOpenOrders with no symbol
    cancel_all_covers_lists: bool  # Binance/MEXC yes; BingX unverified, so no
    batch_cancel_max: int  # ids per batch cancel by id; 0 when the venue has none
    has_order_lists: bool
    open_orders_without_symbol: bool
    dead_mans_switch: bool
    dead_mans_switch_range_s: tuple[int, int] | None = None
    rate_limits: RateLimits = field(default_factory=lambda: RateLimits(1200, 60.0))


@dataclass(frozen=True, slots=True)
class CancelAck:
    """What a cancel request acknowledged: the (symbol, order id) keys the venue reported, and
    the (symbol, list id) keys of the whole lists that went."""

    cancelled: tuple[OrderKey, ...] = ()
    lists_cancelled: tuple[ListKey, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A batch cancel by ids: which went, which were already gone, which failed and why."""

    cancelled: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    failed: tuple[tuple[str, VenueError], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadMansSwitchState:
    """The venue's answer to arming or disarming its cancel-all-after timer."""

    active: bool
    trigger_time_s: int | None = None


class Priority(enum.IntEnum):
    """Whose request it is: a kill's goes first; background reads (reconcile) yield to it."""

    KILL = 0
    BACKGROUND = 1


@runtime_checkable
class Exchange(Protocol):
    """One venue account. Every method raises a `VenueError` subclass on failure."""

    venue: str
    account: str

    @property
    def capabilities(self) -> Capabilities:
        """What the venue can do, as the planner needs it (may change as it is learned)."""

    async def start(self) -> None:
        """Open the connection pool, sync the clock, open and authenticate ws sessions."""

    async def close(self) -> None:
        """Close everything. Safe to call twice."""

    async def server_time_ms(self) -> int:
        """Ask the venue for its time (one request)."""

    async def resync_clock(self) -> None:
        """Measure the server-time offset again now."""

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders and order lists, all symbols when `symbols` is None and the venue
        allows it; else exactly the symbols given. `complete` is False when the read may
        have been cut short."""

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        """The client ids of `orders`, whose reads did not show them (`UNREAD_CLIENT_ID`), asked
        of the venue where it can say (BingX's documented openOrders row has none); an order it
        cannot tell is left out. Venues whose reads always show client ids return nothing."""

    async def cancel_all(self, symbols: Sequence[str] | None) -> CancelAck:
        """Cancel every open order on `symbols` (at most `cancel_all_max_symbols` of them),
        or on every symbol when None and `cancel_all_without_symbol`. A symbol with nothing
        open is not an error."""

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        """Cancel one order. Raises `AlreadyGone` if it is not open."""

    async def cancel_orders(self, symbol: str, order_ids: Sequence[str]) -> BatchResult:
        """Cancel several orders by id on one symbol (batch where the venue has it)."""

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        """Cancel a whole order list (Binance orderList, BingX OCO)."""

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        """Arm or push out the venue's cancel-all-after timer. Fatal if the venue has none."""

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        """Close the venue's cancel-all-after timer."""

    def user_stream(self) -> AsyncIterator[StreamEvent]:
        """Connect one user-data stream and yield normalised events until it ends.

        The first item is `StreamSubscribed`, yielded once the venue confirmed the subscription.
        The iterator raises `Transient` when the connection drops or its heartbeat fails, and
        yields `StreamTerminated` then stops when the venue ends the subscription. It does not
        reconnect: the stream supervisor does that and resnapshots after every connect.
        """
        ...
