"""The kill engine: accept triggers, journal and latch, run kills, verify flat, sweep, reset.

The engine owns every state change and does no I/O of its own beyond the journal: it talks to
venues through `Exchange` connectors (`kill.waves`) and tells the world through `events`.

    submit(trigger) -> journal (fsync) -> latch (mode kill) -> kill task in the background
    kill: every account in scope concurrently (`kill.waves`), to flat or failed
        quiet    mode kill: still flat after `quiet_window_s` with no new order seen: CONFIRMED
    latched: new orders seen on a stream in scope are cancelled at once (`kill.latched`); the
             scopes are swept every `sweep_interval_s`; a restart resumes latched and
             unfinished kills before `start()` returns (so before READY). Reset is explicit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

from killswitch.events import EventRecord, EventType, FanOut, make_event
from killswitch.journal import Journal, remember_newest
from killswitch.kill.config import Account, Clock, EngineConfig, Runtime, Sleep, Spawn
from killswitch.kill.ends import KillEnds
from killswitch.kill.latched import DeadMansSwitches, StreamCancels, SweepsDue
from killswitch.kill.record import (
    AccountResult,
    AccountState,
    Kill,
    KillKind,
    KillState,
    SubmitResult,
)
from killswitch.kill.resets import Resets
from killswitch.kill.verdicts import Verdicts
from killswitch.kill.waves import Waves
from killswitch.lane import lane
from killswitch.model import AccountRef, ListEvent, Mode, OrderEvent, Scope, Trigger

log = logging.getLogger(__name__)

KILLS_KEPT = 1_000  # finished kills `kill_for` still answers for; older ones are in the journal


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
        self._latched_triggers: dict[str, Trigger] = {}  # the trigger of each latch held
        # Trigger ids already accepted, oldest first; as many as the journal keeps. Reset ids
        # are a namespace of their own: an alert id reused across actions is never lost.
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Triggers being journaled: a second submit of the same id waits for the first.
        self._accepting: dict[str, asyncio.Future[SubmitResult]] = {}
        self.kills: dict[str, Kill] = {}  # by trigger id (joined triggers share one Kill)
        self._running: set[Kill] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        run = Runtime(clock=clock, sleep=sleep, rng=self._rng, emit=self._emit)
        self._waves = Waves(self.config, run)
        self._streams = StreamCancels(
            self.accounts, self._latches, self._running, self._waves, self.config, run, self._ids
        )
        self._stop_event = asyncio.Event()
        self._ends = KillEnds(journal, self._stop_event, run)
        self._dms = DeadMansSwitches(emit=self._emit, healthy=healthy, sleep=sleep, rng=self._rng)
        self._sweeps = SweepsDue(self.accounts, self._latches, self._running)
        self._last_sweep: dict[AccountRef, str] = {}  # how each account's last sweep ended
        self._verdicts = Verdicts(
            self.config, run, self._wall_ms, self._run_account, self._last_sweep
        )
        # Held from deciding a latch change until it is journaled and applied: a reset names
        # exactly the latches it releases, and a kill journaled meanwhile is never among them.
        self._latch_lock = asyncio.Lock()
        self._resets = Resets(
            journal,
            self._latch_lock,
            self._latches,
            self._latched_triggers,
            self._running,
            self._streams,
            relaunch=self._relaunch,
            emit=self._emit,
        )
        self.last_kill: dict[str, object] | None = None
        self._started = False
        self._stopping = False
        self._journal_alarmed = 0  # the journal's failing spell last alarmed

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, before_resume: Callable[[], Awaitable[None]] | None = None) -> None:
        """Replay the journal; resume latched and unfinished kills and wait until each is flat
        or failed; then start the sweeper and the dead-man's-switch keepers. `before_resume`
        runs once the journal's latches are in place and before any kill resumes: what it
        releases (`reset`) is not resumed."""
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
                EventType.ALARM,
                account="journal",
                error=state.unreadable or "fail-safe latch still held",
                kept=str(state.unreadable_copy or ""),
                trigger_ids=list(state.failsafe_latches),
            )
        self._seen = OrderedDict(state.seen)
        self._resets.applied.clear()
        self._resets.applied.update(state.reset_ids)
        self._latches.clear()  # shared with the stream cancels: updated, never replaced
        self._latches.update(state.latches)
        self._latched_triggers.clear()  # shared with the resets: updated, never replaced
        self._latched_triggers.update(
            {t: state.triggers[t] for t in state.latches if t in state.triggers}
        )
        self.last_kill = state.last_kill
        # Taken before `before_resume`: a trigger it submits is launched by `submit`, not here.
        journaled = list(state.triggers.items())
        if before_resume is not None:
            await before_resume()
        resumed: list[Kill] = []
        for trigger_id, trigger in journaled:
            latched = trigger_id in self._latches
            if not latched and trigger_id not in state.unfinished:
                continue
            scope = self._latches.get(trigger_id, trigger.scope)
            joined = next((k for k in resumed if self._may_join(k, trigger, scope)), None)
            if joined is not None:
                joined.triggers.append(trigger)
                joined.joins += 1
                self.kills[trigger_id] = joined
                continue
            log.warning("resuming kill trigger_id=%s latched=%s", trigger_id, latched)
            self._emit(
                EventType.RESUMED, trigger_id=trigger_id, latched=latched, scope=scope.to_json()
            )
            # A one-shot cancel leaves alone the accounts it already proved flat.
            flat = set(state.flat_accounts.get(trigger_id, ())) if not latched else set()
            flat_before = frozenset(ref for ref in self.accounts if str(ref) in flat)
            resumed.append(
                self._launch(trigger, scope, kind=KillKind.RESUME, flat_before=flat_before)
            )
        if resumed:
            await asyncio.gather(*(k.done.wait() for k in resumed))
        self._spawn(self._sweep_loop(), "sweeper")
        for account in self.accounts.values():
            caps = account.exchange.capabilities
            if account.dead_mans_switch_s > 0 and caps.dead_mans_switch:
                self._spawn(self._dms.keep(account), f"dms {account.ref}")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let kills in flight finish for up to `grace_s`, then cancel what is left."""
        self._stopping = True
        self._stop_event.set()
        # Triggers and resets on their way: they finish (journal, memory, events) first.
        if self._accepting:
            await asyncio.wait(list(self._accepting.values()))
        if self._resets.in_flight:
            await asyncio.wait(list(self._resets.in_flight))
        # Until the grace ends: a stream may show an order meanwhile, and its cancel starts a
        # drain of its own (review 63: stop returned with it running).
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace_s
        while running := [t for t in self._in_flight() if not t.done()]:
            _, pending = await asyncio.wait(running, timeout=max(0.0, ends - loop.time()))
            if pending:
                log.warning("stop cancelled kills in flight count=%d", len(pending))
                self._streams.closed = True  # the grace is over: no new stream cancels
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        self._streams.closed = True  # streams outlive the engine: none starts now (review 64)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dms.left_armed(self.accounts.values())
        self.journal.close()

    async def wait_idle(self) -> None:
        """Wait until no kill, sweep or stream cancel is in flight (for tests and drains)."""
        while busy := self._in_flight():
            await asyncio.wait(busy)

    def _in_flight(self) -> list[asyncio.Task[None]]:  # kills, sweeps, stream cancels
        return [k.task for k in self._running if k.task] + list(self._streams.tasks.values())

    # -- the public API -------------------------------------------------------------------------
    async def submit(self, trigger: Trigger) -> SubmitResult:
        """Journal the trigger (fsync), latch its scope (mode kill) and start the kill.

        Once begun, acceptance runs to its end (journaled, latched, announced, launched) even
        if the caller is cancelled meanwhile. A submit of an id still being journaled waits for
        that: DUPLICATE only once the first is journaled, and a retry if its write failed."""
        while (pending := self._accepting.get(trigger.id)) is not None and not pending.done():
            await asyncio.wait([pending])
        if trigger.id in self._seen:
            self._emit(EventType.DUPLICATE, trigger_id=trigger.id, source=trigger.source)
            return SubmitResult.DUPLICATE
        if not trigger.received_ms:
            trigger = replace(trigger, received_ms=self._wall_ms())
        accept = asyncio.ensure_future(self._accept(trigger))
        self._accepting[trigger.id] = accept

        def accepted(done: asyncio.Future[SubmitResult], trigger_id: str = trigger.id) -> None:
            if self._accepting.get(trigger_id) is done:
                del self._accepting[trigger_id]
            if not done.cancelled() and done.exception() is not None:
                log.error(
                    "trigger not journaled trigger_id=%s error=%r", trigger_id, done.exception()
                )

        accept.add_done_callback(accepted)
        return await asyncio.shield(accept)

    async def _accept(self, trigger: Trigger) -> SubmitResult:
        records: list[tuple[str, dict[str, object]]] = [("trigger", {"trigger": trigger.to_json()})]
        if trigger.mode is Mode.KILL:
            records.append(("latch", {"trigger_id": trigger.id, "scope": trigger.scope.to_json()}))
        async with self._latch_lock:
            # Not journaled: nothing changes, and a retry of this trigger is not a duplicate.
            try:
                await self.journal.append_many_async(records)
            except OSError as exc:
                self._refused_unjournaled(trigger, exc)
                raise
            remember_newest(self._seen, trigger.id, self.journal.seen_limit)
            if trigger.mode is Mode.KILL:
                self._latches[trigger.id] = trigger.scope
                self._latched_triggers[trigger.id] = trigger
        log.warning(
            "kill triggered trigger_id=%s source=%s mode=%s scope=%s reason=%r",
            trigger.id,
            trigger.source,
            trigger.mode.value,
            trigger.scope.to_json(),
            trigger.reason,
        )
        self._emit(EventType.TRIGGERED, trigger=trigger.to_json())
        if trigger.mode is Mode.KILL:
            self._emit(EventType.LATCHED, trigger_id=trigger.id, scope=trigger.scope.to_json())
        joined = self._joinable(trigger)
        if joined is not None:
            joined.triggers.append(trigger)
            joined.joins += 1
            self.kills[trigger.id] = joined
            self._emit(EventType.JOINED, trigger_id=trigger.id, kill_id=joined.id)
        else:
            self._launch(trigger, trigger.scope, kind=KillKind.TRIGGER)
        return SubmitResult.ACCEPTED

    def _refused_unjournaled(self, trigger: Trigger, exc: OSError) -> None:
        """A trigger the journal cannot take is refused (its caller retries or is told): the
        first of a spell raises an alarm, so the operator knows kills cannot be accepted."""
        if self._journal_alarmed == self.journal.failing_spells:
            return  # this spell was alarmed (review 81: one ended by a reset's write was never
            # cleared here, and the next went unsaid)
        self._journal_alarmed = self.journal.failing_spells
        log.error(
            "journal cannot take triggers: kills are refused until it can trigger_id=%s error=%s",
            trigger.id,
            self.journal.failing or exc,
        )
        self._emit(
            EventType.ALARM,
            account="journal",
            trigger_id=trigger.id,
            error=self.journal.failing or type(exc).__name__,
        )

    async def reset(
        self,
        *,
        actor: str,
        reason: str,
        origin: str = "local",
        only: Iterable[str] | None = None,
        latched_before_ms: int | None = None,
        reset_id: str | None = None,
    ) -> bool:
        """Release every latch, or those of the trigger ids in `only`, and of those only the
        ones received at or before `latched_before_ms` (audited: who, why, from where). The
        journal record, the log line and the event name exactly the latches released, decided
        under the latch lock: a kill journaled meanwhile is never among them. A `reset_id`
        already journaled (this life or an earlier one) is a no-op. False if nothing was
        released. Once begun, it runs to its end (journaled, applied, announced) even if the
        caller is cancelled meanwhile."""
        return await self._resets.shielded(
            self._resets.apply(actor, reason, origin, only, latched_before_ms, reset_id)
        )

    def _relaunch(self, triggers: list[Trigger]) -> None:
        launched: list[Kill] = []
        for trigger in triggers:
            scope = self._latches.get(trigger.id, trigger.scope)
            joined = next((k for k in launched if self._may_join(k, trigger, scope)), None)
            if joined is not None:
                joined.triggers.append(trigger)
                self.kills[trigger.id] = joined
            else:
                launched.append(self._launch(trigger, scope, kind=KillKind.TRIGGER))

    def healthy(self) -> bool:
        """True while started and its background loops (sweeper, dead-man's switches) run."""
        return self._started and not self._stopping and all(not t.done() for t in self._tasks)

    def latched(self) -> bool:
        return bool(self._latches)

    def latch_scopes(self) -> list[Scope]:
        return list(self._latches.values())

    def latches(self) -> dict[str, Scope]:
        """The latches held, by trigger id (a copy)."""
        return dict(self._latches)

    def trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger of a latch held, or of a kill still known, by its id."""
        known = self._latched_triggers.get(trigger_id)
        if known is not None:
            return known
        kill = self.kills.get(trigger_id)
        return next((t for t in kill.triggers if t.id == trigger_id), None) if kill else None

    def accepted(self, trigger_id: str) -> bool:
        """Whether a trigger of this id was journaled (as far back as the journal keeps ids)."""
        return trigger_id in self._seen

    def reset_applied(self, reset_id: str) -> bool:
        """Whether a reset of this id was journaled (ids of resets are apart from triggers')."""
        return reset_id in self._resets.applied

    def released_by_reset(self, trigger_id: str) -> bool:
        """Whether a journaled reset released this trigger's latch (none latched it since)."""
        return trigger_id in self.journal.state.released and trigger_id not in self._latches

    def kill_for(self, trigger_id: str) -> Kill | None:
        """The kill a trigger started or joined."""
        return self.kills.get(trigger_id)

    def on_stream_event(self, ref: AccountRef, event: OrderEvent | ListEvent) -> None:
        """A stream saw an order change: cancel new open orders in a latched scope at once."""
        self._streams.on_event(ref, event)

    def status(self) -> dict[str, object]:
        """Everything `killswitch status` shows: latch, kills, per-account view."""
        accounts = [
            a.status(self._dms.state.get(a.ref, "off"), self._last_sweep.get(a.ref, "none"))
            for a in self.accounts.values()
        ]
        return {
            "latched": self.latched(),
            "latches": [{"trigger_id": t, "scope": s.to_json()} for t, s in self._latches.items()],
            "running": [k.summary() for k in self._running if k.kind is not KillKind.STREAM],
            "last_kill": self.last_kill,
            # Kills that ended failed and that neither a later flat kill over their scope nor
            # a reset of their latches resolved (the journal's word, kept across restarts).
            "failed_kills": [f.get("summary", f) for f in self.journal.state.failed.values()],
            "failed_kills_dropped": self.journal.state.failed_dropped,
            # Why the journal refuses writes (no trigger can be accepted meanwhile), if it does.
            "journal_failing": self.journal.failing or None,
            "journal_free_bytes": self.journal.free_bytes(),
            "accounts": accounts,
        }

    # -- kills ----------------------------------------------------------------------------------
    def _may_join(self, kill: Kill, trigger: Trigger, scope: Scope) -> bool:
        """Whether `trigger` (over `scope`) may ride on `kill` instead of a kill of its own."""
        return (
            # A kill over no account fails on its own: it never rides on another's flat.
            any(scope.covers_account(ref) for ref in self.accounts)
            # A one-shot is about what is open when it looks: its own first look.
            and trigger.mode is Mode.KILL
            and kill.mode is Mode.KILL
            and kill.state is KillState.RUNNING
            and kill.scope.contains(scope)
            # An account already proved flat would not look again for the joiner.
            and all(r.state is AccountState.RUNNING for r in kill.accounts.values())
        )

    def _joinable(self, trigger: Trigger) -> Kill | None:
        for kill in self._running:
            if kill.kind in (KillKind.TRIGGER, KillKind.RESUME) and self._may_join(
                kill, trigger, trigger.scope
            ):
                return kill
        return None

    def _launch(
        self,
        trigger: Trigger | None,
        scope: Scope,
        *,
        kind: KillKind,
        flat_before: frozenset[AccountRef] = frozenset(),
    ) -> Kill:
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
        kill.flat_before = flat_before
        kill.started_ms = self._wall_ms()
        if trigger is not None:
            self.kills[trigger.id] = kill
        self._running.add(kill)
        if self._spawn_kill is not None and kind is not KillKind.SWEEP:
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
            result = kill.accounts[account.ref] = AccountResult(account.ref)
            if account.ref in kill.flat_before:  # proved flat by this cancel's earlier life
                result.state = AccountState.FLAT
                result.verified = True
        if kill.kind is not KillKind.SWEEP:
            log.warning("kill start kill_id=%s accounts=%d", kill.id, len(accounts))
        try:
            # Background work waits for the kill's own next steps; a sweep (periodic, and held
            # for minutes by a venue's ban) is background work itself.
            with lane().first() if kill.kind is not KillKind.SWEEP else contextlib.nullcontext():
                await self._verdicts.reach(kill, accounts)
            kill.done.set()
            # A one-shot cancel ends at its flat snapshot: a confirmation re-check would
            # cancel orders placed after it.
            if (
                kill.state is KillState.FLAT
                and kill.kind is not KillKind.SWEEP
                and kill.mode is Mode.KILL
            ):
                await self._verdicts.confirm(kill, accounts)
        except asyncio.CancelledError:
            kill.state = KillState.ABORTED
            why = "reset" if kill.released else "narrowed" if kill.narrowed else "shutdown"
            self._emit(EventType.ABORTED, kill_id=kill.id, kind=kill.kind, reason=why)
            raise
        finally:
            kill.done.set()
            kill.ended_ms = self._wall_ms()
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

    async def _run_account(self, kill: Kill, account: Account, fast: bool) -> None:
        await self._waves.run_account(kill, account, fast=fast)
        if (
            kill.mode is Mode.CANCEL
            and kill.kind in (KillKind.TRIGGER, KillKind.RESUME)
            and kill.accounts[account.ref].state is AccountState.FLAT
        ):
            await self._ends.account_flat(kill, account.ref)  # before anything reports it

    async def _record_done(self, kill: Kill) -> None:
        summary = await self._ends.done(kill)
        if summary is not None:
            self.last_kill = summary

    def _forget_old_kills(self) -> None:
        finished = [t for t, k in self.kills.items() if k.finished.is_set()]
        for trigger_id in finished[: max(0, len(finished) - KILLS_KEPT)]:
            del self.kills[trigger_id]

    # -- latched: streams, sweeps, dead-man's switch ----------------------------------------------

    async def _sweep_loop(self) -> None:
        # On the loop's clock, not the injected sleep: under a virtual clock that moves only
        # when the engine sleeps, a periodic loop would spin. `sweep()` is the tested seam.
        # Each interval starts what is due and does not wait for it: an account whose venue
        # hangs holds up its own next sweep, never another account's.
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            if self._stopping:
                return
            self._start_sweeps()

    async def sweep(self) -> list[Kill]:
        """Start the sweeps that are due (`_start_sweeps`), wait for them, and return them."""
        started = self._start_sweeps()
        if started:
            await asyncio.gather(*(k.finished.wait() for k in started))
        return started

    def _start_sweeps(self) -> list[Kill]:
        return [self._launch(None, scope, kind=KillKind.SWEEP) for scope in self._sweeps.due()]

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

    def _emit(self, event_type: EventType, /, **fields: object) -> EventRecord:
        record = make_event(event_type, **fields)
        self.events.emit(record)
        return record
