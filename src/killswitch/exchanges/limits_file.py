"""What the venues still hold against us, kept across restarts in one small file.

A restart within MEXC's 10 s window, a 418, a BingX error lock: the venue still counts them
when the next life of the daemon starts. `persist_to` keeps every budget's charges still inside
their window, its blocks and bans with their wall-clock end, and the error counts with their
times (`Persistent`, implemented by the budgets of `exchanges.budget`, `exchanges.sliding_budget`,
`exchanges.rest` and BingX's IP ban), and seeds the budgets made after it from what the last life
left there. Commands that run beside
the daemon (preflight, the live drill) read it and never write it.

Wall time is all that outlives a process, and the wall clock may have moved across the restart.
Every time read back is taken relative to when it was written (`WallClock`): a wait runs no
longer than it had left then (and never past `MAX_WAIT_S`, the longest any venue's answer can
hold us), less the time since; a charge or an error answer is as old as it was then, plus the
time since. A clock that went back holds nothing longer than the venue said (review 79: set back
30 days, it kept a 60 s throttle for 30 days); one that went forward forgets early, which only a
clock counting across boots could tell (the time since then reads longer than it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from killswitch.exchanges.dialect import MAX_WAIT_S
from killswitch.lane import lane

log = logging.getLogger("killswitch.exchanges.budget")  # logged under its name, as before

T = TypeVar("T")


def left_s(until: float, written_at: float, now: float) -> float:
    """Seconds a wait to end at `until` (wall), written at `written_at`, has left at `now`: what
    it had left when written (at most `MAX_WAIT_S`), less the time since; never negative."""
    return max(0.0, min(until - written_at, MAX_WAIT_S) - max(0.0, now - written_at))


@dataclass(frozen=True, slots=True)
class WallClock:
    """Times on the clocks of this process (monotonic, a venue clock's estimate) as wall-clock
    times and back, at one instant `now` (wall seconds): only wall time outlives a process.

    Times read back are taken relative to `written_at`, when they were written (None: now),
    after taking `shift_s` off them: how far ahead of this life's wall clock the clock that
    wrote them ran (the module docstring)."""

    now: float
    written_at: float | None = None
    shift_s: float = 0.0

    def out(self, t: float, clock: Callable[[], float]) -> float:
        """`t`, a time on `clock`, as a wall-clock time."""
        return self.now + (t - clock())

    def ends(self, wall: float, clock: Callable[[], float]) -> float:
        """`wall`, the end of a wait as written, as a time on `clock` (`left_s`)."""
        written = self.now if self.written_at is None else self.written_at
        return clock() + left_s(wall - self.shift_s, written, self.now)

    def happened(self, wall: float, clock: Callable[[], float]) -> float:
        """`wall`, the time of a charge or an error answer as written, as a time on `clock`:
        as long ago as it was when written (never after it), plus the time since."""
        written = self.now if self.written_at is None else self.written_at
        age = max(0.0, written - (wall - self.shift_s)) + max(0.0, self.now - written)
        return clock() - age


@dataclass(frozen=True, slots=True)
class _Kept:
    """A state not claimed by a budget of this life (or retired), and the times to read it by:
    when it was written and how far ahead its times run (both on this life's wall clock)."""

    state: dict[str, Any]
    written_at: float
    shift_s: float = 0.0

    def in_force_s(self, now: float) -> float:
        return left_s(float(self.state["until"]) - self.shift_s, self.written_at, now)

    def wall(self, now: float) -> WallClock:
        return WallClock(now, written_at=self.written_at, shift_s=self.shift_s)


@runtime_checkable
class Persistent(Protocol):
    """What a venue may still hold against us, saved and seeded across restarts."""

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """What is still in force, times as wall-clock times, with `until` (wall seconds) when
        none of it is any more; None when nothing is."""

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        """Take in a `limits_state` of the last life (what is past its window is dropped): its
        waits' ends read by `wall.ends`, the times of its charges and errors by
        `wall.happened`, never `wall.now` against a time as written."""


_SEED_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


class LimitsFile:
    """One file holding what every persistent budget of the process still holds: written
    atomically (a temp file, fsync, rename) off the event loop, at once after a block, a ban
    or an error answer, else at most once every `every_s` while charges change; and when a
    scope's last user goes, synchronously (that is a close, never a kill's path)."""

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float] = time.time,
        every_s: float = 1.0,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.wall = wall
        self.every_s = every_s
        # Seeds budgets, never writes (a command beside the daemon: the daemon's file is its)
        self.read_only = read_only
        self._kept = self._load()  # (scope, name) -> not claimed yet, or retired
        self._live: dict[tuple[str, str], Persistent] = {}
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()
        self._serial = 0
        self._written = 0
        self._failed = False

    def _load(self) -> dict[tuple[str, str], _Kept]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if not self.read_only:  # a command beside the daemon: nothing kept is normal
                log.warning("venue limits file missing path=%s: starting fresh", self.path)
            return {}
        except OSError as exc:
            log.warning(
                "venue limits file unreadable path=%s error=%s: starting fresh", self.path, exc
            )
            return {}
        try:
            doc = orjson.loads(raw)
            kept: dict[tuple[str, str], _Kept] = {}
            now = self.wall()
            written_at = float(doc.get("written_at", now))
            # Written ahead of now: the wall clock went back. Its times are read as if this
            # life's clock had run on from the write (`shift_s`), no time having passed since.
            ahead_s = max(0.0, written_at - now)
            if ahead_s > 0:
                log.warning(
                    "venue limits file written ahead of now path=%s ahead_s=%.1f: the wall "
                    "clock went back; remembered limits bounded by what was written",
                    self.path,
                    ahead_s,
                )
            for entry in doc["entries"]:
                # An entry carried over unclaimed keeps its own write time and shift.
                item = _Kept(
                    dict(entry["state"]),
                    float(entry.get("written_at", written_at)) - ahead_s,
                    float(entry.get("shift_s", 0.0)) + ahead_s,
                )
                if item.in_force_s(now) > 0:
                    kept[(str(entry["scope"]), str(entry["name"]))] = item
        except (orjson.JSONDecodeError, *_SEED_ERRORS) as exc:
            log.warning(
                "venue limits file corrupt path=%s error=%r: starting fresh", self.path, exc
            )
            return {}
        return kept

    def claim(self, scope: str, name: str, item: Persistent) -> None:
        """Seed `item` from what the last life left under (`scope`, `name`); keep it saved."""
        key = (scope, name)
        kept = self._kept.pop(key, None)
        if kept is not None:
            now = self.wall()
            try:
                item.seed_limits(kept.state, kept.wall(now))
            except _SEED_ERRORS as exc:
                log.warning(
                    "venue limits entry unreadable scope=%s name=%s error=%r: fresh",
                    scope,
                    name,
                    exc,
                )
            else:
                log.warning(
                    "venue limits carried over from before the restart scope=%s name=%s "
                    "in_force_s=%.1f blocked=%s",
                    scope,
                    name,
                    kept.in_force_s(now),
                    "blocked_until" in kept.state,
                )
        self._live[key] = item

    def retire(self, scope: str) -> None:
        """`scope`'s last user is gone: keep what its items hold, and write now."""
        wall = WallClock(self.wall())
        for key in [k for k in self._live if k[0] == scope]:
            state = self._live.pop(key).limits_state(wall)
            if state is not None:
                self._kept[key] = _Kept(state, wall.now)
        self.write_now()
        if not self._live and self._task is not None:
            self._task.cancel()
            self._task = None

    def changed(self, *, urgent: bool) -> None:
        """Something changed: written within `every_s`, or at once if `urgent`."""
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: written when its scope closes
            # the events belong to the writer's loop: made with it
            self._dirty, self._urgent = asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(self._flush(), name="venue limits file")
        self._dirty.set()
        if urgent:
            self._urgent.set()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        last = -math.inf
        while True:
            await self._dirty.wait()
            wait_s = last + self.every_s - loop.time()
            if wait_s > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._urgent.wait()
            await lane().turn()  # after a kill's own next steps: see `killswitch.lane`
            self._dirty.clear()
            self._urgent.clear()
            serial, data = self._encode()
            await asyncio.to_thread(self._write, serial, data)
            last = loop.time()

    def _encode(self) -> tuple[int, bytes]:
        wall = WallClock(self.wall())
        self._kept = {k: v for k, v in self._kept.items() if v.in_force_s(wall.now) > 0}
        entries: list[dict[str, Any]] = [
            {
                "scope": k[0],
                "name": k[1],
                "state": v.state,
                "written_at": v.written_at,
                "shift_s": v.shift_s,
            }
            for k, v in self._kept.items()
        ]
        for (scope, name), item in self._live.items():
            state = item.limits_state(wall)
            if state is not None:
                entries.append({"scope": scope, "name": name, "state": state})
        self._serial += 1
        return self._serial, orjson.dumps(
            {"version": 1, "written_at": wall.now, "entries": entries}
        )

    def write_now(self) -> None:
        """Write what is held now, on this thread."""
        self._write(*self._encode())

    def _write(self, serial: int, data: bytes) -> None:
        if self.read_only:
            return
        with self._write_lock:
            if serial <= self._written:
                return  # a later state is on disk already
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                if not self._failed:
                    log.warning("venue limits file not written path=%s error=%s", self.path, exc)
                self._failed = True
                return
            self._failed = False
            self._written = serial

    def close(self) -> None:
        """Write what is held now, and stop the background writer."""
        self.write_now()
        if self._task is not None:
            self._task.cancel()
            self._task = None


_STORE: LimitsFile | None = None


def persist_to(
    path: Path,
    *,
    wall: Callable[[], float] = time.time,
    every_s: float = 1.0,
    read_only: bool = False,
) -> LimitsFile:
    """Keep what the venues hold against us in `path` across restarts, and seed the budgets
    made from now on from what the last life left there (call once at start, before any
    connector is made). A missing or unreadable file starts fresh, with a warning.
    `read_only`: seed from it, never write it (`preflight`, the live drill: review 73, they
    sent into a ban the daemon had written there)."""
    global _STORE
    if _STORE is not None:
        _STORE.close()
    _STORE = LimitsFile(path, wall=wall, every_s=every_s, read_only=read_only)
    return _STORE


def stop_persisting() -> None:
    """Write what is held now, and keep nothing more (tests: the end of a process's life)."""
    global _STORE
    store, _STORE = _STORE, None
    if store is not None:
        store.close()


def persisted(scope: str, name: str, item: T) -> T:
    """`item` (a `Persistent` budget of `scope`, named `name` within it), seeded from what the
    last life left, and saved from now on while `scope` has users."""
    if _STORE is not None and isinstance(item, Persistent):
        _STORE.claim(scope, name, item)
    return item


def note_limits(*, urgent: bool = False) -> None:
    """A budget's charges changed (`urgent`: a block, a ban, an error answer)."""
    if _STORE is not None:
        _STORE.changed(urgent=urgent)


def retire(scope: str) -> None:
    """`scope`'s last user is gone: keep what its budgets hold (`LimitsFile.retire`)."""
    if _STORE is not None:
        _STORE.retire(scope)
