"""The kill: accept triggers, journal and latch, plan, cancel with retries, verify flat, sweep.

The engine owns every state change and does no I/O of its own beyond the journal: it talks to
venues through `Exchange` connectors and tells the world through `events` (a `FanOut`).

    submit(trigger) -> journal (fsync) -> latch (mode kill) -> kill task in the background
    kill: per account, concurrently
        wave 1   plan from tracker + configured symbols and send at once, while a venue
                 snapshot is read; then cover what only the snapshot shows
        verify   snapshot in scope; anything left starts another wave
        ...      until every account is flat (FLAT) or the deadline passes (FAILED)
        quiet    still flat after `quiet_window_s` with no new order on the streams: CONFIRMED
    latched: new orders seen on a stream in scope are cancelled at once; the scopes are swept
             every `sweep_interval_s`; a restart resumes latched and unfinished kills before
             `start()` returns (so before the daemon reports READY). Reset is explicit.

Retries follow the taxonomy in `exchanges/base.py`: `AlreadyGone` is success and never retried;
`RateLimited` waits its `retry_after_s`; `ClockSkew` retries at once (the connector resyncs);
`OutcomeUnknown` re-reads the venue before sending again; `Transient` backs off with full
jitter; `Fatal` stops that account with an alarm. One account's failure never stops another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from killswitch.events import EventRecord, FanOut, make_event
from killswitch.exchanges.base import (
    AlreadyGone,
    CancelAck,
    ClockSkew,
    Exchange,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    VenueError,
)
from killswitch.journal import Journal
from killswitch.model import (
    AccountRef,
    ExecType,
    ListEvent,
    Mode,
    Order,
    OrderEvent,
    OrderKey,
    OrderList,
    Scope,
    Snapshot,
    Trigger,
    canonical_symbol,
)
from killswitch.planner import CancelRequest, RequestKind, in_scope, plan

log = logging.getLogger(__name__)

_GUARD_S = 5.0  # past its deadline, a hung request is cut off by the loop's own clock
KILLS_KEPT = 1_000  # finished kills `kill_for` still answers for; older ones are in the journal

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class Spawn(Protocol):
    """Start a coroutine as a task (the daemon's `CriticalTasks.spawn`)."""

    def __call__(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]: ...


class SubmitResult(enum.StrEnum):
    """What `Engine.submit` did with a trigger."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


class KillState(enum.StrEnum):
    """Where a kill is: running, flat (proved empty), confirmed (still flat after the quiet
    window), failed (deadline passed or an account stopped), or aborted by a reset."""

    RUNNING = "running"
    FLAT = "flat"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ABORTED = "aborted"


class AccountState(enum.StrEnum):
    RUNNING = "running"
    FLAT = "flat"
    FAILED = "failed"  # deadline passed with orders still open (or unverified)
    STOPPED = "stopped"  # a Fatal answer: no more requests to this account in this kill


class TrackerView(Protocol):
    """What the engine reads from an account's order tracker (`exchanges.tracker.OrderTracker`)."""

    @property
    def trusted(self) -> bool:
        """True while the stream is live and reconciled: the view can start a wave."""

    def as_snapshot(self) -> Snapshot:
        """The open orders and lists the tracker believes in."""


@dataclass(slots=True)
class Account:
    """One configured venue account as the engine drives it."""

    ref: AccountRef
    exchange: Exchange
    symbols: tuple[str, ...] = ()  # configured symbols, venue-native
    tracker: TrackerView | None = None
    dead_mans_switch_s: int = 0
    stream_state: Callable[[], str] | None = None  # for status; the stream supervisor's state
    # Why the account is not ready to be acted on ("key rejected: ...", "IP banned until ..."),
    # or None when it is: shown in status, and named in a kill's report of the account.
    not_ready: Callable[[], str | None] | None = None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Timing of kills, retries and sweeps."""

    deadline_s: float = 30.0
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0
    quiet_window_s: float = 2.0
    sweep_interval_s: float = 10.0
    clock_skew_retries: int = 3  # immediate retries on ClockSkew before backing off
    max_in_flight: int = 32  # requests in flight per account once the venue answered OK
    probe_first: bool = True  # after a quiet spell, one request goes alone before a burst
    open_for_s: float = 5.0  # how long an OK answer keeps the account open for bursts
    careful_s: float = 30.0  # after a 429: one request at a time for this long


@dataclass(slots=True)
class AccountResult:
    """One account's part of a kill."""

    ref: AccountRef
    state: AccountState = AccountState.RUNNING
    orders_before: int = 0
    lists_before: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    waves: int = 0
    cancelled: set[OrderKey] = field(default_factory=set)
    lists_cancelled: set[str] = field(default_factory=set)
    still_open: Snapshot | None = None
    verified: bool = False
    error: dict[str, object] | None = None
    first_cancel_ms: float | None = None
    flat_ms: float | None = None
    not_ready: str | None = None  # why the account was not ready, when it could not be acted on
    known: dict[OrderKey, Order] = field(default_factory=dict)  # every in-scope order seen

    def to_json(self) -> dict[str, object]:
        still = self.still_open or Snapshot()
        return {
            "venue": self.ref.venue,
            "account": self.ref.account,
            "state": self.state.value,
            "orders_before": self.orders_before,
            "lists_before": self.lists_before,
            "cancelled": len(self.cancelled),
            "lists_cancelled": len(self.lists_cancelled),
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "waves": self.waves,
            "verified": self.verified,
            "still_open": open_json(still),
            "error": self.error,
            "not_ready": self.not_ready,
            "time_to_first_cancel_ms": self.first_cancel_ms,
            "time_to_flat_ms": self.flat_ms,
        }


class Kill:
    """One kill (or sweep) in progress. Tests and callers wait on its events."""

    def __init__(
        self,
        kill_id: str,
        kind: str,
        scope: Scope,
        mode: Mode,
        triggers: list[Trigger],
        started: float,
        deadline: float,
    ) -> None:
        self.id = kill_id
        self.kind = kind  # trigger | resume | sweep | stream
        self.scope = scope
        self.mode = mode
        self.triggers = triggers
        self.started = started
        self.deadline = deadline
        self.state = KillState.RUNNING
        self.accounts: dict[AccountRef, AccountResult] = {}
        self.first_cancel_ms: float | None = None
        self.local_flat_ms: float | None = None
        self.time_to_flat_ms: float | None = None
        self.new_orders_seen = 0
        # Set by a reset that released every trigger of this kill: a cancellation after it is
        # the kill's end. Any other cancellation (a shutdown) interrupts it, and the next life
        # of the daemon resumes it from the journal, as it would after a crash.
        self.released = False
        self.final: dict[str, object] | None = None  # the summary, frozen when it finished
        self.flat = asyncio.Event()  # proved flat
        self.done = asyncio.Event()  # flat or failed: the result is known
        self.finished = asyncio.Event()  # confirmation over too; the kill task has ended
        self.task: asyncio.Task[None] | None = None

    @property
    def origin_ms(self) -> int:
        """Wall time the kill counts from: the trigger's produce time, else its receipt."""
        first = self.triggers[0] if self.triggers else None
        if first is None:
            return 0
        return first.created_ms or first.received_ms

    def summary(self) -> dict[str, object]:
        if self.final is not None:
            return self.final
        return {
            "kill_id": self.id,
            "kind": self.kind,
            "trigger_ids": [t.id for t in self.triggers],
            "mode": self.mode.value,
            "scope": self.scope.to_json(),
            "state": self.state.value,
            "time_to_first_cancel_ms": self.first_cancel_ms,
            "time_to_flat_ms": self.time_to_flat_ms,
            "local_time_to_flat_ms": self.local_flat_ms,
            "accounts": [r.to_json() for r in self.accounts.values()],
        }


class _Gate:
    """How many requests one account may have in flight, so a 429 can never become a 418.

    A venue that bans a client for sending "after a 429" counts requests already in flight
    when the 429 left. So after a quiet spell the first request goes alone (a probe); an OK
    answer opens the account to `max_in_flight` for `open_for_s`; a 429 closes it to one
    request at a time for `careful_s`. The probe is a cancel: it is never wasted.
    """

    def __init__(self, config: EngineConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._in_flight = 0
        self._ok_at = -1e18
        self._limited_at = -1e18
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def mode(self) -> str:
        now = self._clock()
        if now - self._limited_at < self._config.careful_s:
            return "careful"
        if not self._config.probe_first or now - self._ok_at < self._config.open_for_s:
            return "open"
        return "probe"

    def _limit(self) -> int:
        return self._config.max_in_flight if self.mode == "open" else 1

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        while self._in_flight >= self._limit():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self._in_flight += 1
        try:
            result = await call()
        except RateLimited:
            self._limited_at = self._clock()
            raise
        except VenueError:
            self._ok_at = self._clock()  # the venue answered: it is not throttling us
            raise
        else:
            self._ok_at = self._clock()
            return result
        finally:
            self._in_flight -= 1
            self._wake()

    def _wake(self) -> None:
        # Every waiter is woken and re-checks the limit itself. Waking only as many as there
        # are free slots loses a wake-up when a woken waiter is cancelled before it runs: the
        # slot it was given is then handed to nobody, and the waiters behind it wait for ever.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class _AccountStopped(Exception):
    """A Fatal answer: stop this account's part of the kill."""

    def __init__(self, error: VenueError) -> None:
        super().__init__(str(error))
        self.error = error


class _DeadlinePassed(Exception):
    """The kill's deadline passed for this account."""


@dataclass(slots=True)
class _Outcome:
    result: str  # ok | gone | verified | <error kind>
    cancelled: int = 0
    attempts: int = 0
    error: VenueError | None = None


def open_json(snapshot: Snapshot) -> dict[str, object]:
    """Describe what is open, exactly: ids, client ids and symbols (for `failed` events)."""
    return {
        "orders": [
            {"symbol": o.symbol, "order_id": o.order_id, "client_order_id": o.client_order_id}
            for o in snapshot.orders
        ],
        "lists": [
            {
                "symbol": lst.symbol,
                "list_id": lst.list_id,
                "list_client_order_id": lst.list_client_order_id,
            }
            for lst in snapshot.lists
        ],
    }


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, VenueError) and exc.retriable


class Engine:
    """The kill engine. `start()` replays the journal and resumes latched kills."""

    def __init__(
        self,
        accounts: Sequence[Account],
        journal: Journal,
        config: EngineConfig | None = None,
        *,
        events: FanOut | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_ms: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        healthy: Callable[[], bool] = lambda: True,
        spawn: Spawn | None = None,
    ) -> None:
        self.accounts: dict[AccountRef, Account] = {a.ref: a for a in accounts}
        self.journal = journal
        self.config = config or EngineConfig()
        self.events = events if events is not None else FanOut()
        self._sleep = sleep
        self._clock = clock
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._rng = rng or random.Random()
        self._healthy = healthy
        self._spawn_kill = spawn
        self._latches: dict[str, Scope] = {}
        # Trigger ids already accepted, oldest first; as many as the journal keeps.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.kills: dict[str, Kill] = {}  # by trigger id (joined triggers share one Kill)
        self._running: set[Kill] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._stream_pending: dict[AccountRef, dict[str, Order | OrderList]] = {}
        self._stream_recent: dict[AccountRef, dict[str, float]] = {}
        self._stream_tasks: dict[AccountRef, asyncio.Task[None]] = {}
        self._dms_state: dict[AccountRef, str] = {}
        self._gates: dict[AccountRef, _Gate] = {}
        # Held from deciding a latch change until it is journaled and applied: a reset names
        # exactly the latches it releases, and a kill journaled meanwhile is never among them.
        self._latch_lock = asyncio.Lock()
        self.last_kill: dict[str, object] | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay the journal; resume latched and unfinished kills and wait until each is flat
        or failed; then start the sweeper and the dead-man's-switch keepers."""
        if self._started:
            raise RuntimeError("engine already started")
        self._started = True
        state = self.journal.state if self.journal.is_open else self.journal.open()
        if state.unreadable or state.failsafe_latches:
            # The journal could not be read back whole: it opened latched on everything, and
            # stays so until an operator resets (journal.py, "fail-safe").
            log.error(
                "journal fail-safe: latched on everything reason=%s kept=%s",
                state.unreadable or "fail-safe latch still held",
                state.unreadable_copy,
            )
            self._emit(
                "alarm",
                account="journal",
                error=state.unreadable or "fail-safe latch still held",
                kept=str(state.unreadable_copy or ""),
                trigger_ids=list(state.failsafe_latches),
            )
        self._seen = OrderedDict(state.seen)
        self._latches = dict(state.latches)
        self.last_kill = state.last_kill
        resumed: list[Kill] = []
        for trigger_id, trigger in list(state.triggers.items()):
            latched = trigger_id in self._latches
            if not latched and trigger_id not in state.unfinished:
                continue
            scope = self._latches.get(trigger_id, trigger.scope)
            if any(k.scope.contains(scope) and k.mode is trigger.mode for k in resumed):
                joined = next(k for k in resumed if k.scope.contains(scope))
                joined.triggers.append(trigger)
                self.kills[trigger_id] = joined
                continue
            log.warning("resuming kill trigger_id=%s latched=%s", trigger_id, latched)
            self._emit("resumed", trigger_id=trigger_id, latched=latched, scope=scope.to_json())
            resumed.append(self._launch(trigger, scope, kind="resume"))
        if resumed:
            await asyncio.gather(*(k.done.wait() for k in resumed))
        self._spawn(self._sweep_loop(), "sweeper")
        for account in self.accounts.values():
            caps = account.exchange.capabilities
            if account.dead_mans_switch_s > 0 and caps.dead_mans_switch:
                self._spawn(self._dms_loop(account), f"dms {account.ref}")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let kills in flight finish for up to `grace_s`, then cancel what is left."""
        self._stopping = True
        running = [k.task for k in self._running if k.task is not None]
        running += list(self._stream_tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            if pending:
                log.warning("stop cancelled kills in flight count=%d", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.journal.close()

    async def wait_idle(self) -> None:
        """Wait until no kill, sweep or stream cancel is in flight (for tests and drains)."""
        while True:
            busy = [k.task for k in self._running if k.task is not None]
            busy += list(self._stream_tasks.values())
            if not busy:
                return
            await asyncio.wait(busy)

    # -- the public API -------------------------------------------------------------------------
    async def submit(self, trigger: Trigger) -> SubmitResult:
        """Journal the trigger (fsync), latch its scope (mode kill) and start the kill."""
        if trigger.id in self._seen:
            self._emit("duplicate", trigger_id=trigger.id, source=trigger.source)
            return SubmitResult.DUPLICATE
        self._seen[trigger.id] = None
        while len(self._seen) > self.journal.seen_limit:
            self._seen.popitem(last=False)
        if not trigger.received_ms:
            trigger = _with_received(trigger, self._wall_ms())
        records: list[tuple[str, dict[str, object]]] = [("trigger", {"trigger": trigger.to_json()})]
        if trigger.mode is Mode.KILL:
            records.append(("latch", {"trigger_id": trigger.id, "scope": trigger.scope.to_json()}))
        try:
            # Shielded: a caller cancelled mid-write must not leave the journal holding a
            # latch that memory does not (the write itself always finishes).
            await asyncio.shield(self._accept(trigger, records))
        except BaseException:
            # not journaled: a retry of this trigger must not be answered DUPLICATE
            self._seen.pop(trigger.id, None)
            raise
        log.warning(
            "kill triggered trigger_id=%s source=%s mode=%s scope=%s reason=%r",
            trigger.id,
            trigger.source,
            trigger.mode.value,
            trigger.scope.to_json(),
            trigger.reason,
        )
        self._emit("triggered", trigger=trigger.to_json())
        if trigger.mode is Mode.KILL:
            self._emit("latched", trigger_id=trigger.id, scope=trigger.scope.to_json())
        joined = self._joinable(trigger)
        if joined is not None:
            joined.triggers.append(trigger)
            self.kills[trigger.id] = joined
            self._emit("joined", trigger_id=trigger.id, kill_id=joined.id)
        else:
            self._launch(trigger, trigger.scope, kind="trigger")
        return SubmitResult.ACCEPTED

    async def _accept(self, trigger: Trigger, records: list[tuple[str, dict[str, object]]]) -> None:
        async with self._latch_lock:
            await self.journal.append_many_async(records)
            if trigger.mode is Mode.KILL:
                self._latches[trigger.id] = trigger.scope

    async def reset(
        self,
        *,
        actor: str,
        reason: str,
        origin: str = "local",
        only: Iterable[str] | None = None,
    ) -> bool:
        """Release every latch, or those of the trigger ids in `only` (audited: who, why, from
        where). The journal record, the log line and the event name exactly the latches
        released. False if nothing was released."""
        async with self._latch_lock:
            wanted = set(self._latches) if only is None else set(only) & set(self._latches)
            names = [t for t in self._latches if t in wanted]
            released = [{"trigger_id": t, "scope": self._latches[t].to_json()} for t in names]
            await self.journal.append_async(
                "reset", actor=actor, reason=reason, origin=origin, released=released
            )
            for trigger_id in names:
                del self._latches[trigger_id]
        for kill in list(self._running):
            if kill.mode is not Mode.KILL or kill.task is None:
                continue
            if kill.kind == "sweep":
                stale = not any(s.contains(kill.scope) for s in self._latches.values())
            else:
                ids = {t.id for t in kill.triggers}
                stale = bool(ids) and ids <= wanted
            if stale:
                kill.released = True
                kill.task.cancel()
        log.warning("reset actor=%s origin=%s reason=%r released=%s", actor, origin, reason, names)
        self._emit("reset", actor=actor, reason=reason, origin=origin, released=released)
        return bool(names)

    def healthy(self) -> bool:
        """True while started and its background loops (sweeper, dead-man's switches) run."""
        return self._started and not self._stopping and all(not t.done() for t in self._tasks)

    def latched(self) -> bool:
        return bool(self._latches)

    def latch_scopes(self) -> list[Scope]:
        return list(self._latches.values())

    def kill_for(self, trigger_id: str) -> Kill | None:
        """The kill a trigger started or joined."""
        return self.kills.get(trigger_id)

    def on_stream_event(self, ref: AccountRef, event: OrderEvent | ListEvent) -> None:
        """A stream saw an order change: cancel new open orders in a latched scope at once."""
        if not event.is_open:
            return
        account = self.accounts.get(ref)
        if account is None:
            return
        if isinstance(event, OrderEvent):
            if event.exec_type in (ExecType.NEW, ExecType.REPLACED):
                for kill in self._running:
                    if kill.scope.covers_account(ref) and kill.scope.covers_order(event):
                        kill.new_orders_seen += 1
            scope = self._latch_covering(ref, event)
            if scope is None:
                return
            item: Order | OrderList = event.to_order()
            key = f"o:{event.symbol}:{event.order_id}"
        else:
            order_list = OrderList(
                symbol=event.symbol,
                list_id=event.list_id,
                list_client_order_id=event.list_client_order_id,
                order_ids=event.order_ids,
            )
            scope = next(
                (
                    s
                    for s in self._latches.values()
                    if s.covers_account(ref) and s.covers_list(order_list)
                ),
                None,
            )
            if scope is None:
                return
            item = order_list
            key = f"l:{event.symbol}:{event.list_id}"
        recent = self._stream_recent.setdefault(ref, {})
        now = self._clock()
        if key in recent and now - recent[key] < self.config.deadline_s:
            return
        recent[key] = now
        if len(recent) > 10_000:
            for old in [k for k, t in recent.items() if now - t >= self.config.deadline_s]:
                del recent[old]
        self._stream_pending.setdefault(ref, {})[key] = item
        if ref not in self._stream_tasks:
            task = asyncio.get_running_loop().create_task(self._drain_stream(account, scope))
            self._stream_tasks[ref] = task
            task.add_done_callback(functools.partial(self._stream_done, ref))

    def status(self) -> dict[str, object]:
        """Everything `killswitch status` shows: latch, kills, per-account view."""
        accounts: list[dict[str, object]] = []
        for account in self.accounts.values():
            entry: dict[str, object] = {
                "venue": account.ref.venue,
                "account": account.ref.account,
                "stream": account.stream_state() if account.stream_state else "unknown",
                "dead_mans_switch": self._dms_state.get(account.ref, "off"),
            }
            reason = account.not_ready() if account.not_ready is not None else None
            entry["ready"] = reason is None
            entry["reason"] = reason or ""
            if account.tracker is not None:
                view = account.tracker.as_snapshot()
                entry["open_orders"] = len(view.orders)
                entry["open_lists"] = len(view.lists)
                entry["tracker_trusted"] = account.tracker.trusted
            accounts.append(entry)
        return {
            "latched": self.latched(),
            "latches": [{"trigger_id": t, "scope": s.to_json()} for t, s in self._latches.items()],
            "running": [k.summary() for k in self._running if k.kind != "stream"],
            "last_kill": self.last_kill,
            "accounts": accounts,
        }

    # -- kills ----------------------------------------------------------------------------------
    def _joinable(self, trigger: Trigger) -> Kill | None:
        for kill in self._running:
            if (
                kill.kind in ("trigger", "resume")
                and kill.state is KillState.RUNNING
                and kill.mode is trigger.mode
                and kill.scope.contains(trigger.scope)
            ):
                return kill
        return None

    def _launch(self, trigger: Trigger | None, scope: Scope, *, kind: str) -> Kill:
        now = self._clock()
        mode = trigger.mode if trigger is not None else Mode.KILL
        kill_id = trigger.id if trigger is not None else f"{kind}-{next(self._ids)}"
        kill = Kill(
            kill_id,
            kind,
            scope,
            mode,
            [trigger] if trigger is not None else [],
            now,
            now + self.config.deadline_s,
        )
        if trigger is not None:
            self.kills[trigger.id] = kill
        self._running.add(kill)
        if self._spawn_kill is not None and kind != "sweep":
            # Kills run as the daemon's critical work: a shutdown lets them finish.
            kill.task = self._spawn_kill(self._run_kill(kill), name=f"kill {kill_id}")
        else:
            kill.task = asyncio.get_running_loop().create_task(
                self._run_kill(kill), name=f"kill {kill_id}"
            )
        return kill

    async def _run_kill(self, kill: Kill) -> None:
        accounts = [a for a in self.accounts.values() if kill.scope.covers_account(a.ref)]
        for account in accounts:
            kill.accounts[account.ref] = AccountResult(account.ref)
        if kill.kind != "sweep":
            log.warning("kill start kill_id=%s accounts=%d", kill.id, len(accounts))
        try:
            await self._to_done(kill, accounts)
            kill.done.set()
            # A one-shot cancel ends at its flat snapshot: a confirmation re-check would
            # cancel orders placed after it.
            if kill.state is KillState.FLAT and kill.kind != "sweep" and kill.mode is Mode.KILL:
                await self._confirm(kill, accounts)
        except asyncio.CancelledError:
            kill.state = KillState.ABORTED
            why = "reset" if kill.released else "shutdown"
            self._emit("aborted", kill_id=kill.id, kind=kill.kind, reason=why)
            raise
        finally:
            kill.done.set()
            try:
                await self._record_done(kill)
            finally:
                # Still running until its end is journaled: `wait_idle` waits for the record.
                self._running.discard(kill)
                kill.finished.set()
                # The orders a kill saw matter only while it runs; a finished kill stays in
                # `kills` for `kill_for` (the newest KILLS_KEPT of them) as its summary.
                kill.final = kill.summary()
                for result in kill.accounts.values():
                    result.known.clear()
                self._forget_old_kills()

    async def _to_done(
        self, kill: Kill, accounts: Sequence[Account], *, again: bool = False
    ) -> None:
        """Run every account to flat or failure; `again` re-verifies a kill already flat."""
        if not accounts:
            # Nothing was checked, so nothing is proved: a kill of nothing is not flat.
            log.error("kill has no configured account in scope kill_id=%s", kill.id)
            kill.state = KillState.FAILED
            self._emit(
                "failed",
                still_open={},
                error={"kind": "no_account_in_scope"},
                **kill.summary(),
            )
            return
        fast = kill.kind != "sweep" and not again
        await asyncio.gather(*(self._run_account(kill, a, fast=fast) for a in accounts))
        results = list(kill.accounts.values())
        if all(r.state is AccountState.FLAT for r in results):
            kill.state = KillState.FLAT
            if again:
                return
            kill.local_flat_ms = (self._clock() - kill.started) * 1000
            if kill.origin_ms:
                kill.time_to_flat_ms = float(self._wall_ms() - kill.origin_ms)
            else:
                kill.time_to_flat_ms = kill.local_flat_ms
            kill.flat.set()
            if kill.kind == "sweep":
                self._emit("sweep", kill_id=kill.id, result="flat", **self._sweep_counts(kill))
            else:
                log.warning(
                    "kill flat kill_id=%s time_to_flat_ms=%s", kill.id, kill.time_to_flat_ms
                )
                self._emit("flat", **kill.summary())
            return
        kill.state = KillState.FAILED
        open_now = {
            str(r.ref): {**open_json(r.still_open or Snapshot()), "verified": r.verified}
            for r in results
            if r.state is not AccountState.FLAT
        }
        log.error("kill failed kill_id=%s kind=%s open=%s", kill.id, kill.kind, open_now)
        self._emit("failed", still_open=open_now, **kill.summary())

    async def _confirm(self, kill: Kill, accounts: Sequence[Account]) -> None:
        """Flat, then still flat after a quiet window with no new order on the streams."""
        window = self.config.quiet_window_s
        give_up = kill.deadline + window
        while True:
            seen = kill.new_orders_seen
            await asyncio.sleep(window)
            quiet = kill.new_orders_seen == seen
            if not quiet:
                # Orders arrived during the window: give their waves time of their own.
                kill.deadline = max(kill.deadline, self._clock() + self.config.deadline_s / 2)
            # One more look at the venues: consecutive empty snapshots, not our own word.
            await self._to_done(kill, accounts, again=True)
            if kill.state is not KillState.FLAT:
                return
            if quiet and kill.new_orders_seen == seen:
                kill.state = KillState.CONFIRMED
                log.warning("kill confirmed kill_id=%s", kill.id)
                self._emit("confirmed", kill_id=kill.id, time_to_flat_ms=kill.time_to_flat_ms)
                return
            if self._clock() >= give_up:
                self._emit("unconfirmed", kill_id=kill.id, reason="new orders kept arriving")
                return

    async def _record_done(self, kill: Kill) -> None:
        if kill.kind in ("sweep", "stream"):
            return
        if kill.state is KillState.ABORTED and not kill.released:
            # Interrupted by a shutdown: no `kill_done`, so the next start resumes it.
            log.warning("kill interrupted, resumes at the next start kill_id=%s", kill.id)
            return
        summary = kill.summary()
        self.last_kill = summary
        for trigger in kill.triggers:
            try:
                # A write once begun is finished even if this task is cancelled meanwhile.
                await asyncio.shield(
                    self.journal.append_async(
                        "kill_done", trigger_id=trigger.id, state=kill.state.value, summary=summary
                    )
                )
            except asyncio.CancelledError:
                raise
            except OSError:
                log.exception("journal write of kill_done failed trigger_id=%s", trigger.id)

    def _forget_old_kills(self) -> None:
        finished = [t for t, k in self.kills.items() if k.finished.is_set()]
        for trigger_id in finished[: max(0, len(finished) - KILLS_KEPT)]:
            del self.kills[trigger_id]

    async def _run_account(self, kill: Kill, account: Account, *, fast: bool) -> None:
        result = kill.accounts[account.ref]
        result.state = AccountState.RUNNING
        guard_s = max(0.0, kill.deadline - self._clock()) + _GUARD_S
        try:
            async with asyncio.timeout(guard_s):
                await self._account_waves(kill, account, result, fast=fast)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.error(
                "kill account overran its deadline kill_id=%s account=%s", kill.id, account.ref
            )
            result.state = AccountState.FAILED
        except _AccountStopped as stop:
            result.state = AccountState.STOPPED
            result.error = stop.error.to_json()
            if result.still_open is None:
                # Never verified: report what we last knew to be open, marked unverified.
                left = tuple(o for o in result.known.values() if o.key not in result.cancelled)
                result.still_open = Snapshot(left)
            self._alarm(kill, account.ref, stop.error)
        except _DeadlinePassed:
            result.state = AccountState.FAILED
        except Exception as exc:  # a bug on one account must not stop the others
            log.exception("kill account crashed kill_id=%s account=%s", kill.id, account.ref)
            result.state = AccountState.FAILED
            result.error = {"kind": type(exc).__name__}
            self._emit("alarm", kill_id=kill.id, account=str(account.ref), error=result.error)
        if result.state is not AccountState.FLAT and account.not_ready is not None:
            result.not_ready = account.not_ready()

    async def _account_waves(
        self, kill: Kill, account: Account, result: AccountResult, *, fast: bool
    ) -> None:
        scope = kill.scope
        caps = account.exchange.capabilities
        tracked: Snapshot | None = None
        if account.tracker is not None and account.tracker.trusted:
            tracked = in_scope(scope, account.tracker.as_snapshot())
            self._remember(result, tracked)
        first: list[CancelRequest] = []
        if fast:
            first = _biggest_first(plan(scope, tracked, None, account.symbols, caps), tracked)
        wave_no = result.waves + 1
        rest = first
        if first and self._gate(account).mode != "open":
            # The probe goes alone, and it is the cancel that covers the most orders.
            await self._wave(kill, account, result, first[:1], wave_no)
            rest = first[1:]
        snap_task = asyncio.ensure_future(self._read(kill, account, result, tracked))
        wave1 = asyncio.ensure_future(self._wave(kill, account, result, rest, wave_no))
        try:
            snapshot = await snap_task
        except asyncio.CancelledError:
            wave1.cancel()
            with contextlib.suppress(asyncio.CancelledError, _AccountStopped):
                await wave1
            raise
        except (_AccountStopped, _DeadlinePassed):
            # Cancels already on their way still count: let them land before reporting.
            with contextlib.suppress(_AccountStopped):
                await wave1
            raise
        extra = [] if snapshot.empty else plan(scope, None, snapshot, (), caps, already=first)
        await _together(wave1, self._wave(kill, account, result, extra, wave_no))
        if result.waves == 0:
            # What was open at the first look: the snapshot may have been read after the
            # first cancels landed, so their acknowledgements count too.
            seen = {o.key for o in snapshot.orders} | result.cancelled
            seen |= {o.key for o in (tracked or Snapshot()).orders}
            result.orders_before = len(seen)
            lists = {x.list_id for x in snapshot.lists} | result.lists_cancelled
            lists |= {x.list_id for x in (tracked or Snapshot()).lists}
            result.lists_before = len(lists)
        if first or extra:
            result.waves = wave_no
        # A one-shot cancel is about what was open when it looked: orders placed after its
        # first look are not its business, and its later waves cancel by id only.
        targets: set[OrderKey] | None = None
        target_lists: set[str] = set()
        if kill.mode is Mode.CANCEL:
            targets = set(result.known) | result.cancelled
            target_lists = {x.list_id for x in snapshot.lists} | result.lists_cancelled
            target_lists |= {x.list_id for x in (tracked or Snapshot()).lists}
            scope = Scope(client_order_id_prefix="")  # matches every item: plans by id
        # With nothing sent, the snapshot already is the verification.
        verify: Snapshot | None = snapshot if not first and not extra else None
        idle = 0
        while True:
            if verify is None:
                verify = await self._read(kill, account, result, None)
            if targets is not None:
                verify = _only(verify, targets, target_lists)
            result.still_open = verify
            result.verified = verify.complete
            if verify.proves_flat:
                result.state = AccountState.FLAT
                if result.flat_ms is None:
                    result.flat_ms = (self._clock() - kill.started) * 1000
                return
            self._check_deadline(kill)
            requests = plan(scope, None, verify, (), caps)
            verify = None
            if not requests:
                # A read that may have been cut short showed nothing to cancel: it proves
                # nothing, so look again (after a pause) until it is complete or time is up.
                idle += 1
                cap = min(self.config.retry_max_s, self.config.retry_initial_s * 2**idle)
                await self._sleep(self._rng.uniform(0.0, cap))
                continue
            result.waves += 1
            await self._wave(kill, account, result, requests, result.waves)

    async def _wave(
        self,
        kill: Kill,
        account: Account,
        result: AccountResult,
        requests: Sequence[CancelRequest],
        wave: int,
    ) -> None:
        if not requests:
            return
        if kill.kind != "stream":
            self._emit(
                "wave",
                kill_id=kill.id,
                account=str(account.ref),
                wave=wave,
                requests=len(requests),
            )
        outcomes = await asyncio.gather(*(self._send(kill, account, result, r) for r in requests))
        for outcome in outcomes:
            if isinstance(outcome.error, Fatal):
                raise _AccountStopped(outcome.error)

    async def _read(
        self, kill: Kill, account: Account, result: AccountResult, tracked: Snapshot | None
    ) -> Snapshot:
        """Snapshot the account in scope, retried per the taxonomy until the deadline."""
        symbols = self._snapshot_symbols(kill.scope, account, result)

        async def once() -> Snapshot:
            return await self._gate(account).run(lambda: account.exchange.snapshot(symbols))

        try:
            snap = await self._retrying(kill, result, once)
        except Fatal as exc:
            raise _AccountStopped(exc) from exc
        except VenueError as exc:
            result.error = exc.to_json()
            if result.still_open is None:
                result.still_open = tracked or Snapshot(tuple(result.known.values()))
            raise _DeadlinePassed from exc
        filtered = in_scope(kill.scope, snap)
        self._remember(result, filtered)
        return filtered

    def _snapshot_symbols(
        self, scope: Scope, account: Account, result: AccountResult
    ) -> list[str] | None:
        """The symbols to read: None for all (where the venue can), else every symbol in scope
        we know the venue's name of (configured, tracked, seen in this kill)."""
        known = set(account.symbols) | {o.symbol for o in result.known.values()}
        if account.tracker is not None:
            known |= account.tracker.as_snapshot().symbols()
        wanted = sorted(s for s in known if scope.covers_symbol(s))
        if account.exchange.capabilities.open_orders_without_symbol:
            # A symbol-scoped kill reads just its symbols, when we know the venue's name for
            # each of them: an all-symbols read may be capped by orders out of scope.
            named = {canonical_symbol(s) for s in wanted}
            if scope.symbols and named >= scope.symbols:
                return wanted
            return None
        return wanted

    def _remember(self, result: AccountResult, snapshot: Snapshot) -> None:
        for order in snapshot.orders:
            result.known.setdefault(order.key, order)

    def _check_deadline(self, kill: Kill) -> None:
        if self._clock() >= kill.deadline:
            raise _DeadlinePassed

    async def _send(
        self, kill: Kill, account: Account, result: AccountResult, request: CancelRequest
    ) -> _Outcome:
        """Send one planned request with retries; return its outcome (never raises VenueError)."""
        started = self._clock()
        attempts = 0
        current: CancelRequest | None = request
        reread = False
        cancelled = 0
        limited = 0
        verified = False

        async def once() -> CancelAck | None:
            nonlocal attempts, current, reread, cancelled, verified, limited
            attempts += 1
            if attempts > 1:
                result.retries += 1
            if reread:
                assert current is not None
                current, gone = await self._narrow(kill, account, result, current)
                cancelled += gone
                reread = False
                if current is None:
                    verified = True
                    return None
            assert current is not None
            result.requests += 1
            try:
                request_now = current
                ack = await self._gate(account).run(
                    lambda: self._call(account.exchange, request_now)
                )
            except OutcomeUnknown:
                reread = True
                raise
            except RateLimited as exc:
                result.rate_limited += 1
                limited += 1
                if isinstance(exc, IpBanned):
                    self._alarm(kill, account.ref, exc)
                raise
            except _BatchPartial as partial:
                cancelled += self._count(result, partial.ack)
                current = partial.rest
                raise partial.error from None
            cancelled += self._count(result, ack)
            return ack

        outcome: _Outcome
        try:
            await self._retrying(kill, result, once)
            outcome = _Outcome("verified" if verified else "ok", cancelled, attempts)
        except AlreadyGone:
            outcome = _Outcome("gone", cancelled, attempts)
        except VenueError as exc:
            outcome = _Outcome(exc.kind, cancelled, attempts, exc)
        if outcome.result in ("ok", "gone", "verified") and kill.first_cancel_ms is None:
            kill.first_cancel_ms = (self._clock() - kill.started) * 1000
        if outcome.result in ("ok", "gone", "verified") and result.first_cancel_ms is None:
            result.first_cancel_ms = (self._clock() - kill.started) * 1000
        self._emit(
            "outcome",
            kill_id=kill.id,
            account=str(account.ref),
            venue=account.ref.venue,
            request=request.kind.value,
            symbols=list(request.symbols),
            ids=len(request.order_ids),
            result=outcome.result,
            cancelled=outcome.cancelled,
            attempts=outcome.attempts,
            rate_limited=limited,
            duration_ms=round((self._clock() - started) * 1000, 3),
            error=outcome.error.to_json() if outcome.error is not None else None,
        )
        return outcome

    async def _narrow(
        self, kill: Kill, account: Account, result: AccountResult, request: CancelRequest
    ) -> tuple[CancelRequest | None, int]:
        """After an unknown outcome: re-read the venue; return what is still to send, if any,
        and how many orders the request was meant to cancel are gone now."""
        symbols = list(request.symbols) if request.symbols else None
        caps = account.exchange.capabilities
        if symbols is None and not caps.open_orders_without_symbol:
            symbols = self._snapshot_symbols(kill.scope, account, result)
        snap = in_scope(
            kill.scope,
            await self._gate(account).run(lambda: account.exchange.snapshot(symbols)),
        )
        open_keys = {o.key for o in snap.orders}
        open_lists = {x.list_id for x in snap.lists}
        gone = self._coverage(result, request) - open_keys - result.cancelled
        result.cancelled.update(gone)
        kind = request.kind
        if kind is RequestKind.CANCEL_ALL:
            left = tuple(s for s in request.symbols if s in snap.symbols())
            return (CancelRequest(kind, symbols=left) if left else None), len(gone)
        if kind is RequestKind.CANCEL_ALL_ACCOUNT:
            # Lists the venue's cancel-all does not cover have requests of their own.
            covers_lists = caps.cancel_all_covers_lists
            rest = [o for o in snap.orders if covers_lists or o.list_id is None]
            return (request if rest else None), len(gone)
        if kind is RequestKind.CANCEL_LIST:
            return (request if request.list_id in open_lists else None), len(gone)
        symbol = request.symbols[0] if request.symbols else ""
        ids = tuple(i for i in request.order_ids if (symbol, i) in open_keys)
        if not ids:
            return None, len(gone)
        if len(ids) == 1:
            return CancelRequest(RequestKind.CANCEL_ORDER, request.symbols, ids), len(gone)
        return CancelRequest(kind, request.symbols, ids), len(gone)

    def _coverage(self, result: AccountResult, request: CancelRequest) -> set[OrderKey]:
        if request.order_ids:
            symbol = request.symbols[0] if request.symbols else ""
            return {(symbol, i) for i in request.order_ids}
        if request.kind is RequestKind.CANCEL_ALL:
            wanted = set(request.symbols)
            return {o.key for o in result.known.values() if o.symbol in wanted}
        if request.kind is RequestKind.CANCEL_ALL_ACCOUNT:
            return set(result.known)
        return {o.key for o in result.known.values() if o.list_id == request.list_id}

    def _count(self, result: AccountResult, ack: CancelAck) -> int:
        fresh = [i for i in ack.cancelled if i not in result.cancelled]
        result.cancelled.update(ack.cancelled)
        result.lists_cancelled.update(ack.lists_cancelled)
        return len(fresh)

    async def _call(self, exchange: Exchange, request: CancelRequest) -> CancelAck:
        kind = request.kind
        if kind is RequestKind.CANCEL_ALL:
            return await exchange.cancel_all(list(request.symbols))
        if kind is RequestKind.CANCEL_ALL_ACCOUNT:
            return await exchange.cancel_all(None)
        if kind is RequestKind.CANCEL_LIST:
            assert request.list_id is not None
            return await exchange.cancel_order_list(request.symbols[0], request.list_id)
        if kind is RequestKind.CANCEL_ORDER:
            return await exchange.cancel_order(request.symbols[0], request.order_ids[0])
        symbol = request.symbols[0]
        batch = await exchange.cancel_orders(symbol, list(request.order_ids))
        ack = CancelAck(cancelled=tuple((symbol, i) for i in batch.cancelled + batch.gone))
        if not batch.failed:
            return ack
        failed_ids = tuple(i for i, _ in batch.failed)
        errors = [e for _, e in batch.failed]
        worst = next((e for e in errors if isinstance(e, Fatal)), None) or errors[0]
        if all(isinstance(e, AlreadyGone) for e in errors):
            return CancelAck(cancelled=ack.cancelled + tuple((symbol, i) for i in failed_ids))
        rest = CancelRequest(
            RequestKind.CANCEL_ORDERS if len(failed_ids) > 1 else RequestKind.CANCEL_ORDER,
            request.symbols,
            failed_ids,
        )
        raise _BatchPartial(ack, rest, worst)

    async def _retrying(
        self, kill: Kill, result: AccountResult, fn: Callable[[], Awaitable[T]]
    ) -> T:
        skew_streak = 0

        def wait(state: RetryCallState) -> float:
            nonlocal skew_streak
            assert state.outcome is not None
            exc = state.outcome.exception()
            remaining = max(0.0, kill.deadline - self._clock())
            if isinstance(exc, ClockSkew) and skew_streak < self.config.clock_skew_retries:
                skew_streak += 1
                return 0.0
            if isinstance(exc, RateLimited):
                # The connector's budget blocks for the same period; sleeping it here as well
                # costs nothing (the two waits overlap) and holds even for a connector that
                # did not block.
                return min(exc.retry_after_s, remaining)
            cap = min(
                self.config.retry_max_s,
                self.config.retry_initial_s * 2 ** (state.attempt_number - 1),
            )
            return min(self._rng.uniform(0.0, cap), remaining)

        def stop(state: RetryCallState) -> bool:
            assert state.outcome is not None
            exc = state.outcome.exception()
            remaining = kill.deadline - self._clock()
            if remaining <= 0:
                return True
            return isinstance(exc, IpBanned) and exc.retry_after_s >= remaining

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception(_retriable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _gate(self, account: Account) -> _Gate:
        gate = self._gates.get(account.ref)
        if gate is None:
            gate = self._gates[account.ref] = _Gate(self.config, self._clock)
        return gate

    def _alarm(self, kill: Kill, ref: AccountRef, error: VenueError) -> None:
        log.error("kill account stopped kill_id=%s account=%s error=%s", kill.id, ref, error)
        self._emit("alarm", kill_id=kill.id, account=str(ref), error=error.to_json())

    # -- latched: streams, sweeps, dead-man's switch ----------------------------------------------
    def _latch_covering(self, ref: AccountRef, event: OrderEvent) -> Scope | None:
        for scope in self._latches.values():
            if scope.covers_account(ref) and scope.covers_order(event):
                return scope
        return None

    async def _drain_stream(self, account: Account, scope: Scope) -> None:
        ref = account.ref
        pending = self._stream_pending.setdefault(ref, {})
        while pending:
            items = list(pending.values())
            pending.clear()
            now = self._clock()
            kill = Kill(
                f"stream-{next(self._ids)}",
                "stream",
                scope,
                Mode.KILL,
                [],
                now,
                now + self.config.deadline_s,
            )
            result = kill.accounts.setdefault(ref, AccountResult(ref))
            orders = tuple(i for i in items if isinstance(i, Order))
            lists = tuple(i for i in items if isinstance(i, OrderList))
            # Cancel exactly what the stream showed, by id: a cancel-all here could race a
            # wave and costs more than the few orders a stream burst brings. Every item was
            # matched against a latched scope when it was queued; the empty prefix only makes
            # the planner cancel by id.
            by_id = Scope(client_order_id_prefix="")
            requests = plan(by_id, Snapshot(orders, lists), None, (), account.exchange.capabilities)
            self._emit(
                "stream_cancel",
                account=str(ref),
                orders=[{"symbol": o.symbol, "order_id": o.order_id} for o in orders],
                lists=[x.list_id for x in lists],
            )
            try:
                await self._wave(kill, account, result, requests, 0)
            except asyncio.CancelledError:
                raise
            except _AccountStopped as stop:
                self._alarm(kill, ref, stop.error)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            if self._stopping:
                return
            await self.sweep()

    async def sweep(self) -> list[Kill]:
        """Re-sweep every latched scope not already being killed; return the sweeps started."""
        started: list[Kill] = []
        for scope in _widest(self._latches.values()):
            if any(k.scope.contains(scope) for k in self._running if k.kind != "stream"):
                continue
            started.append(self._launch(None, scope, kind="sweep"))
        if started:
            await asyncio.gather(*(k.finished.wait() for k in started))
        return started

    def _sweep_counts(self, kill: Kill) -> dict[str, object]:
        return {
            "accounts": {
                str(r.ref): {
                    "found": r.orders_before + r.lists_before,
                    "cancelled": len(r.cancelled),
                }
                for r in kill.accounts.values()
            }
        }

    async def _dms_loop(self, account: Account) -> None:
        timeout_s = account.dead_mans_switch_s
        low, high = account.exchange.capabilities.dead_mans_switch_range_s or (timeout_s, timeout_s)
        timeout_s = max(low, min(high, timeout_s))
        ref = account.ref
        while True:
            if self._healthy():
                try:
                    state = await account.exchange.arm_dead_mans_switch(timeout_s)
                except asyncio.CancelledError:
                    raise
                except VenueError as exc:
                    log.warning("dead man's switch arm failed account=%s error=%s", ref, exc)
                    if self._dms_state.get(ref) != "failed":
                        self._emit(
                            "alarm",
                            account=str(ref),
                            dead_mans_switch="arm failed",
                            error=exc.to_json(),
                        )
                    self._dms_state[ref] = "failed"
                else:
                    if self._dms_state.get(ref) != "armed":
                        self._emit("dms", account=str(ref), armed=state.active, timeout_s=timeout_s)
                    self._dms_state[ref] = "armed" if state.active else "off"
            elif self._dms_state.get(ref) == "armed":
                log.warning("dead man's switch left to expire: daemon unhealthy account=%s", ref)
                self._dms_state[ref] = "expiring"
                self._emit("dms", account=str(ref), armed=False, reason="unhealthy")
            await asyncio.sleep(timeout_s / 3)

    # -- plumbing ---------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task died name=%s error=%r", task.get_name(), task.exception())

    def _stream_done(self, ref: AccountRef, task: asyncio.Task[None]) -> None:
        self._stream_tasks.pop(ref, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("stream cancel task died account=%s error=%r", ref, task.exception())

    def _emit(self, event_type: str, **fields: object) -> EventRecord:
        record = make_event(event_type, **fields)
        self.events.emit(record)
        return record


class _BatchPartial(Exception):
    """A batch cancel where some ids failed: count what went, retry the rest."""

    def __init__(self, ack: CancelAck, rest: CancelRequest, error: VenueError) -> None:
        super().__init__(str(error))
        self.ack = ack
        self.rest = rest
        self.error = error


def _biggest_first(requests: list[CancelRequest], tracked: Snapshot | None) -> list[CancelRequest]:
    """Order requests by how many known orders each covers, most first."""
    if tracked is None:
        return requests
    per_symbol: dict[str, int] = {}
    for order in tracked.orders:
        per_symbol[order.symbol] = per_symbol.get(order.symbol, 0) + 1

    def weight(request: CancelRequest) -> int:
        if request.kind is RequestKind.CANCEL_ALL_ACCOUNT:
            return len(tracked.orders) + 1
        if request.order_ids:
            return len(request.order_ids)
        return sum(per_symbol.get(sym, 0) for sym in request.symbols)

    return sorted(requests, key=weight, reverse=True)


async def _together(*aws: Awaitable[None]) -> None:
    """Await all; when one fails, cancel the others, wait for them, and raise its error."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def _only(snapshot: Snapshot, keys: set[OrderKey], list_ids: set[str]) -> Snapshot:
    """The part of `snapshot` made of the given orders and lists."""
    return Snapshot(
        orders=tuple(o for o in snapshot.orders if o.key in keys),
        lists=tuple(x for x in snapshot.lists if x.list_id in list_ids),
        server_time_ms=snapshot.server_time_ms,
        complete=snapshot.complete,
    )


def _with_received(trigger: Trigger, now_ms: int) -> Trigger:
    return Trigger(
        id=trigger.id,
        source=trigger.source,
        mode=trigger.mode,
        reason=trigger.reason,
        scope=trigger.scope,
        created_ms=trigger.created_ms,
        received_ms=now_ms,
        actor=trigger.actor,
    )


def _widest(scopes: Iterable[Scope]) -> list[Scope]:
    """Drop every scope another one contains."""
    unique = list(dict.fromkeys(scopes))
    return [s for s in unique if not any(o is not s and o.contains(s) and o != s for o in unique)]
