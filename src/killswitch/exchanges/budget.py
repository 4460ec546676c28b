"""Client-side rate budget per venue account: never earn a 429, and never a 418.

Fixed windows aligned to the wall clock, as the venues count them (Binance per calendar minute).
Cancels (`Priority.KILL`) may spend up to `1 - kill_headroom` of the window; background reads
(`Priority.BACKGROUND`: reconciliation snapshots, keep-alives) only up to `background_share`, so
a kill always finds budget. The venue's own headers (`X-MBX-USED-WEIGHT-1M`, BingX's
`X-RateLimit-Requests-Remain`) correct our count upwards. A 429 blocks the budget for
`Retry-After`; a 418 blocks it until the ban expires.

Venues that count "N a second" per account and per IP (BingX) get `SlidingBudget`s instead
(`exchanges.sliding_budget`), the per-IP ones shared by every connector of the process
(`shared_item`), and an `ErrorCounter` keeps each API clear of a lock for too many error answers.

What the venues still hold against us outlives the process (a restart within MEXC's 10 s
window, a 418, a BingX error lock): every budget here is `Persistent`, kept and seeded by
`exchanges.limits_file`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from killswitch.exchanges.base import Priority as Priority
from killswitch.exchanges.base import RateLimits
from killswitch.exchanges.limits_file import (
    Persistent,
    WallClock,
    note_limits,
    persisted,
    retire,
)

log = logging.getLogger(__name__)

# `RateBudget.headroom_known`: the share of a kill's cap that may be used for a burst to skip
# the probe. Half leaves the rest of the world the other half to spend before our burst lands.
HEADROOM_SHARE = 0.5
# How much longer than the venue's window a request counts in a sliding budget.
_SLIDE_MARGIN_S = 0.1
# A request held until others on their way are answered asks again this much later.
_PENDING_WAIT_S = 1.0

# How many daemons spend the same venue limits at once (`limits.daemons`: replicas acting on
# the same accounts, daemons sending from one IP). Each plans for its share of every limit:
# budgets and error allowances made after `set_fleet` are cut to 1/n (review 46: two daemons
# behind one IP each spent the whole per-IP limit, and earned 100410s and a 418).
_fleet = 1


def set_fleet(daemons: int) -> None:
    """Set how many daemons share the venues' limits (from the settings, before connectors)."""
    global _fleet
    if daemons < 1:
        raise ValueError(f"daemons must be >= 1, not {daemons}")
    _fleet = daemons


def fleet() -> int:
    return _fleet


def _our_share(limits: RateLimits) -> RateLimits:
    if _fleet == 1:
        return limits
    per_s = limits.max_requests_per_s
    return replace(
        limits,
        weight_per_window=max(1, limits.weight_per_window // _fleet),
        max_requests_per_s=None if per_s is None else per_s / _fleet,
    )


@dataclass(slots=True)
class _Window:
    size_s: float
    start: float = 0.0
    used: float = 0.0

    def roll(self, now: float, carry: float = 0.0) -> None:
        """Move on to the window holding `now`; a new one starts at `carry` (requests in
        flight across the boundary may arrive in it). Never back: a clock estimate that
        steps back over a boundary keeps the later window and its count."""
        start = math.floor(now / self.size_s) * self.size_s
        if start > self.start:
            self.start = start
            self.used = carry

    def resets_in(self, now: float) -> float:
        return max(0.0, self.start + self.size_s - now)


@dataclass(slots=True)
class RateBudget:
    """Weight per fixed window (and requests per second), as the venue counts them by the
    arrival of each request on its clock: `clock` should be the venue's. A request is spent
    in the window it is sent in and, when acquired `in_flight`, in each later window it is
    still in flight in (until `landed`, which must follow exactly once): it may arrive there."""

    limits: RateLimits
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    blocked_until: float = 0.0
    banned: bool = False
    waited_s: float = 0.0  # total time spent waiting for budget, for metrics
    _weight: _Window = field(init=False)
    _per_s: _Window = field(init=False)
    _flying_weight: float = 0.0  # taken and not landed
    _flying: int = 0
    venue_limit: int = field(init=False, default=0)
    fleet: int = field(init=False, default=1)  # daemons sharing the limit when it was made
    # Where the venue does not say where its windows start (`windows_aligned` False), a
    # request counts from when it is taken until a window after it lands, on this clock (a
    # step of the venue clock's estimate cannot shorten it): no window of the venue's, wherever
    # it starts, holds more than the cap (review 48/49: fixed windows of ours could put two
    # caps' worth in one of MEXC's; two windows' worth of caution halved a kill's throughput).
    mono: Callable[[], float] = time.monotonic
    _slide: list[tuple[float, float]] = field(init=False, default_factory=list)
    # Weight promised to requests that may be left out (`spare`): (mono until, weight).
    _promised: list[tuple[float, float]] = field(init=False, default_factory=list)
    heard_at: float = -math.inf  # `clock` time the venue last told us what is used
    asked_at: float = -math.inf  # `clock` time someone last asked it (`due_for_news`)

    def __post_init__(self) -> None:
        self.venue_limit = self.limits.weight_per_window  # the venue's, for its own counts
        self.fleet = _fleet
        self.limits = _our_share(self.limits)
        self._weight = _Window(self.limits.window_s)
        self._per_s = _Window(1.0)

    def _roll(self, now: float) -> None:
        self._weight.roll(now, self._flying_weight)
        self._per_s.roll(now, float(self._flying))

    def cap(self, priority: Priority) -> float:
        share = (
            1.0 - self.limits.kill_headroom
            if priority is Priority.KILL
            else self.limits.background_share
        )
        return max(1.0, self.limits.weight_per_window * share)

    def delay_for(self, weight: int, priority: Priority) -> float:
        """Seconds to wait before a request of `weight` fits; 0 when it fits now."""
        now = self.clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        self._roll(now)
        cap = self.cap(priority)
        if not self.limits.windows_aligned:
            return self._slide_delay(weight, cap)
        if self._weight.used + weight > cap:
            return self._weight.resets_in(now) + 0.001
        rps = self.limits.max_requests_per_s
        if rps is not None and self._per_s.used + 1 > rps:
            return self._per_s.resets_in(now) + 0.001
        return 0.0

    async def acquire(
        self, weight: int, priority: Priority = Priority.KILL, *, in_flight: bool = False
    ) -> None:
        """Wait until `weight` fits under the cap for `priority`, then spend it; `in_flight`:
        a request now on its way, counted in later windows too until `landed`."""
        while (delay := self.delay_for(weight, priority)) > 0:
            self.waited_s += delay
            await self.sleep(delay)
        self._weight.used += weight
        self._per_s.used += 1
        if in_flight:
            self._flying_weight += weight
            self._flying += 1
        elif not self.limits.windows_aligned:
            self._slide.append((self.mono() + self.limits.window_s + _SLIDE_MARGIN_S, weight))
        note_limits()

    def landed(self, weight: int, *, late_s: float = 0.0) -> None:
        """A request acquired `in_flight` is answered, failed or given up (then it may still
        arrive `late_s` from now). The window rolls first: a window that began while it was on
        its way counts it."""
        self._roll(self.clock())
        self._flying_weight = max(0.0, self._flying_weight - weight)
        self._flying = max(0, self._flying - 1)
        if not self.limits.windows_aligned:
            # it may have arrived any time until now (+ late_s): it counts a window past that
            expires = self.mono() + late_s + self.limits.window_s + _SLIDE_MARGIN_S
            self._slide.append((expires, weight))
        note_limits()

    def _slide_used(self) -> float:
        now = self.mono()
        self._slide = [stamp for stamp in self._slide if stamp[0] > now]
        return self._flying_weight + sum(w for _, w in self._slide)

    def _slide_delay(self, weight: int, cap: float) -> float:
        """Seconds until `weight` more fits in any window of the venue's; 0 when it does."""
        over = self._slide_used() + weight - cap
        if over <= 0:
            return 0.0
        now = self.mono()
        for expires, w in sorted(self._slide):
            over -= w
            if over <= 0:
                return expires - now + 0.001
        return 0.05  # what is in flight must land first

    def observe_used(self, used: int) -> None:
        """The venue says this much weight is used in the current window: of its whole limit,
        the other daemons' shares (`set_fleet`) are theirs to spend, ours is what is left."""
        now = self.clock()
        self._roll(now)
        # what the venue counts for the whole IP, shared out: the daemons' additions then stay
        # within the limit together, whoever spent the rest (review 49)
        self._weight.used = max(self._weight.used, float(used) / self.fleet)
        self.heard_at = now
        note_limits()

    def spare(self, weight: int, share: float, hold_s: float) -> bool:
        """May a request that can be left out (a kill's first look) take `weight` now? Only
        while it fits and, with what is used and what was promised to other such requests in
        the last `hold_s` (decided at once, before any of them is sent), at most `share` of a
        kill's cap is taken; its weight is then promised for `hold_s` (counted twice once sent:
        that only makes later ones rarer)."""
        if self.delay_for(weight, Priority.KILL) > 0:
            return False
        now = self.mono()
        self._promised = [(until, w) for until, w in self._promised if until > now]
        promised = sum(w for _, w in self._promised)
        if self.used + promised + weight > self.cap(Priority.KILL) * share:
            return False
        self._promised.append((now + hold_s, weight))
        return True

    def headroom_known(self, within_s: float, share: float = HEADROOM_SHARE) -> bool:
        """The venue said, at most `within_s` ago, that at most `share` of what a kill may
        spend is used, and nothing has throttled us since: a burst needs no probe first."""
        now = self.clock()
        if self.banned or now < self.blocked_until or now - self.heard_at > within_s:
            return False
        return self.used <= self.cap(Priority.KILL) * share

    def due_for_news(self, every_s: float) -> bool:
        """True, once per `every_s`, when the venue has not told anyone sharing this budget
        what is used for that long: the caller should ask it (a cheap request)."""
        now = self.clock()
        if now - max(self.heard_at, self.asked_at) < every_s:
            return False
        self.asked_at = now
        return True

    def observe_remaining(self, remaining: int) -> None:
        """The venue says this many requests remain in the current window."""
        self.observe_used(self.venue_limit - remaining)

    def block(self, seconds: float, *, banned: bool = False) -> None:
        """A 429 or 418: send nothing for `seconds`."""
        self.blocked_until = max(self.blocked_until, self.clock() + max(0.0, seconds))
        self.banned = self.banned or banned
        note_limits(urgent=True)

    @property
    def used(self) -> float:
        self._roll(self.clock())
        if not self.limits.windows_aligned:
            return self._slide_used()
        return self._weight.used

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """What the venue still counts against us (`Persistent`): the block, and the charges
        of the window (or, sliding, those not yet out of it); None when nothing."""
        now = self.clock()
        self._roll(now)
        state: dict[str, Any] = {}
        until = 0.0
        if self.blocked_until > now:
            until = state["blocked_until"] = wall.out(self.blocked_until, self.clock)
            state["banned"] = self.banned
        if self.limits.windows_aligned:
            if self._weight.used > 0:
                start = self._weight.start
                state["window"] = [wall.out(start, self.clock), self._weight.used]
                until = max(until, wall.out(start + self._weight.size_s, self.clock))
        else:
            mono = self.mono()
            slide = [[wall.out(e, self.mono), w] for e, w in self._slide if e > mono]
            if self._flying_weight > 0:
                # on its way: it may arrive as late as its recvWindow lets it, and counts a
                # window past that
                ends = mono + _IN_FLIGHT_LATE_S + self.limits.window_s + _SLIDE_MARGIN_S
                slide.append([wall.out(ends, self.mono), self._flying_weight])
            if slide:
                state["slide"] = slide
                until = max(until, *(e for e, _ in slide))
        return state_until(state, until)

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        """Take in what a `limits_state` of the last life says the venue still counts."""
        now = self.clock()
        blocked = state.get("blocked_until")
        ends = None if blocked is None else wall.ends(float(blocked), self.clock)
        if ends is not None and ends > now:
            self.blocked_until = max(self.blocked_until, ends)
            self.banned = self.banned or bool(state.get("banned"))
        window = state.get("window")
        if window is not None and self.limits.windows_aligned:
            size = self._weight.size_s
            start = wall.happened(float(window[0]), self.clock)
            # the same window of the venue's (a start read back within a clock's error of it)
            if round(start / size) == math.floor(now / size):
                self._weight.start = math.floor(now / size) * size
                self._weight.used = max(self._weight.used, float(window[1]))
        if not self.limits.windows_aligned:
            mono = self.mono()
            for counted_until, weight in state.get("slide", ()):
                expires = wall.ends(float(counted_until), self.mono)
                if expires > mono:
                    self._slide.append((expires, float(weight)))


class ErrorCounter:
    """Error answers per endpoint in a sliding window, to stay clear of a venue's error lock.

    BingX locks an API of an account after more than `limit` answers with one error code inside
    `window_s` ("over 20 error code:... requests within 480000 ms for this api"). `near(path)`
    says a path has had `limit - reserve` errors or more in the window: the caller then takes a
    route that cannot add one (a batch cancel answers a gone id inside a success), or waits.
    Whose count it is the venue does not say: with `shared` (the count of every account behind
    our IP) each error counts in both, and the larger count decides.

    With `set_fleet(n)`, `limit` is this daemon's share, `limit // n` (at least one): the
    daemons' counts together never pass the venue's allowance (review 66: a share floored at
    `reserve + 1` let six daemons spend 24 of 20). `reserve` then only makes cancels take the
    route that cannot add an error sooner; what a request may spend is `hold_s`'s.

    A request on its way (`begin` to `end`: charged, waiting for its slot, or sent and not yet
    answered) counts as an error it may earn: a wave sends its requests at once, and counting
    only answers already back let 26 single cancels of gone orders pass the checks at a count of
    0 and earn the lock (review 78).
    """

    def __init__(
        self,
        limit: int = 20,
        window_s: float = 480.0,
        *,
        reserve: int = 4,
        clock: Callable[[], float] = time.monotonic,
        shared: ErrorCounter | None = None,
    ) -> None:
        # our share of the allowance: the fleet's shares add up to at most the venue's
        self.limit = max(1, limit // _fleet)
        self.window_s = window_s
        self.reserve = reserve
        self.clock = clock
        self.shared = shared
        self._errors: dict[str, deque[float]] = {}
        self._pending: dict[str, int] = {}  # requests on their way, by path
        self._ended: asyncio.Event | None = None  # set (and dropped) when one of them ends

    def begin(self, path: str) -> None:
        """A request on `path` is on its way: until `end`, it counts as an error it may earn."""
        self._pending[path] = self._pending.get(path, 0) + 1
        if self.shared is not None:
            self.shared.begin(path)

    def end(self, path: str) -> None:
        """The request `begin` counted is answered (its error, if any, `record`ed first), failed
        or never sent."""
        left = self._pending.get(path, 0) - 1
        if left > 0:
            self._pending[path] = left
        else:
            self._pending.pop(path, None)
        if self._ended is not None:
            self._ended.set()
            self._ended = None
        if self.shared is not None:
            self.shared.end(path)

    def held_by_pending(self, path: str, priority: Priority) -> bool:
        """Whether `hold_s` holds `path` only for requests on their way: the errors answered
        alone leave room, and the hold ends when enough of them land without one."""
        landed = self._own_count(path)
        if self.shared is not None:
            landed = max(landed, self.shared._own_count(path))
        return landed < self._held_at(priority)

    async def one_ends(self) -> None:
        """Wait until a request on its way (behind our IP, where the count is shared) ends."""
        counter = self.shared if self.shared is not None else self
        if counter._ended is None:
            counter._ended = asyncio.Event()
        await counter._ended.wait()

    def record(self, path: str) -> None:
        self._errors.setdefault(path, deque()).append(self.clock())
        if self.shared is not None:
            self.shared.record(path)
        note_limits(urgent=True)  # rare, and each one is what a lock is counted from

    def count(self, path: str) -> int:
        """Errors in the window and requests on their way, in the count that decides."""
        own = self._own_count(path) + self._pending.get(path, 0)
        return own if self.shared is None else max(own, self.shared.count(path))

    def _own_count(self, path: str) -> int:
        errors = self._errors.get(path)
        if not errors:
            return 0
        now = self.clock()
        while errors and errors[0] <= now - self.window_s:
            errors.popleft()
        return len(errors)

    def near(self, path: str) -> bool:
        return self.count(path) >= self.limit - self.reserve

    def clear_in_s(self, path: str, below: int | None = None) -> float:
        """Seconds until `path` is back under `below` errors (its reserve when not given), in
        every count that decides."""
        below = self.limit - self.reserve if below is None else max(1, below)
        shared = 0.0 if self.shared is None else self.shared.clear_in_s(path, below)
        errors = self._errors.get(path)
        # Requests on their way leave room only once answered: the caller waits and asks again.
        below -= self._pending.get(path, 0)
        if below <= 0:
            return max(shared, _PENDING_WAIT_S)
        if not errors or self._own_count(path) < below:
            return shared
        oldest_needed = errors[len(errors) - below]
        return max(shared, oldest_needed + self.window_s - self.clock())

    def hold_s(self, path: str, priority: Priority) -> float:
        """Seconds a request on `path` waits, so that an error it may earn cannot lock the
        API (0: none). A kill's may spend the allowance but its last (a share of one: that
        one); a background one (a reconcile) and a latched sweep's read (`keeping_kill_reserve`)
        only its first half, which keeps the rest for kills: on a venue that answers an empty
        read with an error code, periodic reads of an idle account would otherwise spend it
        all (review 66: sweeps of a flat account read as kills spent it to its last, and a
        one-shot cancel's verification read was then held until its deadline)."""
        held_at = self._held_at(priority)
        if self.count(path) < held_at:
            return 0.0
        return max(1.0, self.clear_in_s(path, held_at))

    def _held_at(self, priority: Priority) -> int:
        kill = priority is Priority.KILL and not _KEEP_KILL_RESERVE.get()
        return max(1, self.limit - 1 if kill else self.limit // 2)

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """The error answers still inside the window, by path (`Persistent`)."""
        now = self.clock()
        errors = {
            path: [wall.out(t, self.clock) for t in times if t > now - self.window_s]
            for path, times in self._errors.items()
        }
        errors = {path: times for path, times in errors.items() if times}
        if not errors:
            return None
        return {"errors": errors, "until": max(map(max, errors.values())) + self.window_s}

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        now = self.clock()
        for path, times in dict(state["errors"]).items():
            local = [wall.happened(float(t), self.clock) for t in times]
            kept = [
                *self._errors.get(str(path), ()),
                *(t for t in local if t > now - self.window_s),
            ]
            self._errors[str(path)] = deque(sorted(kept))


# Set while a latched sweep reads (`keeping_kill_reserve`): its requests may spend an error
# allowance only as a background read does. A context variable, not a priority: a sweep's reads
# keep a kill's shape everywhere else (review 62: a MEXC read at background priority checks
# only two known symbols by name).
_KEEP_KILL_RESERVE: ContextVar[bool] = ContextVar("keep_kill_reserve", default=False)


@contextlib.contextmanager
def keeping_kill_reserve(keep: bool = True) -> Iterator[None]:
    """Requests sent inside (by this task, and tasks it starts) leave what error allowances
    keep for kills alone, whatever their priority; `keep` False changes nothing."""
    if not keep:
        yield
        return
    token = _KEEP_KILL_RESERVE.set(True)
    try:
        yield
    finally:
        _KEEP_KILL_RESERVE.reset(token)


_SHARED: dict[tuple[str, str], object] = {}
_USERS: dict[str, int] = {}
T = TypeVar("T")


def shared_item(scope: str, name: str, make: Callable[[], T]) -> T:
    """The one object named `name` for `scope` (a venue host: every account behind our IP) in
    this process, made by the first caller's `make`. Pair each scope's users with `use_shared`
    / `release_shared`, so a scope nobody uses any more is forgotten."""
    key = (scope, name)
    item = _SHARED.get(key)
    if item is None:
        item = _SHARED[key] = make()
        if isinstance(item, Persistent):
            persisted(scope, name, item)
    return cast(T, item)


def use_shared(scope: str) -> None:
    """One more user of `scope`'s shared budgets."""
    _USERS[scope] = _USERS.get(scope, 0) + 1


def shared_users(scope: str) -> int:
    """How many users `scope`'s shared budgets have now (0 when none)."""
    return _USERS.get(scope, 0)


def release_shared(scope: str) -> None:
    """One user fewer; the last one drops `scope`'s shared budgets."""
    left = _USERS.get(scope, 0) - 1
    if left > 0:
        _USERS[scope] = left
        return
    _USERS.pop(scope, None)
    for key in [k for k in _SHARED if k[0] == scope]:
        del _SHARED[key]
    retire(scope)  # what the scope's budgets hold, kept for the next life


# -- what outlives the process ------------------------------------------------------------------

# A request on its way when the process ends may still reach the venue as late as its
# recvWindow lets it (5 s by default; `rest.UNANSWERED_LATE_S`).
_IN_FLIGHT_LATE_S = 5.0


def state_until(state: dict[str, Any], until: float) -> dict[str, Any] | None:
    """A `limits_state` with `until` (wall seconds), when the venue counts none of it any more;
    None when it holds nothing."""
    if not state:
        return None
    state["until"] = until
    return state
