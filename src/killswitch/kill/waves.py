"""One account's part of a kill: waves of cancels, each sent with retries per the taxonomy,
then verified from the venue, until the account is flat, stopped or out of time.

    wave 1   plan from the tracker and configured symbols and send at once, while a venue
             snapshot is read (unless the venue's budget has no room for it and every
             cancel is answered OK at its first try); then cover what only the snapshot shows
    verify   a complete snapshot in scope; anything left starts another wave
    ...      until flat (a complete, empty read), a Fatal answer, or the deadline

Retries follow the taxonomy in `exchanges/base.py`: `AlreadyGone` is success and never retried;
`RateLimited` waits its `retry_after_s`; `ClockSkew` retries at once (the connector resyncs);
`OutcomeUnknown` re-reads the venue before sending again; `Transient` backs off with full
jitter; `Fatal` stops the account with an alarm. One account's failure never stops another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from killswitch.events import EventType
from killswitch.exchanges.base import (
    Capabilities,
    Fatal,
    VenueError,
    refuses_symbol,
)
from killswitch.kill.client_ids import fill_client_ids
from killswitch.kill.config import Account, EngineConfig, Runtime
from killswitch.kill.gate import Gate
from killswitch.kill.planner import (
    CancelRequest,
    biggest_first,
    coverage,
    in_scope,
    lists_by_their_own,
    plan,
    still_to_send,
)
from killswitch.kill.record import AccountResult, AccountState, Kill, KillKind
from killswitch.kill.sends import Sends
from killswitch.kill.sweep_holds import HeldSweeps
from killswitch.model import (
    AccountRef,
    ListKey,
    Mode,
    OrderKey,
    Scope,
    Snapshot,
    canonical_symbol,
)

log = logging.getLogger(__name__)

_GUARD_S = 5.0  # past its deadline, a hung request is cut off by the loop's own clock
_LAST_LOOK_S = 5.0  # the one read of a stopped account, for its report


def _caps_for_what_is_left(account: Account, survived: bool) -> Capabilities:
    """What the venue has taught us so far (a lesson may come during a kill); and, when a
    list survived a whole wave (shown before it and after it), lists get requests of their
    own whatever a cancel-all is believed to cover (review 94: a "covers lists" learned in
    error sent only cancel-alls, wave after wave, until the deadline). Not for lists new
    since (review 97: on a venue whose cancel-all does cover them, their own requests race
    it, each loser an error toward BingX's lock)."""
    caps = account.exchange.capabilities
    return lists_by_their_own(caps) if survived else caps


class Waves:
    """Drive accounts through a kill, each under its own gate (see `kill.gate`)."""

    def __init__(self, config: EngineConfig, run: Runtime) -> None:
        self.config = config
        self._run = run
        self._gates: dict[AccountRef, Gate] = {}
        # Per kill and account: the symbols the venue refused, and how (see `wave`).
        self._refused: dict[tuple[str, AccountRef], dict[str, VenueError]] = {}
        # Per kill and account: the timeout that cuts a hung account off past its deadline.
        self._guards: dict[tuple[str, AccountRef], asyncio.Timeout] = {}
        self._held_sweeps = HeldSweeps(run, self._extend)
        self._sends = Sends(config, run, self.gate, self._narrow)

    async def run_account(self, kill: Kill, account: Account, *, fast: bool) -> None:
        result = kill.accounts[account.ref]
        result.state = AccountState.RUNNING
        guard_s = max(0.0, kill.deadline - self._run.clock()) + _GUARD_S
        try:
            async with asyncio.timeout(guard_s) as guard:
                self._guards[(kill.id, account.ref)] = guard
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
            self.alarm(kill, account.ref, stop.error)
            if result.still_open is None:
                result.still_open = await self._last_look(kill, account, result)
        except _DeadlinePassed:
            result.state = AccountState.FAILED
        except Exception as exc:  # a bug on one account must not stop the others
            log.exception("kill account crashed kill_id=%s account=%s", kill.id, account.ref)
            result.state = AccountState.FAILED
            result.error = {"kind": type(exc).__name__}
            self._run.emit(
                EventType.ALARM, kill_id=kill.id, account=str(account.ref), error=result.error
            )
        if result.state is AccountState.FAILED and result.still_open is None:
            # Out of time before any read said what is open: what we knew of and did not
            # see cancelled, never proof of anything (complete=False).
            left = tuple(o for key, o in result.known.items() if key not in result.cancelled)
            result.still_open = Snapshot(orders=left, complete=False)
        if result.state is not AccountState.FLAT and account.not_ready is not None:
            result.not_ready = account.not_ready()
        self._refused.pop((kill.id, account.ref), None)
        self._guards.pop((kill.id, account.ref), None)

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
            first = biggest_first(plan(scope, tracked, None, account.symbols, caps), tracked)
        wave_no = result.waves + 1
        rest = first
        if first and self.gate(account).mode != "open":
            # The probe goes alone, and it is the cancel that covers the most orders.
            await self.wave(kill, account, result, first[:1], wave_no)
            rest = first[1:]
        # Triggers that joined the kill by the time a read was sent: a read sent before a
        # join may have been served before the joiner's trigger, so it proves nothing for it.
        read_joins = kill.joins
        looked_later = bool(rest) and self._look_later(kill, account, result, tracked)
        snapshot, extra = await self._first_look(
            kill, account, result, tracked, (rest, first, wave_no), later=looked_later
        )
        # What was open before (counted once the first read that shows it is in).
        before: tuple[set[OrderKey], set[ListKey]] | None = None
        if result.waves == 0:
            # What was open at the first look: the snapshot may have been read after the
            # first cancels landed, so their acknowledgements count too.
            seen = {o.key for o in snapshot.orders} | result.cancelled
            seen |= {o.key for o in (tracked or Snapshot()).orders}
            lists = {x.key for x in snapshot.lists} | result.lists_cancelled
            lists |= {x.key for x in (tracked or Snapshot()).lists}
            result.orders_before, result.lists_before = len(seen), len(lists)
            if not snapshot.complete:
                before = (seen, lists)  # and what the verification read finds
        if first or extra:
            result.waves = wave_no
        # A one-shot cancel is about what was open when it looked: orders placed after its
        # first look are not its business, and its later waves cancel by id only.
        targets: set[OrderKey] | None = None
        widen = False
        target_lists: set[ListKey] = set()
        if kill.mode is Mode.CANCEL:
            targets = set(result.known) | result.cancelled
            widen = not snapshot.complete
            # Lists by (symbol, id): Binance may number lists per symbol, as it numbers orders.
            target_lists = {x.key for x in snapshot.lists} | result.lists_cancelled
            target_lists |= {x.key for x in (tracked or Snapshot()).lists}
            scope = Scope(client_order_id_prefix="")  # matches every item: plans by id
        # The snapshot already is the verification when every request of the wave was
        # acknowledged before it was read: nothing was sent, or only the probe, which went alone.
        verify: Snapshot | None = snapshot if not rest and not extra else None
        # Lists known open before the wave now on its way was sent (the first look went beside
        # it: what it showed may have come after its cancel-all).
        shown = {x.key for x in (tracked or Snapshot()).lists}
        idle = 0
        while True:
            if verify is None:
                read_joins = kill.joins
                verify = await self._read(kill, account, result, None)
            if targets is not None:
                if widen:
                    # The first look may have been cut short: until a complete read, what a
                    # read shows in scope was open since (or before) the trigger.
                    targets |= {o.key for o in verify.orders}
                    target_lists |= {x.key for x in verify.lists}
                    widen = not verify.complete
                verify = _only(verify, targets, target_lists)
            if before is not None:
                # Still open after the first wave: open before it too (review 96: a kill
                # without its first look reported only what the tracker knew as "before").
                seen = before[0] | {o.key for o in verify.orders}
                lists = before[1] | {x.key for x in verify.lists}
                result.orders_before, result.lists_before = len(seen), len(lists)
                before = None
            result.still_open = verify
            result.verified = verify.complete
            if verify.proves_flat and kill.joins != read_joins:
                verify = None  # a trigger joined while the read was on its way: look again
                continue
            if verify.proves_flat:
                result.state = AccountState.FLAT
                if result.flat_ms is None:
                    result.flat_ms = (self._run.clock() - kill.started) * 1000
                return
            self._check_deadline(kill)
            left = {x.key for x in verify.lists}
            caps = _caps_for_what_is_left(account, bool(left & shown))
            shown = left
            requests = plan(scope, None, verify, (), caps)
            verify = None
            if not requests:
                # A read that may have been cut short showed nothing to cancel: it proves
                # nothing, so look again (after a pause) until it is complete or time is up.
                idle += 1
                cap = min(self.config.retry_max_s, self.config.retry_initial_s * 2**idle)
                await self._run.sleep(self._run.rng.uniform(0.0, cap))
                continue
            result.waves += 1
            await self.wave(kill, account, result, requests, result.waves)

    def _look_later(
        self, kill: Kill, account: Account, result: AccountResult, tracked: Snapshot | None
    ) -> bool:
        """Should a kill whose first cancels come from a trusted tracker send them without a
        first look beside them? When the venue's budget has no room for it now (a look is a
        second full read; on Binance 86 of the IP's 6,000 weight a minute, shared by every
        account behind it). A one-shot cancel always looks: what it looks at is its target."""
        if tracked is None or kill.mode is not Mode.KILL or account.first_look_fits is None:
            return False
        symbols = self._snapshot_symbols(kill.scope, account, result)
        if account.first_look_fits(symbols):
            return False
        log.info(
            "first look left to the verification read kill_id=%s account=%s: no room in the "
            "venue's budget for both",
            kill.id,
            account.ref,
        )
        return True

    async def _first_look(
        self,
        kill: Kill,
        account: Account,
        result: AccountResult,
        tracked: Snapshot | None,
        wave: tuple[list[CancelRequest], list[CancelRequest], int],
        *,
        later: bool,
    ) -> tuple[Snapshot, list[CancelRequest]]:
        """Send the first wave's `rest` with a first look beside it, and what the look adds
        (planned beside `first`) as soon as it is read: the look, and what it added.

        `later`: no look beside the cancels (`_look_later`), unless one of them fails its
        first try: its retries may take until the deadline, and what only a read shows must
        not wait for them (review 96), so the look goes then, beside the retries. Without a
        look: an empty, incomplete snapshot (the verification read is the first look)."""
        rest, first, wave_no = wave
        tried = asyncio.Event()
        failed: list[bool] = []

        def first_tries(ok: bool) -> None:
            failed.append(not ok)
            tried.set()

        wave1 = asyncio.ensure_future(
            self.wave(
                kill, account, result, rest, wave_no, first_tries=first_tries if later else None
            )
        )
        if later:
            waiter = asyncio.ensure_future(tried.wait())
            try:
                await asyncio.wait({wave1, waiter}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                wave1.cancel()
                with contextlib.suppress(asyncio.CancelledError, _AccountStopped):
                    await wave1
                raise
            finally:
                waiter.cancel()
            if wave1.done() or not any(failed):
                await wave1  # (its errors are the caller's)
                return Snapshot(complete=False), []
        snap_task = asyncio.ensure_future(self._read(kill, account, result, tracked))
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
        caps = account.exchange.capabilities
        extra = [] if snapshot.empty else plan(kill.scope, None, snapshot, (), caps, already=first)
        await _together(wave1, self.wave(kill, account, result, extra, wave_no))
        return snapshot, extra

    async def wave(
        self,
        kill: Kill,
        account: Account,
        result: AccountResult,
        requests: Sequence[CancelRequest],
        wave: int,
        *,
        first_tries: Callable[[bool], None] | None = None,
    ) -> None:
        """Send `requests` at once, each with its retries. `first_tries` is told once every
        request's first try has ended, and whether all of them were answered OK."""
        # (a stream cancel is one request, alarmed at most once per order per deadline_s)
        streamed = kill.kind is KillKind.STREAM
        refused = {} if streamed else self._refused.setdefault((kill.id, account.ref), {})
        if refused:
            # A request naming only symbols the venue refused is not sent again (review 52: it
            # was, every wave, with an alarm, until the deadline). When nothing else is left
            # to send, what is open sits where the venue will not act: the account stops.
            left = [r for r in requests if not (r.symbols and set(r.symbols) <= refused.keys())]
            if requests and not left:
                raise _AccountStopped(next(iter(refused.values())))
            requests = left
        if not requests:
            return
        if kill.kind is not KillKind.STREAM:
            self._run.emit(
                EventType.WAVE,
                kill_id=kill.id,
                account=str(account.ref),
                wave=wave,
                requests=len(requests),
            )
        on_first = None
        if first_tries is not None:
            tries: list[bool] = []

            def on_first(ok: bool) -> None:
                tries.append(ok)
                if len(tries) == len(requests):
                    first_tries(all(tries))

        if len(requests) == 1:  # (no task of its own: its answer reaches the wave a step sooner)
            outcomes = [await self._sends.send(kill, account, result, requests[0], on_first)]
        else:
            outcomes = await asyncio.gather(
                *(self._sends.send(kill, account, result, r, on_first) for r in requests)
            )
        for request, outcome in zip(requests, outcomes, strict=True):
            if request.symbols and outcome.error is not None and refuses_symbol(outcome.error):
                # A symbol the venue does not take (a typo, a delisted pair) fails its own
                # request, never the account's kill (review 51): its other requests go on, and
                # the verification read decides. The symbols refused are those of the request
                # sent, which a re-read may have narrowed (review 64).
                refused.update(dict.fromkeys(outcome.sent_symbols, outcome.error))
                log.error(
                    "kill request refused a symbol kill_id=%s account=%s symbols=%s error=%s",
                    kill.id,
                    account.ref,
                    ",".join(outcome.sent_symbols),
                    outcome.error,
                )
                self._run.emit(
                    EventType.ALARM,
                    kill_id=kill.id,
                    account=str(account.ref),
                    symbols=list(outcome.sent_symbols),
                    error=outcome.error.to_json(),
                )
            elif isinstance(outcome.error, Fatal):
                raise _AccountStopped(outcome.error)

    async def _read(
        self, kill: Kill, account: Account, result: AccountResult, tracked: Snapshot | None
    ) -> Snapshot:
        """Snapshot the account in scope, retried per the taxonomy until the deadline.

        An all-symbols read that may have been cut short is followed by a read of each symbol
        we know, so that what is open there is seen and cancelled; the merged snapshot stays
        incomplete (an order may sit on a symbol nobody named), so it never proves flat.
        """
        symbols = self._snapshot_symbols(kill.scope, account, result)
        try:
            snap = await self._read_symbols(kill, account, symbols)
            if symbols is not None and not _names_scope(kill.scope, symbols):
                # Read symbol by symbol, over the symbols we know of: an order on any other
                # symbol in scope would be missed, so the read proves nothing flat.
                snap = replace(snap, complete=False)
            if symbols is None and not snap.complete:
                known = self._known_symbols(kill.scope, account, result)
                if known:
                    each = await self._read_symbols(kill, account, known)
                    snap = snap.merged(each)
            snap = await fill_client_ids(kill.scope, snap, account)
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

    async def _last_look(self, kill: Kill, account: Account, result: AccountResult) -> Snapshot:
        """What an account stopped before any verified read has open, for the report: one
        read (never a cancel), merged with what we last knew unless it was complete."""
        known = Snapshot(tuple(o for o in result.known.values() if o.key not in result.cancelled))
        symbols = self._snapshot_symbols(kill.scope, account, result)
        try:
            async with asyncio.timeout(_LAST_LOOK_S):
                snap = await account.exchange.snapshot(symbols)
        except (VenueError, TimeoutError) as exc:
            log.warning("last look failed kill_id=%s account=%s: %s", kill.id, account.ref, exc)
            return replace(known, complete=False)
        if symbols is not None and not _names_scope(kill.scope, symbols):
            snap = replace(snap, complete=False)
        seen = in_scope(kill.scope, snap)
        result.verified = seen.complete
        return seen if seen.complete else seen.merged(replace(known, complete=False))

    async def _read_symbols(
        self, kill: Kill, account: Account, symbols: list[str] | None
    ) -> Snapshot:
        async def once() -> Snapshot:
            return await self.gate(account).run(lambda: account.exchange.snapshot(symbols))

        if kill.kind is KillKind.SWEEP:
            return await self._sends.retrying(
                kill, lambda: self._held_sweeps.read(kill, account.ref, once)
            )
        return await self._sends.retrying(kill, once)

    def _extend(self, kill: Kill, ref: AccountRef, wait_s: float) -> None:
        """Move a sweep's deadline (and its account's guard) on by a hold of `wait_s`."""
        kill.deadline = max(kill.deadline, self._run.clock() + wait_s + self.config.deadline_s)
        guard = self._guards.get((kill.id, ref))
        if guard is not None:
            left_s = kill.deadline - self._run.clock() + _GUARD_S
            guard.reschedule(asyncio.get_running_loop().time() + left_s)

    def _known_symbols(self, scope: Scope, account: Account, result: AccountResult) -> list[str]:
        """Every symbol in scope we know the venue's name of: configured, tracked, seen."""
        known = set(account.symbols) | {o.symbol for o in result.known.values()}
        if account.tracker is not None:
            known |= account.tracker.as_snapshot().symbols()
        return sorted(s for s in known if scope.covers_symbol(s))

    def _snapshot_symbols(
        self, scope: Scope, account: Account, result: AccountResult
    ) -> list[str] | None:
        """The symbols to read: None for all (where the venue can), else every symbol in scope
        we know the venue's name of (configured, tracked, seen in this kill)."""
        wanted = self._known_symbols(scope, account, result)
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
        if self._run.clock() >= kill.deadline:
            raise _DeadlinePassed

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
            await self.gate(account).run(lambda: account.exchange.snapshot(symbols)),
        )
        open_keys = {o.key for o in snap.orders}
        gone = coverage(request, result.known) - open_keys - result.cancelled
        result.cancelled.update(gone)
        return still_to_send(request, snap, caps), len(gone)

    def gate(self, account: Account) -> Gate:
        gate = self._gates.get(account.ref)
        if gate is None:
            gate = self._gates[account.ref] = Gate(
                self.config, self._run.clock, account.headroom_known
            )
        return gate

    def alarm(self, kill: Kill, ref: AccountRef, error: VenueError) -> None:
        self._sends.alarm(kill, ref, error)


class _AccountStopped(Exception):
    """A Fatal answer: stop this account's part of the kill."""

    def __init__(self, error: VenueError) -> None:
        super().__init__(str(error))
        self.error = error


class _DeadlinePassed(Exception):
    """The kill's deadline passed for this account."""


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


def _names_scope(scope: Scope, symbols: Sequence[str]) -> bool:
    """True when `symbols` are every symbol the scope can cover (it names them all)."""
    return bool(scope.symbols) and {canonical_symbol(s) for s in symbols} >= scope.symbols


def _only(snapshot: Snapshot, keys: set[OrderKey], list_keys: set[ListKey]) -> Snapshot:
    """The part of `snapshot` made of the given orders and lists."""
    return Snapshot(
        orders=tuple(o for o in snapshot.orders if o.key in keys),
        lists=tuple(x for x in snapshot.lists if x.key in list_keys),
        server_time_ms=snapshot.server_time_ms,
        complete=snapshot.complete,
        undecided=snapshot.undecided,
    )
