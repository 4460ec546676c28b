"""The readiness checks in the daemon: a round at start and every few minutes, each account's
reason now (the last round with its stream's state), and an event each time it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from killswitch.events import EventSink, EventType, make_event
from killswitch.model import AccountRef
from killswitch.readiness.checks import (
    DEFAULT_TIMEOUT_S,
    AccountReadiness,
    Check,
    Target,
    check_account,
    duration,
)

log = logging.getLogger("killswitch.readiness")  # logged under its name, as before

DEFAULT_INTERVAL_S = 300.0  # "every few minutes"
DEFAULT_STREAM_GRACE_S = 60.0  # a stream down shorter than this is a reconnect, not unready
# How long the daemon's start waits for the first round before READY: a venue that does not
# answer, or checks queued on a shared per-IP budget (BingX), must not hold back the inputs.
DEFAULT_START_WAIT_S = 2.0


@dataclass(slots=True)
class _Watched:
    target: Target
    stream: str | None  # the stream supervisor's last state; None: no stream watched
    last: AccountReadiness | None = None
    not_live_since: float | None = None
    stream_reason: str = ""
    reported: str | None = "unchecked"  # the reason last announced (None: ready)


@dataclass(eq=False)
class ReadinessService:
    """The checks in the daemon: at start, then every `interval_s`; a daemon `Service`.

    `not_ready(ref)` is the engine's `Account.not_ready` hook: the reason now, combining the
    last round's answer with the stream's state (down longer than `stream_grace_s`). Each
    change of an account's reason is announced once: an `alarm` event (kind `not_ready`) when it
    becomes unready or its reason changes, an `account_ready` event when it is ready again.
    """

    events: EventSink
    _: KW_ONLY
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    stream_grace_s: float = DEFAULT_STREAM_GRACE_S
    start_wait_s: float = DEFAULT_START_WAIT_S
    tick_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    name: str = field(default="readiness", init=False)
    rounds: int = field(default=0, init=False)
    _first: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _watched: dict[AccountRef, _Watched] = field(default_factory=dict, init=False, repr=False)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _recheck: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def add(self, target: Target, *, watch_stream: bool = False) -> None:
        """Check `target`; with `watch_stream`, also its stream (fed through `on_state`)."""
        stream = "down" if watch_stream else None
        self._watched[target.ref] = _Watched(target, stream, not_live_since=self.clock())

    def stream_state(self, ref: AccountRef) -> Callable[[], str]:
        """The engine's `Account.stream_state` hook: the stream's last state, for status."""
        return lambda: self._watched[ref].stream or "unknown"

    def not_ready(self, ref: AccountRef) -> Callable[[], str | None]:
        """The engine's hook for one account."""
        return lambda: self.reason(ref)

    def reason(self, ref: AccountRef) -> str | None:
        watched = self._watched[ref]
        if watched.last is not None and not watched.last.ready:
            return watched.last.reason
        stream = self._stream_reason(watched)
        if stream is not None:
            return stream
        if watched.last is None:
            return "not checked yet"
        return None

    def _stream_reason(self, watched: _Watched) -> str | None:
        if watched.stream is None or watched.not_live_since is None:
            return None
        down_s = self.clock() - watched.not_live_since
        if down_s < self.stream_grace_s:
            return None
        why = f": {watched.stream_reason}" if watched.stream_reason else ""
        return f"stream down {duration(down_s)}{why}"

    def on_state(self, ref: AccountRef, state: object, reason: str) -> None:
        """A stream supervisor's `on_state`: remember since when it is not live, and why."""
        watched = self._watched.get(ref)
        if watched is None:
            return
        value = str(getattr(state, "value", state))
        if watched.stream is not None:
            watched.stream = value
        if value == "live":
            watched.not_live_since = None
            watched.stream_reason = ""
        else:
            if watched.not_live_since is None:
                watched.not_live_since = self.clock()
            watched.stream_reason = reason
        self.announce()

    def results(self) -> dict[str, dict[str, object]]:
        """The last round per account, with the reason now (for `status --json`)."""
        out: dict[str, dict[str, object]] = {}
        for ref, watched in self._watched.items():
            entry = watched.last.to_json() if watched.last is not None else {"checks": []}
            reason = self.reason(ref)
            entry.update(ready=reason is None, reason=reason or "")
            out[str(ref)] = entry
        return out

    async def check_all(self) -> None:
        """One round over every account, in parallel. A bug in a check is logged and the
        account reported not ready with it; it never stops the daemon."""
        watched = list(self._watched.values())
        results = await asyncio.gather(
            *(check_account(w.target, stream=False, dms=False, timeout_s=self.timeout_s)
              for w in watched),
            return_exceptions=True,
        )  # fmt: skip
        for w, result in zip(watched, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.error("readiness check crashed account=%s", w.target.ref, exc_info=result)
                reason = f"readiness check failed: {type(result).__name__}"
                result = AccountReadiness(
                    w.target.ref.venue, w.target.ref.account, [Check("key", False, reason)]
                )
            w.last = result
        self.rounds += 1
        self.announce()

    def announce(self) -> None:
        """Emit one event per account whose reason changed since the last announcement."""
        for ref, watched in self._watched.items():
            if watched.last is None:
                continue  # nothing known yet: "not checked" is not news
            reason = self.reason(ref)
            if reason == watched.reported:
                continue
            first = watched.reported == "unchecked"
            watched.reported = reason
            if reason is not None:
                log.error("account not ready account=%s reason=%s", ref, reason)
                self.events.emit(
                    make_event(EventType.ALARM, account=str(ref), kind="not_ready", reason=reason)
                )
            elif not first:
                log.warning("account ready again account=%s", ref)
                self.events.emit(make_event(EventType.ACCOUNT_READY, account=str(ref)))

    def recheck(self) -> None:
        """Run the next round now."""
        self._recheck.set()

    # -- service -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the first round; wait for it at most `start_wait_s` (it goes on in `run`)."""
        self._first = asyncio.create_task(self._first_round(), name="readiness first round")
        await asyncio.wait({self._first}, timeout=self.start_wait_s)
        if not self._first.done():
            log.warning(
                "readiness: first round still running after %.1f s; READY without it",
                self.start_wait_s,
            )

    async def _first_round(self) -> None:
        await self.check_all()
        unready = [(r, self.reason(r)) for r in self._watched]
        unready = [(r, why) for r, why in unready if why is not None]
        if unready and len(unready) == len(self._watched):
            log.critical(
                "NO account is ready; the daemon runs and retries every %.0f s: %s",
                self.interval_s,
                "; ".join(f"{r}: {why}" for r, why in unready),
            )

    async def run(self) -> None:
        first = self._first
        if first is not None:
            try:
                await asyncio.wait({first})
            finally:
                first.cancel()
            error = None if first.cancelled() else first.exception()
            if error is not None:
                raise error
        next_round = self.clock() + self.interval_s
        while not self._stopped.is_set():
            wait = max(0.0, min(self.tick_s, next_round - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._recheck.wait()
            if self._stopped.is_set():
                return
            if self._recheck.is_set() or self.clock() >= next_round:
                self._recheck.clear()
                await self.check_all()
                next_round = self.clock() + self.interval_s
            else:
                self.announce()

    async def stop(self) -> None:
        self._stopped.set()
        self._recheck.set()
        if self._first is not None:
            self._first.cancel()

    def healthy(self) -> bool:
        # An unready account is the venue's state or the operator's to fix, not a wedged daemon.
        return True

    def status(self) -> str:
        unready = [(r, self.reason(r)) for r in self._watched]
        unready = [(r, why) for r, why in unready if why is not None]
        total = len(self._watched)
        if not unready:
            return f"{total}/{total} accounts ready"
        named = "; ".join(f"{r}: {why}" for r, why in unready)
        return f"{total - len(unready)}/{total} accounts ready; NOT READY {named}"
