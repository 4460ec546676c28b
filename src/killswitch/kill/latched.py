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
        self.tasks: dict[AccountRef, asyncio.Task[None]] = {}
        self._batches: dict[AccountRef, list[Order | OrderList]] = {}  # each drain's batch

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
        if ref not in self.tasks:
            self._start_drain(account)

    def _start_drain(self, account: Account) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_stream(account))
        self.tasks[account.ref] = task
        task.add_done_callback(functools.partial(self._stream_done, account.ref))

    def released(self) -> None:
        """A reset released latches. A stream cancel may be waiting at the account's gate,
        for its venue budget, or to be sent again after an unknown outcome: every drain stops
        now, before it sends for a released latch, and what a latch still covers of its batch
        is drained again."""
        for ref, task in list(self.tasks.items()):
            del self.tasks[ref]
            task.cancel()
            pending = self._stream_pending.setdefault(ref, {})
            for item in self._batches.pop(ref, []):
                if self._latched(ref, item):
                    pending.setdefault(_key(item), item)
            if pending:
                self._start_drain(self.accounts[ref])

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
        try:
            await self._drain_batches(account)
        finally:
            # Gone from `tasks` before any other code runs: an event from now on starts a new
            # drain (the done callback would come a loop turn later, and strand it).
            if self.tasks.get(ref) is asyncio.current_task():
                del self.tasks[ref]
                self._batches.pop(ref, None)

    async def _drain_batches(self, account: Account) -> None:
        ref = account.ref
        pending = self._stream_pending.setdefault(ref, {})
        while pending:
            # Only what a latch still covers: a reset may have come while the last batch ran.
            items = [i for i in pending.values() if self._latched(ref, i)]
            pending.clear()
            if not items:
                break
            self._batches[ref] = items
            now = self._clock()
            # Cancel exactly what the stream showed, by id: a cancel-all here could race a
            # wave and costs more than the few orders a stream burst brings. Every item was
            # matched against a latch when it was queued, and a reset stops the drain
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

    def _stream_done(self, ref: AccountRef, task: asyncio.Task[None]) -> None:
        if self.tasks.get(ref) is task:
            del self.tasks[ref]
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
            elif self.state.get(ref) == "armed":
                log.warning("dead man's switch left to expire: daemon unhealthy account=%s", ref)
                self.state[ref] = "expiring"
                self._emit(EventType.DMS, account=str(ref), armed=False, reason="unhealthy")
            # A fifth of jitter: replicas (and accounts) re-arming in step would spend the
            # venue's 1/s per account and 2/s per IP together (review 46).
            await self._sleep(timeout_s / 3 * self._rng.uniform(0.8, 1.0))


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


def _key(item: Order | OrderList) -> str:
    """A stream item's key in the pending and recent maps."""
    if isinstance(item, Order):
        return f"o:{item.symbol}:{item.order_id}"
    return f"l:{item.symbol}:{item.list_id}"
