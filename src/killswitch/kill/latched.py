"""While latched: cancel what a stream shows at once, sweep each latched account on time, and
keep the venues' dead-man's switch armed.

Each periodic sweep is a kill of its own over one account (`Engine.sweep`); `SweepsDue` says
which are due.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from killswitch.events import EventType
from killswitch.exchanges.base import VenueError
from killswitch.kill.config import Account, Emit, EngineConfig, Runtime, Sleep
from killswitch.kill.planner import plan
from killswitch.kill.record import AccountResult, AccountState, Kill, KillKind
from killswitch.kill.waves import Waves, _AccountStopped
from killswitch.model import (
    AccountRef,
    ExecType,
    ListEvent,
    Mode,
    Order,
    OrderEvent,
    OrderList,
    Scope,
    Snapshot,
)

log = logging.getLogger(__name__)

MAX_STREAM_BATCHES = 3  # stream-cancel batches in flight per account (`StreamCancels._start_drain`)


class StreamCancels:
    """Cancel, by id, every new open order or list a stream shows inside a latched scope."""

    def __init__(
        self,
        accounts: dict[AccountRef, Account],
        latches: dict[str, Scope],
        running: set[Kill],
        waves: Waves,
        config: EngineConfig,
        run: Runtime,
        ids: itertools.count[int],
    ) -> None:
        self.accounts = accounts
        self._latches = latches  # the engine's: read, never changed here
        self._running = running  # the engine's: kills whose quiet window a new order resets
        self._waves = waves
        self.config = config
        self._clock = run.clock
        self._emit = run.emit
        self._ids = ids
        self._stream_pending: dict[AccountRef, dict[str, Order | OrderList]] = {}
        self._stream_recent: dict[AccountRef, dict[str, float]] = {}
        # Each account's drains, each with the batch it is sending (None: not run yet; it will
        # take everything pending that no other batch holds).
        self._drains: dict[
            AccountRef, dict[asyncio.Task[None], list[Order | OrderList] | None]
        ] = {}
        self._drain_ids = itertools.count(1)
        self.closed = False  # the engine's stop grace is over: no drain starts

    @property
    def tasks(self) -> dict[str, asyncio.Task[None]]:
        """Every stream-cancel drain in flight, by task name (for the engine's stop and idle)."""
        return {t.get_name(): t for drains in self._drains.values() for t in drains}

    def on_event(self, ref: AccountRef, event: OrderEvent | ListEvent) -> None:
        """A stream saw an order change: cancel new open orders in a latched scope at once."""
        if not event.is_open:
            return
        account = self.accounts.get(ref)
        if account is None:
            return
        if isinstance(event, OrderEvent):
            if event.exec_type in (ExecType.NEW, ExecType.REPLACED):
                for kill in self._running:
                    wide = kill.scope
                    if wide.covers_account(ref) and (
                        wide.covers_order(event) or wide.undecided(event)
                    ):
                        kill.new_orders_seen += 1  # an order that may be in scope: not quiet
            scope = self._latch_covering(ref, event)
            if scope is None:
                return
            item: Order | OrderList = event.to_order()
        else:
            order_list = OrderList(
                symbol=event.symbol,
                list_id=event.list_id,
                list_client_order_id=event.list_client_order_id,
                order_ids=event.order_ids,
            )
            for kill in self._running:
                if kill.scope.covers_account(ref) and kill.scope.covers_list(order_list):
                    # a new list in scope (its legs may carry ids of the venue's own, out of a
                    # prefix scope): not quiet (review 51)
                    kill.new_orders_seen += 1
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
        key = _key(item)
        recent = self._stream_recent.setdefault(ref, {})
        now = self._clock()
        if key in recent and now - recent[key] < self.config.deadline_s:
            return
        recent[key] = now
        if len(recent) > 10_000:
            for old in [k for k, t in recent.items() if now - t >= self.config.deadline_s]:
                del recent[old]
        self._stream_pending.setdefault(ref, {})[key] = item
        self._start_drain(account)

    def _start_drain(self, account: Account) -> None:
        """Start a drain for what is pending, unless one that has not run yet will take it, or
        the account has `MAX_STREAM_BATCHES` drains (then the first to end its batch takes it).

        A batch runs until every request in it is answered or out of time: a cancel the venue
        keeps failing is retried until the stream kill's deadline (`deadline_s`). An order the
        stream shows meanwhile goes at once in a batch of its own (review 55: it waited behind
        the failing one for up to `deadline_s`). The cap bounds what stream cancels retrying
        on a failing venue take from the account's budget, which the kill's waves and sweeps
        share: every request still passes the account's gate and the connector's budget, but
        each stuck batch re-reads and re-sends until its deadline, so many of them would crowd
        out the sweep. Three lanes let new orders through while one or two symbols fail; when
        the whole account fails, more lanes would only mean more retries."""
        ref = account.ref
        drains = self._drains.get(ref, {})
        if self.closed or len(drains) >= MAX_STREAM_BATCHES:
            return
        if any(b is None for b in drains.values()):
            return
        held = self._held(ref, None)
        pending = self._stream_pending.get(ref, {})
        if not any(_holds(item).isdisjoint(held) for item in pending.values()):
            return  # all in flight: each batch takes what it held back when it ends
        name = f"stream cancels {ref} #{next(self._drain_ids)}"
        task = asyncio.get_running_loop().create_task(self._drain_stream(account), name=name)
        self._drains.setdefault(ref, {})[task] = None
        task.add_done_callback(functools.partial(self._stream_done, ref))

    def released(self) -> None:
        """A reset released latches. A stream cancel may be waiting at the account's gate,
        for its venue budget, or to be sent again after an unknown outcome: every drain stops
        now, before it sends for a released latch, and what a latch still covers of its batch
        is drained again."""
        for ref, drains in list(self._drains.items()):
            del self._drains[ref]
            pending = self._stream_pending.setdefault(ref, {})
            for task, batch in drains.items():
                task.cancel()
                for item in batch or ():
                    if self._latched(ref, item):
                        pending.setdefault(_key(item), item)
            if pending:
                self._start_drain(self.accounts[ref])

    def _held(self, ref: AccountRef, besides: asyncio.Task[None] | None) -> set[str]:
        """What the account's batches (but `besides`'s) are cancelling: never sent twice at
        once."""
        held: set[str] = set()
        for task, batch in self._drains.get(ref, {}).items():
            if task is not besides:
                for item in batch or ():
                    held |= _holds(item)
        return held

    def _latch_covering(self, ref: AccountRef, event: OrderEvent) -> Scope | None:
        for scope in self._latches.values():
            if scope.covers_account(ref) and scope.covers_order(event):
                return scope
        return None

    def _latched(self, ref: AccountRef, item: Order | OrderList) -> bool:
        for scope in self._latches.values():
            if not scope.covers_account(ref):
                continue
            if isinstance(item, Order) and scope.covers_order(item):
                return True
            if isinstance(item, OrderList) and scope.covers_list(item):
                return True
        return False

    async def _drain_stream(self, account: Account) -> None:
        ref = account.ref
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._drain_batches(account, task)
        finally:
            # Gone from the drains before any other code runs: an event from now on starts a
            # new drain (the done callback would come a loop turn later, and strand it).
            self._forget(ref, task)

    async def _drain_batches(self, account: Account, task: asyncio.Task[None]) -> None:
        ref = account.ref
        pending = self._stream_pending.setdefault(ref, {})
        while (drains := self._drains.get(ref)) is not None and task in drains:
            # Only what a latch still covers: a reset may have come while the last batch ran.
            # What another batch is cancelling stays pending: that batch takes it when it ends.
            held = self._held(ref, task)
            items: list[Order | OrderList] = []
            for key, item in list(pending.items()):
                if not self._latched(ref, item):
                    del pending[key]
                elif _holds(item).isdisjoint(held):
                    del pending[key]
                    items.append(item)
            if not items:
                break
            drains[task] = items
            now = self._clock()
            # Cancel exactly what the stream showed, by id: a cancel-all here could race a
            # wave and costs more than the few orders a stream burst brings. Every item was
            # matched against a latch when it was queued, and a reset stops the drains
            # (`released`). The empty prefix covers every item, of whichever
            # latch: the planner cancels by id, and a re-read after an unknown outcome keeps
            # each of them in view.
            by_id = Scope(client_order_id_prefix="")
            kill = Kill(
                f"stream-{next(self._ids)}",
                KillKind.STREAM,
                by_id,
                Mode.KILL,
                [],
                now,
                now + self.config.deadline_s,
            )
            result = kill.accounts.setdefault(ref, AccountResult(ref))
            orders = tuple(i for i in items if isinstance(i, Order))
            lists = tuple(i for i in items if isinstance(i, OrderList))
            requests = plan(by_id, Snapshot(orders, lists), None, (), account.exchange.capabilities)
            self._emit(
                EventType.STREAM_CANCEL,
                account=str(ref),
                orders=[{"symbol": o.symbol, "order_id": o.order_id} for o in orders],
                lists=[x.list_id for x in lists],
            )
            try:
                await self._waves.wave(kill, account, result, requests, 0)
            except asyncio.CancelledError:
                raise
            except _AccountStopped as stop:
                self._waves.alarm(kill, ref, stop.error)
            # Sent: next, what this batch held back and what came while every lane was busy.
            drains[task] = []

    def _forget(self, ref: AccountRef, task: asyncio.Task[None]) -> None:
        drains = self._drains.get(ref)
        if drains is not None:
            drains.pop(task, None)
            if not drains:
                del self._drains[ref]

    def _stream_done(self, ref: AccountRef, task: asyncio.Task[None]) -> None:
        self._forget(ref, task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stream cancel task died account=%s error=%r", ref, task.exception())


class DeadMansSwitches:
    """Keep each account's venue-side cancel-all timer armed while the daemon is healthy."""

    def __init__(
        self,
        *,
        emit: Emit,
        healthy: Callable[[], bool],
        sleep: Sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._emit = emit
        self._healthy = healthy
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.state: dict[AccountRef, str] = {}
        self.armed_s: dict[AccountRef, int] = {}  # accounts armed at least once: the timeout

    async def keep(self, account: Account) -> None:
        """Arm the account's switch every third of its timeout while healthy; else let it lapse."""
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
                    if self.state.get(ref) != "failed":
                        self._emit(
                            EventType.ALARM,
                            account=str(ref),
                            dead_mans_switch="arm failed",
                            error=exc.to_json(),
                        )
                    self.state[ref] = "failed"
                else:
                    if self.state.get(ref) != "armed":
                        self._emit(
                            EventType.DMS, account=str(ref), armed=state.active, timeout_s=timeout_s
                        )
                    self.state[ref] = "armed" if state.active else "off"
                    if state.active:
                        self.armed_s[ref] = timeout_s
                    else:
                        self.armed_s.pop(ref, None)
            elif self.state.get(ref) == "armed":
                log.warning("dead man's switch left to expire: daemon unhealthy account=%s", ref)
                self.state[ref] = "expiring"
                self._emit(EventType.DMS, account=str(ref), armed=False, reason="unhealthy")
            # A fifth of jitter: replicas (and accounts) re-arming in step would spend the
            # venue's 1/s per account and 2/s per IP together (review 46).
            await self._sleep(timeout_s / 3 * self._rng.uniform(0.8, 1.0))

    def left_armed(self, accounts: Iterable[Account]) -> None:
        """At a stop: say which switches are left to fire (review 95: a graceful stop flattened
        an account with no kill, and nothing said it would): each armed once, whatever came
        since (an arm that failed after may have landed; one left to expire still fires)."""
        for account in accounts:
            timeout_s = self.armed_s.get(account.ref)
            if timeout_s is not None:
                log.warning(
                    "dead man's switch left armed account=%s: the venue cancels every order on "
                    "the account within %d s of its last arm unless a daemon re-arms it",
                    account.ref,
                    timeout_s,
                )


class SweepsDue:
    """Which sweeps are due: each latched scope on each account it covers, one per account,
    so a slow or hung venue holds up its own account's sweep and no other."""

    def __init__(
        self, accounts: dict[AccountRef, Account], latches: dict[str, Scope], running: set[Kill]
    ) -> None:
        self.accounts = accounts
        self._latches = latches  # the engine's: read, never changed here
        self._running = running  # the engine's

    def due(self) -> list[Scope]:
        """The scopes to sweep now, each narrowed to one account (then the widest of those:
        two latches may narrow to one scope on an account)."""
        due: list[Scope] = []
        for ref in self.accounts:
            narrowed = [
                replace(scope, venues=frozenset({ref.venue}), accounts=frozenset({ref.account}))
                for scope in self._latches.values()
                if scope.covers_account(ref)
            ]
            due += [s for s in _widest(narrowed) if not self._busy(s, ref)]
        return due

    def _busy(self, scope: Scope, ref: AccountRef) -> bool:
        """Not due: a sweep of the account still runs, or a latched kill over the scope is
        still in its waves there. A one-shot cancel, a kill already flat there (waiting for
        its other accounts, or in its quiet window) does not hold it up."""
        for kill in self._running:
            if kill.kind is KillKind.STREAM or kill.mode is not Mode.KILL or kill.done.is_set():
                continue
            if not kill.scope.covers_account(ref):
                continue
            if kill.kind is KillKind.SWEEP:
                return True
            result = kill.accounts.get(ref)
            in_waves = result is None or result.state is AccountState.RUNNING
            if kill.scope.contains(scope) and in_waves:
                return True
        return False


def _widest(scopes: Iterable[Scope]) -> list[Scope]:
    """Drop every scope another one contains."""
    unique = list(dict.fromkeys(scopes))
    return [s for s in unique if not any(o is not s and o.contains(s) and o != s for o in unique)]


def _holds(item: Order | OrderList) -> set[str]:
    """The keys a cancel of `item` may cancel: an order, its list; a list, its legs."""
    if isinstance(item, Order):
        if item.list_id is None:
            return {_key(item)}
        return {_key(item), f"l:{item.symbol}:{item.list_id}"}
    return {_key(item), *(f"o:{item.symbol}:{leg}" for leg in item.order_ids)}


def _key(item: Order | OrderList) -> str:
    """A stream item's key in the pending and recent maps."""
    if isinstance(item, Order):
        return f"o:{item.symbol}:{item.order_id}"
    return f"l:{item.symbol}:{item.list_id}"
