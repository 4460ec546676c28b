"""What the engine is given: accounts, their trackers, timing, and the seams for time and tasks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from killswitch.events import EventRecord, EventType
from killswitch.exchanges.base import Exchange
from killswitch.model import AccountRef, Snapshot

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class Emit(Protocol):
    """Records one event of the given type (the engine's `_emit`)."""

    def __call__(self, event_type: EventType, /, **fields: object) -> EventRecord: ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """The engine's seams, handed to each of its parts: time, waits, jitter and events. Every
    wait goes through `sleep` and every reading of time through `clock`: tests drive both."""

    clock: Clock
    sleep: Sleep
    rng: random.Random
    emit: Emit


class Spawn(Protocol):
    """Start a coroutine as a task (the daemon's `CriticalTasks.spawn`)."""

    def __call__(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]: ...


class TrackerView(Protocol):
    """What the engine reads from an account's order tracker (`streams.tracker.OrderTracker`)."""

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
    # What the connector learned of how this account's venue behaves (BingX §3.7), for status.
    learned: Callable[[], dict[str, object]] | None = None
    # True while the venue itself said, moments ago, that the account's limits have ample room:
    # a kill's first burst needs no probe (`kill.gate`). None: never known, probe after quiet.
    headroom_known: Callable[[], bool] | None = None
    # Whether a kill's first look (a read of the symbols given, None: all, beside its first
    # cancels) may spend the venue's budget now, or should leave it to the verification read
    # after them (`VenueConnector.first_look_fits`). None: always look.
    first_look_fits: Callable[[Sequence[str] | None], bool] | None = None

    def status(self, dead_mans_switch: str, last_sweep: str) -> dict[str, object]:
        """What `killswitch status` shows of the account."""
        entry: dict[str, object] = {
            "venue": self.ref.venue,
            "account": self.ref.account,
            "stream": self.stream_state() if self.stream_state else "unknown",
            "dead_mans_switch": dead_mans_switch,
            "last_sweep": last_sweep,
        }
        reason = self.not_ready() if self.not_ready is not None else None
        entry["ready"] = reason is None
        entry["reason"] = reason or ""
        if self.learned is not None:
            entry["learned"] = self.learned()
        if self.tracker is not None:
            view = self.tracker.as_snapshot()
            entry["open_orders"] = len(view.orders)
            entry["open_lists"] = len(view.lists)
            entry["tracker_trusted"] = self.tracker.trusted
        return entry


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
