"""Keep one account's `OrderTracker` true from its user-data stream, whatever the stream does.

One `StreamSupervisor` per account runs until cancelled::

    DOWN -> CONNECTING -> SYNCING -> LIVE -> DOWN (gap) -> backoff -> CONNECTING ...

* CONNECTING/SYNCING: the stream is opened; once the connector yields `StreamSubscribed` (the
  venue confirmed the subscription) a snapshot is read. Each event arriving meanwhile is handed
  to `on_event` at once (the engine cancels by id: it need not wait for the tracker) and
  buffered for the tracker, which re-applies it on top of the snapshot, so nothing falls between
  subscribe and snapshot. Then the tracker is trusted and the state is LIVE.
* LIVE: every event is applied and handed to `on_event`. A watchdog reconciles with a
  background snapshot every `reconcile_interval_s`: an order open on the venue the tracker
  lacks, or the reverse, still unexplained after `reconcile_grace_ms`, means the stream missed
  events.
* Any end of the stream (`Transient` or another `VenueError`, `StreamTerminated`, iterator end,
  watchdog divergence, silence, age limit, `resync()`, a failed or timed-out snapshot) marks a
  gap in the tracker, then the supervisor reconnects with exponential backoff and full jitter,
  reset once a connection has stayed healthy, and resnapshots. The events the connection
  received still reach the tracker and `on_event`, each exactly once, whichever way it ended.

Nothing but cancellation escapes `run()`: a failure is a state change, logged with its reason.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from killswitch.exchanges.base import Exchange, Priority, RateLimited, VenueError
from killswitch.lane import lane
from killswitch.model import (
    AccountRef,
    ListEvent,
    OrderEvent,
    Snapshot,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)
from killswitch.streams.tracker import Divergence, OrderTracker

log = logging.getLogger(__name__)

# Stream events are handled in slices of about this long, each a turn in the loop's `Lane`
# (while a kill runs: when nothing else is ready): a kill's acknowledgements and next requests
# wait at most one slice, and a burst does not pay a loop iteration for every event.
SLICE_S = 0.0005

EventCallback = Callable[[AccountRef, OrderEvent | ListEvent], None]
StateCallback = Callable[[AccountRef, "StreamState", str], None]


class StreamState(enum.StrEnum):
    """Where a supervised user-data stream is."""

    CONNECTING = "connecting"
    SYNCING = "syncing"
    LIVE = "live"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class _End:
    """Why a connection ended; travels through the inbox behind the events it followed."""

    reason: str
    at_once: bool = False  # reconnect without a backoff delay (an explicit resync)
    wait_s: float = 0.0  # the venue said how long to stay away (a 429/418, e.g. on connect)


def _ended_by(exc: VenueError) -> _End:
    """The end a venue's error makes: a throttle or a ban is waited out before reconnecting."""
    wait_s = exc.retry_after_s if isinstance(exc, RateLimited) else 0.0
    return _End(f"{exc.kind}: {exc.msg}", wait_s=wait_s)


async def _first_of(*tasks: asyncio.Future[Any]) -> None:
    """Wait for the first of `tasks` to end, then cancel the others and wait for them too (also
    when the wait itself is cancelled): nothing is left running."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


class StreamSupervisor:
    """Own the user-data stream of one `Exchange` and keep its `OrderTracker` true."""

    def __init__(
        self,
        exchange: Exchange,
        tracker: OrderTracker,
        *,
        on_event: EventCallback | None = None,
        on_state: StateCallback | None = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 10.0,
        silence_timeout_s: float | None = None,
        reconcile_interval_s: float | None = 30.0,
        reconcile_grace_ms: int = 3000,
        snapshot_timeout_s: float = 30.0,
        max_connection_age_s: float | None = 23 * 3600.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.exchange = exchange
        self.tracker = tracker
        self.ref = tracker.ref
        self.on_event = on_event
        self.on_state = on_state
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        # None: an idle account is normal. Set it for accounts whose bots trade constantly.
        self.silence_timeout_s = silence_timeout_s
        self.reconcile_interval_s = reconcile_interval_s
        self.reconcile_grace_s = reconcile_grace_ms / 1000.0
        self.snapshot_timeout_s = snapshot_timeout_s
        self.max_connection_age_s = max_connection_age_s
        self._sleep = sleep  # waits out backoff delays only; tests inject a recorder
        self._clock = clock
        self._rng = rng or random.Random()

        self.state = StreamState.DOWN
        self.state_reason = "not started"
        self.connected_since: float | None = None  # when the current connection went LIVE
        self.reconnects = 0
        self.gaps = 0
        self.last_event_at: float | None = None
        self.last_gap_reason: str | None = None
        self.reconciles = 0
        self.repairs = 0  # divergences fixed in place after a connect (see _watch_reconcile)
        self.last_divergence: Divergence | None = None
        self.backoff_delays: list[float] = []  # the last few delays, for status and tests

        self._running = False
        self._live = asyncio.Event()
        self._inbox: asyncio.Queue[StreamEvent | _End] | None = None
        self._wake = asyncio.Event()  # cut a backoff short
        self._resync_pending: str | None = None
        self._recorders: list[list[OrderEvent | ListEvent]] = []  # reconcile reads in flight

    # -- public ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Supervise the stream until cancelled. Never raises anything but cancellation."""
        if self._running:
            raise RuntimeError(f"supervisor for {self.ref} is already running")
        self._running = True
        failures = 0
        first = True
        try:
            while True:
                if not first:
                    self.reconnects += 1
                first = False
                end = await self._connection()
                healthy = (
                    self.connected_since is not None
                    and self._clock() - self.connected_since >= self.healthy_after_s
                )
                self._went_down(end.reason)
                if healthy:
                    failures = 0
                if end.at_once or self._resync_pending is not None:
                    delay = 0.0
                else:
                    ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2.0**failures)
                    delay = self._rng.uniform(0.0, ceiling)
                    failures += 1
                await self._backoff(max(delay, end.wait_s))
        finally:
            self._running = False
            self._live.clear()

    async def wait_live(self, timeout: float) -> bool:  # noqa: ASYNC109 - the engine's API
        """Wait until the stream is LIVE with a fresh snapshot; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._live.wait()
        except TimeoutError:
            return False
        return True

    async def resync(self, reason: str) -> None:
        """Force a reconnect and a fresh snapshot. Returns at once; `wait_live` waits for it."""
        log.warning("stream resync requested account=%s reason=%s", self.ref, reason)
        self._live.clear()
        self.tracker.mark_gap(f"resync: {reason}")
        self._resync_pending = reason
        self._post(_End(f"resync requested: {reason}", at_once=True))
        self._wake.set()

    async def reconcile(self, *, repair: bool = False) -> Divergence:
        """Compare a background snapshot with the tracker; return what stays unexplained.

        With `repair`, a divergence is fixed in place: the tracker is reset to the snapshot
        plus every event that arrived since the read began. Right only while the stream is
        known to be subscribed; a stream that misses events needs a reconnect instead.
        """
        held_before = self.tracker.now()
        recorded: list[OrderEvent | ListEvent] = []
        self._recorders.append(recorded)
        try:
            snapshot = await self._read_snapshot(background=True)
            divergence = self.tracker.divergence(snapshot, held_before=held_before)
            self.tracker.adopt_lists(snapshot.lists)
            if divergence:
                # Events may be in flight: give them the grace period before judging.
                await asyncio.sleep(self.reconcile_grace_s)
                divergence = self.tracker.confirm(divergence)
            if divergence and repair and self.tracker.trusted:
                self.tracker.reset(snapshot, buffered=recorded)
                self.repairs += 1
                log.info("stream tracker repaired account=%s %s", self.ref, divergence.describe())
        finally:
            self._recorders.remove(recorded)
        self.reconciles += 1
        self.last_divergence = divergence
        return divergence

    def status(self) -> dict[str, object]:
        """A plain summary for status commands and metrics."""
        now = self._clock()
        return {
            "account": str(self.ref),
            "state": self.state.value,
            "reason": self.state_reason,
            "trusted": self.tracker.trusted,
            "open_orders": len(self.tracker),
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "reconciles": self.reconciles,
            "live_for_s": None if self.connected_since is None else now - self.connected_since,
            "last_event_age_s": None if self.last_event_at is None else now - self.last_event_at,
            "last_gap_reason": self.last_gap_reason,
        }

    # -- one connection --------------------------------------------------------------------
    async def _connection(self) -> _End:
        inbox: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()
        self._inbox = inbox
        self._resync_pending = None
        helpers: list[asyncio.Task[None]] = []
        # Each event goes to `on_event` as it leaves the inbox, and only then. Until a snapshot
        # lands it is also kept here for the tracker; `unapplied` empties once it has landed.
        buffered: list[OrderEvent | ListEvent] = []
        unapplied = buffered
        try:
            self._set_state(StreamState.CONNECTING, "opening user stream")
            stream = self.exchange.user_stream()
            helpers.append(asyncio.create_task(self._pump(stream), name=f"stream-pump {self.ref}"))
            not_subscribed = await self._await_subscribed(inbox, buffered)
            if not_subscribed is not None:
                return not_subscribed
            self._set_state(StreamState.SYNCING, "reading snapshot")
            snapshot = await self._first_snapshot(inbox, buffered)
            if isinstance(snapshot, _End):
                return snapshot
            ended: _End | None = None
            while ended is None and not inbox.empty():
                ended = self._buffer(inbox.get_nowait(), buffered)
            self.tracker.reset(snapshot, buffered=buffered)
            unapplied = []
            if ended is not None:
                return ended
            self.connected_since = self._clock()
            self._set_state(
                StreamState.LIVE,
                f"snapshot orders={len(snapshot.orders)} lists={len(snapshot.lists)} "
                f"buffered={len(buffered)}",
            )
            self._live.set()
            if self.reconcile_interval_s is not None:
                helpers.append(asyncio.create_task(self._watch_reconcile()))
            if self.silence_timeout_s is not None:
                helpers.append(asyncio.create_task(self._watch_silence(self.silence_timeout_s)))
            if self.max_connection_age_s is not None:
                helpers.append(asyncio.create_task(self._watch_age(self.max_connection_age_s)))
            return await self._consume(inbox)
        except asyncio.CancelledError:
            raise
        except VenueError as exc:
            return _ended_by(exc)
        except TimeoutError:
            return _End(f"snapshot {self._timed_out()}")
        except Exception as exc:  # a connector bug must not kill supervision
            log.exception("stream supervisor error account=%s", self.ref)
            return _End(f"unexpected {type(exc).__name__}")
        finally:
            self._live.clear()
            try:
                await self._stop(helpers)  # the pump first: what it read reaches the inbox
            finally:
                self._inbox = None
                self._drain(inbox, unapplied)

    async def _await_subscribed(
        self, inbox: asyncio.Queue[StreamEvent | _End], early: list[OrderEvent | ListEvent]
    ) -> _End | None:
        """Wait for the venue's subscription confirmation; the end of the stream if it came
        first. Events before the confirmation (none expected) are notified and kept in `early`."""
        try:
            async with asyncio.timeout(self.snapshot_timeout_s):
                while True:
                    item = await inbox.get()
                    if isinstance(item, StreamSubscribed):
                        return None
                    end = self._buffer(item, early)
                    if end is not None:
                        return end
        except TimeoutError:
            return _End(f"no subscription confirmation after {self.snapshot_timeout_s}s")

    async def _first_snapshot(
        self, inbox: asyncio.Queue[StreamEvent | _End], buffered: list[OrderEvent | ListEvent]
    ) -> Snapshot | _End:
        """Read the snapshot while the stream's events are notified and buffered; the stream's
        end abandons the read. A failed read raises."""
        read = asyncio.create_task(self._read_snapshot(background=False))
        listen = asyncio.create_task(self._listen(inbox, buffered))
        # A cancelled `inbox.get()` leaves its item in the queue: `_drain` still sees it.
        await _first_of(read, listen)
        if listen.cancelled():
            current = asyncio.current_task()
            if read.cancelled() and (current is None or not current.cancelling()):
                # The read was cancelled from inside (a future it awaited), not by our stop:
                # a connection end to reconnect from, never the end of supervision.
                return _End("snapshot read cancelled")
            return read.result()
        if not read.cancelled():
            read.exception()  # the stream's end is the reason given; the read's outcome is moot
        return listen.result()

    async def _listen(
        self, inbox: asyncio.Queue[StreamEvent | _End], buffered: list[OrderEvent | ListEvent]
    ) -> _End:
        while True:
            end = self._buffer(await inbox.get(), buffered)
            if end is not None:
                return end

    def _buffer(
        self, item: StreamEvent | _End, buffered: list[OrderEvent | ListEvent]
    ) -> _End | None:
        """Take one inbox item before the tracker is synced: an event is notified at once and
        kept for the tracker; the end of the connection is returned."""
        if isinstance(item, OrderEvent | ListEvent):
            self.last_event_at = self._clock()
            buffered.append(item)
            self._notify(item)
            return None
        if isinstance(item, StreamSubscribed):
            return None
        if isinstance(item, StreamTerminated):
            return _End(f"terminated: {item.reason}")
        return item

    def _drain(
        self, inbox: asyncio.Queue[StreamEvent | _End], unapplied: list[OrderEvent | ListEvent]
    ) -> None:
        """At a connection's end, give the tracker the events no snapshot took in, and the
        tracker and the engine those left in the inbox: what the stream showed is real, however
        the connection ended."""
        for event in unapplied:
            self._apply(event)
        while not inbox.empty():
            self._left_at_end(inbox.get_nowait())

    def _left_at_end(self, item: StreamEvent | _End) -> None:
        """An item left in the inbox at a connection's end (`_drain`), or held by the consumer
        when it was stopped (ahead of those): the tracker and the engine get it."""
        if isinstance(item, OrderEvent | ListEvent):
            self._apply(item)
            self._notify(item)

    def _apply(self, event: OrderEvent | ListEvent) -> None:
        """Apply at a connection's end: a failure is logged, never raised out of `run()` (the
        connection is down, and the tracker is distrusted until the next snapshot)."""
        try:
            self.tracker.apply(event)
        except Exception:  # a tracker bug must not end supervision
            log.exception("stream tracker apply failed account=%s", self.ref)

    async def _consume(self, inbox: asyncio.Queue[StreamEvent | _End]) -> _End:
        tracker = self.tracker
        clock = self._clock
        turns = lane()
        sliced = -SLICE_S
        while True:
            item = inbox.get_nowait() if not inbox.empty() else await inbox.get()
            if time.perf_counter() - sliced >= SLICE_S:
                # A slice at a time, each a turn in the loop's lane: see `killswitch.lane`.
                try:
                    await turns.turn()
                except asyncio.CancelledError:
                    self._left_at_end(item)
                    raise
                sliced = time.perf_counter()
            kind = type(item)
            if kind is OrderEvent or kind is ListEvent:
                tracker.apply(item)  # type: ignore[arg-type]
                self.last_event_at = clock()
                if self._recorders:
                    for recorded in self._recorders:
                        recorded.append(item)  # type: ignore[arg-type]
                if self.on_event is not None:
                    self._notify(item)  # type: ignore[arg-type]
            elif kind is _End:
                return item  # type: ignore[return-value]
            elif kind is StreamSubscribed:
                continue
            else:
                return _End(f"terminated: {item.reason}")  # type: ignore[union-attr]

    async def _pump(self, stream: AsyncIterator[StreamEvent]) -> None:
        # A kill's cancels come back as a burst of stream events on every account at once,
        # with its acknowledgements. Frames already buffered are read without a suspension, so
        # the burst is handled in slices (`SLICE_S`), each, while a kill runs, when nothing
        # else is ready (`killswitch.lane`): the kill's acknowledgements and next requests go
        # first, and this work fills the round trip they wait on instead of delaying them.
        turns = lane()
        try:
            sliced = -SLICE_S
            async for item in stream:
                self._post(item)  # (posted before any wait: a pump never holds an event)
                if time.perf_counter() - sliced >= SLICE_S:
                    await turns.turn()  # before the next frame is read and decoded
                    sliced = time.perf_counter()
            end = _End("stream ended")
        except asyncio.CancelledError:
            raise
        except VenueError as exc:
            end = _ended_by(exc)
        except Exception as exc:  # reported as the connection's end
            log.exception("user stream iterator failed account=%s", self.ref)
            end = _End(f"unexpected {type(exc).__name__}")
        finally:
            await self._close_stream(stream)
        self._post(end)

    async def _close_stream(self, stream: AsyncIterator[StreamEvent]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except asyncio.CancelledError:
            raise
        except Exception:  # closing a dead stream may fail; it is gone anyway
            log.warning("user stream close failed account=%s", self.ref, exc_info=True)

    def _post(self, item: StreamEvent | _End) -> None:
        inbox = self._inbox
        if inbox is None:
            return
        inbox.put_nowait(item)

    def _timed_out(self) -> str:
        return f"timed out after {self.snapshot_timeout_s}s"

    async def _read_snapshot(self, *, background: bool) -> Snapshot:
        priority = Priority.BACKGROUND if background else Priority.KILL
        async with asyncio.timeout(self.snapshot_timeout_s):
            return await self.exchange.snapshot(None, priority=priority)

    # -- watchdogs -------------------------------------------------------------------------
    async def _watch_reconcile(self) -> None:
        assert self.reconcile_interval_s is not None
        while True:
            await asyncio.sleep(self.reconcile_interval_s)
            try:
                divergence = await self.reconcile()
            except asyncio.CancelledError:
                raise
            except (VenueError, TimeoutError) as exc:
                # (a TimeoutError's own text is empty)
                error = exc if isinstance(exc, VenueError) else self._timed_out()
                log.warning("stream reconcile failed account=%s error=%s", self.ref, error)
                continue
            except Exception:  # a failed check is not a broken stream
                log.exception("stream reconcile failed account=%s", self.ref)
                continue
            if divergence:
                self._post(_End(f"stream missed events: {divergence.describe()}"))
                return

    async def _watch_silence(self, timeout_s: float) -> None:
        while True:
            since = max(self.last_event_at or 0.0, self.connected_since or 0.0)
            idle = self._clock() - since
            if idle >= timeout_s:
                self._post(_End(f"no event for {idle:.1f}s"))
                return
            await asyncio.sleep(timeout_s - idle)

    async def _watch_age(self, age_s: float) -> None:
        await asyncio.sleep(age_s)
        self._post(_End(f"connection older than {age_s:.0f}s", at_once=True))

    # -- helpers ---------------------------------------------------------------------------
    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait never raises a child's CancelledError, but still raises ours.
            _, pending = await asyncio.wait(tasks, timeout=10.0)
            for task in pending:
                log.warning("stream task did not stop account=%s task=%s", self.ref, task)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("stream task failed account=%s error=%r", self.ref, task.exception())

    async def _backoff(self, delay: float) -> None:
        self.backoff_delays = [*self.backoff_delays[-9:], delay]
        if delay <= 0:
            return
        self._wake.clear()
        if self._resync_pending is not None:
            return
        log.info("stream reconnect account=%s in_s=%.3f", self.ref, delay)
        await _first_of(
            asyncio.ensure_future(self._sleep(delay)), asyncio.ensure_future(self._wake.wait())
        )

    def _went_down(self, reason: str) -> None:
        self.gaps += 1
        self.last_gap_reason = reason
        self.connected_since = None
        self.tracker.mark_gap(reason)
        self._set_state(StreamState.DOWN, reason)

    def _set_state(self, state: StreamState, reason: str) -> None:
        if state is self.state and reason == self.state_reason:
            return
        self.state = state
        self.state_reason = reason
        level = logging.WARNING if state is StreamState.DOWN else logging.INFO
        log.log(level, "stream state account=%s state=%s reason=%s", self.ref, state, reason)
        if self.on_state is not None:
            try:
                self.on_state(self.ref, state, reason)
            except Exception:  # an observer must not break supervision
                log.exception("stream on_state callback failed account=%s", self.ref)

    def _notify(self, event: OrderEvent | ListEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(self.ref, event)
        except Exception:  # an observer must not break supervision
            log.exception("stream on_event callback failed account=%s", self.ref)
