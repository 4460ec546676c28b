"""Watch producers' heartbeats; a producer silent past its timeout triggers its scope, once.

A synthetic dead man's switch for venues without a native one: each configured producer (a
trading bot, the risk engine) publishes `heartbeat` alerts; when one stops for `timeout_s`, its
configured trigger fires (mode and scope from the settings), once per silence: the next fresh
heartbeat re-arms it. Every watch starts with a full timeout of grace.

A heartbeat counts from when it was sent (its `ts`, capped at now), not when it arrived: a
backlog replayed after a reconnect does not make a dead producer look alive. While the alerts
input itself cannot hear (the broker is down), silence proves nothing about the producers, so
the watches are suspended and get a full timeout again once the input is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from killswitch.backoff import Backoff, until_journaled
from killswitch.events import EventRecord, EventType, make_event
from killswitch.model import Mode, Trigger
from killswitch.settings import HeartbeatSettings

log = logging.getLogger(__name__)

Submit = Callable[[Trigger], Awaitable[object]]


class TriggerSubmitter:
    """Hand triggers to the engine in order, retrying one until it is journaled."""

    def __init__(
        self,
        submit: Submit,
        *,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
    ) -> None:
        self._submit = submit
        self._queue: asyncio.Queue[Trigger] = asyncio.Queue()
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.submitted = 0
        self.failures = 0

    def put(self, trigger: Trigger) -> None:
        """Queue a trigger (never blocks)."""
        self._queue.put_nowait(trigger)

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Submit queued triggers until cancelled."""
        never = asyncio.Event()  # runs until cancelled: a trigger is never given up on

        def failed(exc: BaseException) -> None:
            self.failures += 1

        while True:
            trigger = await self._queue.get()
            await until_journaled(
                f"trigger {trigger.id}",
                functools.partial(self._submit, trigger),
                never,
                on_failure=failed,
                backoff=Backoff(initial_s=self.retry_initial_s, max_s=self.retry_max_s),
            )
            self.submitted += 1
            self._queue.task_done()

    async def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the queue to empty (the worker must be running)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            log.warning("triggers not submitted at stop count=%d", self.pending())
            return False
        return True


class TriggerLoop:
    """A daemon `Service` that checks on a timer and submits what fires, in order, until `stop()`.

    A subclass says what one check does (`_tick`) and how long to wait before the next (`_wait_s`).
    """

    def __init__(
        self, submit: Submit, *, clock: Callable[[], float], flush_timeout_s: float, task: str
    ) -> None:
        self.submitter = TriggerSubmitter(submit)
        self.flush_timeout_s = flush_timeout_s
        self._clock = clock
        self._task = task
        self._stopping = asyncio.Event()
        self._last_tick = clock()

    def _tick(self) -> None:
        raise NotImplementedError

    def _wait_s(self) -> float:
        raise NotImplementedError

    async def run(self) -> None:
        """Check at each wait and submit what fires, until `stop()`; then flush the queue."""
        drain = asyncio.create_task(self.submitter.run(), name=self._task)
        try:
            while not self._stopping.is_set():
                self._last_tick = self._clock()
                self._tick()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._wait_s()):
                        await self._stopping.wait()
            await self.submitter.flush(self.flush_timeout_s)
        finally:
            drain.cancel()
            await asyncio.wait({drain})

    async def stop(self) -> None:
        self._stopping.set()

    def healthy(self) -> bool:
        return self._clock() - self._last_tick < 30.0


@dataclass
class _Watch:
    settings: HeartbeatSettings
    last_beat: float  # monotonic
    armed: bool = True
    fired: int = 0
    beats: int = 0


class HeartbeatWatch(TriggerLoop):
    """The heartbeat watches, as a daemon `Service`; `beat()` is called by the alert consumer."""

    name = "heartbeats"

    def __init__(
        self,
        heartbeats: Sequence[HeartbeatSettings],
        submit: Submit,
        *,
        hearing: Callable[[], bool] = lambda: True,
        emit: Callable[[EventRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_wait_s: float = 1.0,
        flush_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(
            submit, clock=clock, flush_timeout_s=flush_timeout_s, task="heartbeat submits"
        )
        self.watches = [_Watch(h, last_beat=self._last_tick) for h in heartbeats]
        self.hearing = hearing
        self._emit = emit
        self._wall_ms = wall_ms
        self.max_wait_s = max_wait_s
        self._deaf = False

    # -- inputs ------------------------------------------------------------------------------

    def beat(self, source: str, ts_ms: int) -> bool:
        """Record a heartbeat sent by `source` at `ts_ms`; False if no watch has that source."""
        now = self._clock()
        age_s = max(0.0, (self._wall_ms() - ts_ms) / 1000.0)
        sent_at = now - age_s
        known = False
        for watch in self.watches:
            if watch.settings.source != source:
                continue
            known = True
            watch.beats += 1
            if sent_at > watch.last_beat:
                watch.last_beat = sent_at
            if not watch.armed and now - sent_at < watch.settings.timeout_s:
                watch.armed = True
                log.info("heartbeat back, watch re-armed source=%s", source)
                self._event(EventType.HEARTBEAT_BACK, source=source)
        return known

    def check(self) -> list[Trigger]:
        """Fire every armed watch whose producer is silent past its timeout; return the triggers."""
        now = self._clock()
        if not self.hearing():
            if not self._deaf:
                self._deaf = True
                log.warning("heartbeat watches suspended: the alerts input is down")
                self._event(EventType.HEARTBEATS_SUSPENDED)
            return []
        if self._deaf:
            self._deaf = False
            for watch in self.watches:
                watch.last_beat = max(watch.last_beat, now)
            log.info("heartbeat watches resumed with a full timeout of grace")
            self._event(EventType.HEARTBEATS_RESUMED)
        fired = []
        for watch in self.watches:
            silent_s = now - watch.last_beat
            if not watch.armed or silent_s <= watch.settings.timeout_s:
                continue
            watch.armed = False
            watch.fired += 1
            trigger = self._trigger(watch, silent_s)
            log.warning(
                "heartbeat silent, firing source=%s silent_s=%.1f trigger_id=%s",
                watch.settings.source,
                silent_s,
                trigger.id,
            )
            self._event(
                EventType.HEARTBEAT_SILENT,
                source=watch.settings.source,
                silent_s=round(silent_s, 3),
                trigger_id=trigger.id,
            )
            fired.append(trigger)
        return fired

    def next_deadline_s(self) -> float:
        """Seconds until the next armed watch would fire (at most `max_wait_s`)."""
        now = self._clock()
        waits = [w.last_beat + w.settings.timeout_s - now for w in self.watches if w.armed]
        return max(0.0, min([self.max_wait_s, *waits]))

    def _trigger(self, watch: _Watch, silent_s: float) -> Trigger:
        hb = watch.settings
        wall = self._wall_ms()
        return Trigger(
            id=f"heartbeat-{hb.source}-{wall}",
            source="heartbeat",
            mode=Mode(hb.mode),
            reason=f"no heartbeat from {hb.source} for {silent_s:.1f}s (timeout {hb.timeout_s}s)",
            scope=hb.scope.to_scope(),
            created_ms=wall,
            received_ms=wall,
            actor=hb.source,
        )

    def _event(self, event_type: EventType, **fields: object) -> None:
        if self._emit is not None:
            self._emit(make_event(event_type, **fields))

    # -- Service -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every watch's grace period now."""
        now = self._clock()
        for watch in self.watches:
            watch.last_beat = max(watch.last_beat, now)

    def _tick(self) -> None:
        for trigger in self.check():
            self.submitter.put(trigger)

    def _wait_s(self) -> float:
        return self.next_deadline_s()

    def status(self) -> str:
        if not self.watches:
            return "no watches"
        if self._deaf:
            return "suspended: alerts input down"
        silent = [w.settings.source for w in self.watches if not w.armed]
        return f"{len(self.watches)} watched, silent: {','.join(silent) or 'none'}"
