"""What every venue connector is around its signed REST path: one account and its key, a
server clock kept fresh, and the background tasks it owns from `start()` to `close()`.

Each venue's connector subclasses `VenueConnector`, hands it its wire, budgets and signer
(`_signed_rest`), and adds its capabilities, reads, cancels and user stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from typing import Any, ClassVar, Required, Self, TypedDict
from urllib.parse import urlsplit

from killswitch.exchanges.base import (
    AlreadyGone,
    BatchResult,
    CancelAck,
    VenueError,
    malformed_is_unknown,
)
from killswitch.exchanges.budget import Priority, release_shared, use_shared
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.http import RestTransport
from killswitch.exchanges.rest import Charges, Params, SignedRest, Wire
from killswitch.model import Order, OrderKey

log = logging.getLogger(__name__)

# The tasks a connector's `start` spawns, directly or through what it spawned: cancelled when
# it fails. A context variable, so what other tasks spawn meanwhile is never among them.
# Keyed by the connector, so another connector's task spawned from inside it is never among
# them; a task leaves its set when it ends (review 77).
_STARTING: ContextVar[tuple[object, set[asyncio.Task[None]]] | None] = ContextVar(
    "starting", default=None
)


class ConnectorArgs(TypedDict, total=False):
    """What every connector is built from (secrets already unwrapped by the caller)."""

    account: Required[str]
    api_key: Required[str]
    api_secret: Required[str]
    rest_url: Required[str]
    ws_url: Required[str]
    key_type: str  # "hmac" unless the venue takes another (`key_types`)
    timeout_s: float
    recv_window_ms: int
    clock_refresh_s: float


# Second-level labels under a two-letter country code that are public suffixes (co.uk, com.au):
# the registrable domain then has three labels.
_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "gov", "net", "or", "org"})


def ip_scope_of(venue: str, base_url: str) -> str:
    """Whom a venue's per-IP limits count: every account of this process that reaches it.

    Our accounts all leave from one IP, so the venue counts them together on every host it
    serves the API from (Binance: api, api1..api4, api-gcp.binance.com): a named host is keyed
    by the venue and its registrable domain (`binance binance.com`). A host given as an IP
    literal, or a bare name (`localhost`), is keyed by its URL, as simulators on loopback are
    separate venues, one per port."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        if len(labels) >= 2 and all(labels):
            keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 else 2
            if keep == 3 and labels[-2] not in _SECOND_LEVEL:
                keep = 2
            return f"{venue} {'.'.join(labels[-keep:])}"
    return base_url


def whole_ms(value: object) -> int:
    """A time in ms: an int, or a string of digits; never a float, which may have lost digits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return int(value)


class VenueConnector(ABC):
    """One account on one venue: the part of a connector every venue shares."""

    venue: str
    rest: SignedRest
    key_types: ClassVar[tuple[str, ...]] = ("hmac",)
    time_path: ClassVar[str]  # the venue's server time: an unsigned GET answering `serverTime`

    def __init__(
        self,
        *,
        account: str,
        api_key: str,
        api_secret: str,
        rest_url: str,
        ws_url: str,
        key_type: str = "hmac",
        timeout_s: float = 5.0,
        recv_window_ms: int = 5000,
        clock_refresh_s: float = 60.0,
    ) -> None:
        if key_type not in self.key_types:
            kinds = " or ".join(kind.upper() for kind in self.key_types)
            raise ValueError(f"{self.venue} keys are {kinds}, not {key_type!r}")
        self.account = account
        self.transport = RestTransport(
            rest_url, venue=self.venue, account=account, timeout_s=timeout_s
        )
        self.timeout_s = timeout_s
        self._ws_url = ws_url
        self.key_type = key_type
        self._api_key = api_key
        self._secret = api_secret
        self.clock = ServerClock()
        self.clock_refresh_s = clock_refresh_s
        self.recv_window_ms = recv_window_ms
        self._tasks: set[asyncio.Task[None]] = set()
        self._late_sync: asyncio.Task[None] | None = None  # `_late_skew`'s, one at a time
        self._started = False
        self._closed = False
        # The venue counts its limits per IP: every account to this venue in the process
        # spends the same shared budgets (`budget.shared_item`, `ip_scope_of`), which live
        # while one of them does.
        self.ip_scope = ip_scope_of(self.venue, self.transport.base_url)
        use_shared(self.ip_scope)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(account={self.account!r}, key_type={self.key_type!r})"

    def venue_seconds(self) -> float:
        """The venue's clock in seconds (our estimate): what its fixed rate windows follow."""
        return self.clock.now_ms() / 1000.0

    def _signed_rest(
        self, wire: Wire, charges: Charges, sign: Callable[[Params], str]
    ) -> SignedRest:
        """This account's signed REST path, with the venue's wire, budgets and signer."""
        rest = SignedRest(
            wire,
            self.transport,
            charges,
            account=self.account,
            api_key=self._api_key,
            sign=sign,
            clock=self.clock,
            recv_window_ms=self.recv_window_ms,
            resync=lambda: self.resync_clock(),  # looked up at each resync, never bound early
        )
        rest.on_late_skew = self._late_skew
        return rest

    def _late_skew(self, syncs: int) -> None:
        """A late answer said the clock was off when a request was signed (`syncs`: the clock's
        sync count then): resync in the background, one at a time, unless a sync since did
        (counted, not timed: a wall clock stepped back would hide one, review 86), and as the
        connector's own task, cancelled at close (review 85)."""
        if self._closed or self.clock.syncs > syncs:
            return
        if self._late_sync is not None and not self._late_sync.done():
            return
        self._late_sync = self._spawn(
            self._late_resync(), name=f"late resync {self.venue}/{self.account}"
        )

    async def _late_resync(self) -> None:
        # In the background: a kill's own ClockSkew resyncs at its priority.
        try:
            offset = await self.sync_clock(Priority.BACKGROUND)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: keep the offset; a kill resyncs
            log.warning(
                "clock resync after a late answer failed venue=%s account=%s error=%s",
                self.venue,
                self.account,
                exc,
            )
            return
        log.info(
            "clock synced venue=%s account=%s offset_ms=%.1f", self.venue, self.account, offset
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the REST pool and what the venue keeps warm, measuring the clock offset on the
        way; then keep the offset fresh. A failed start may be retried; a second one refused."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__}.start() called twice")
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        await self.transport.start()
        spawned: set[asyncio.Task[None]] = set()
        token = _STARTING.set((self, spawned))
        try:
            await self._open()
        except BaseException:
            # A start that failed (or was cut short by its caller's timeout) leaves nothing it
            # spawned running: a retried start would otherwise add a second session keeper, and
            # the two replaced each other's sessions for the connector's life (review 73).
            # What others spawned meanwhile, even while it ran (a stream's listenKey
            # keepalive), stays (reviews 75, 76).
            await self._cancel_tasks(spawned)
            raise
        finally:
            _STARTING.reset(token)
        self._started = True
        self._spawn(
            self.clock.keep_synced(
                self._sent_time, self.clock_refresh_s, paid=self._time_paid(Priority.BACKGROUND)
            ),
            name=f"{self.venue}-clock-{self.account}",
        )

    async def close(self) -> None:
        """Stop background work and close every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._cancel_tasks(self._tasks)
        try:
            await self._shut()
        finally:
            release_shared(self.ip_scope)
        await self.transport.close()

    async def _cancel_tasks(self, which: set[asyncio.Task[None]]) -> None:
        tasks = list(which)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        starting = _STARTING.get()
        if starting is not None and starting[0] is self:  # by its start, or what that spawned
            starting[1].add(task)
            task.add_done_callback(starting[1].discard)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @abstractmethod
    async def _open(self) -> None:
        """Measure the clock offset, and open what the venue keeps warm."""

    @abstractmethod
    async def _shut(self) -> None:
        """Close what the venue opened besides the REST pool (background tasks are done)."""

    # -- time ------------------------------------------------------------------------------
    @malformed_is_unknown
    async def server_time_ms(self) -> int:
        """Ask the venue for its time (one unsigned request)."""
        return await self._time(Priority.KILL)

    async def _time(self, priority: Priority) -> int:
        """The venue's time in ms, asked at `priority`."""
        answer = await self.rest.request("GET", self.time_path, signed=False, priority=priority)
        return whole_ms(answer["serverTime"])

    async def _background_time(self) -> int:
        return await self._time(Priority.BACKGROUND)

    def _time_paid(self, priority: Priority) -> Callable[[], Awaitable[None]]:
        """Pay for one server-time request at `priority` (before the clock's timing starts)."""
        return lambda: self.rest.charges.acquire("GET", self.time_path, 1, priority)

    async def _sent_time(self) -> int:
        """The venue's time from one server-time request already paid for."""
        answer = await self.rest.send("GET", self.time_path, signed=False)
        return whole_ms(answer["serverTime"])

    async def sync_clock(self, priority: Priority) -> float:
        """Measure the offset, the request's budget paid before the timing starts."""
        return await self.clock.sync(self._sent_time, paid=self._time_paid(priority))

    @malformed_is_unknown
    async def resync_clock(self) -> None:
        """Measure the server-time offset again now."""
        offset = await self.sync_clock(Priority.KILL)
        log.info(
            "clock synced venue=%s account=%s offset_ms=%.1f", self.venue, self.account, offset
        )

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        """Nothing: this venue's reads show every client id."""
        return {}

    def headroom_known(self) -> bool:
        """True while the venue itself said, moments ago, that this account's limits have
        ample room, so a kill's first burst needs no probe (`kill.gate`). False here: only a
        venue that reports what is used (Binance's weight) can say."""
        return False

    def first_look_fits(self, symbols: Sequence[str] | None) -> bool:
        """May a kill's first look (a read of `symbols`, None: all, sent beside its first
        cancels) spend the budget now? Its verification read after the cancels finds what the
        tracker missed too, a round later; where reads and cancels share a scarce budget, the
        verification must not wait behind looks. True here: a read costs little of this
        venue's budget."""
        return True

    # -- cancels ---------------------------------------------------------------------------
    @abstractmethod
    async def cancel_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel one order. Raises `AlreadyGone` when it is not open."""

    @malformed_is_unknown
    async def cancel_orders(
        self, symbol: str, order_ids: Sequence[str], *, priority: Priority = Priority.KILL
    ) -> BatchResult:
        """Where the venue has no batch cancel (Binance and MEXC spot): single cancels, all in
        flight at once, each id's outcome kept."""

        async def one(ids: Sequence[str]) -> BatchResult:
            [order_id] = ids
            try:
                await self.cancel_order(symbol, order_id, priority=priority)
            except AlreadyGone:
                return BatchResult(gone=(order_id,))
            return BatchResult(cancelled=(order_id,))

        return await cancel_in_groups([[i] for i in dict.fromkeys(order_ids)], one)


async def cancel_in_groups(
    groups: Sequence[Sequence[str]], cancel: Callable[[Sequence[str]], Awaitable[BatchResult]]
) -> BatchResult:
    """Send `cancel` for every group of ids at once, and merge what each answers. A group whose
    request failed with a venue error fails each of its ids; an error that is not the venue's
    is raised once all are done."""
    outcomes = await asyncio.gather(*(cancel(group) for group in groups), return_exceptions=True)
    cancelled: list[str] = []
    gone: list[str] = []
    failed: list[tuple[str, VenueError]] = []
    for group, outcome in zip(groups, outcomes, strict=True):
        if isinstance(outcome, VenueError):
            failed.extend((order_id, outcome) for order_id in group)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            cancelled.extend(outcome.cancelled)
            gone.extend(outcome.gone)
            failed.extend(outcome.failed)
    return BatchResult(cancelled=tuple(cancelled), gone=tuple(gone), failed=tuple(failed))
