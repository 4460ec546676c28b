"""Per-second budgets as the venue counts them, by each request's arrival (BingX).

Venues that count "N a second" per account and per IP get `SlidingBudget`s: a request counts
from its send until a little over a second after its answer, so the venue sees at most N in any
second, whatever its window alignment and however long requests take to arrive. The per-IP ones
are shared by every connector of the process through `shared_budget` (accounts behind one IP
take turns), and `acquire_all` takes a slot in each of a request's budgets at one instant. Like
every budget they are `Persistent` (`exchanges.limits_file`) and cut to this daemon's share of
the venues' limits (`budget.set_fleet`).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from killswitch.exchanges.base import Priority
from killswitch.exchanges.budget import fleet, shared_item, state_until
from killswitch.exchanges.limits_file import WallClock, note_limits


class SlidingBudget:
    """At most `limit` requests per `window_s` as the venue counts them: a per-second cap.

    BingX counts "N per second" per UID and API, and per IP, by when a request reaches it. That
    is after we send it and before its answer is back, and the network or a busy loop may
    delay one request more than the next. So a request counts from the moment it is taken
    (`take`, in flight) until `span_s` after it lands (`landed`: answered, failed or given up):
    two requests of one slot are then at least `window_s` apart at the venue, whatever each
    took to arrive and whatever the venue's window alignment, so a kill never earns a 100410.
    Every `take` must be followed by one `landed`. Background reads may use only
    `background_share` of the limit (at least one). `block` holds every request until the
    venue's disabled period (a 100410 with its epoch) or a short backoff has passed. Safe for
    any number of tasks: each `acquire` reserves its slot.
    """

    def __init__(
        self,
        limit: int,
        window_s: float = 1.0,
        *,
        margin_s: float = 0.1,
        background_share: float = 0.5,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        # Our share: `limit // n` a window (so n daemons' bursts together stay within it);
        # where that is none, one per as many windows as it takes.
        daemons = fleet()
        self.limit = max(1, limit // daemons)
        self.window_s = window_s * (1 if limit >= daemons else math.ceil(daemons / limit))
        self.margin_s = margin_s
        self.background_share = background_share
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self.blocked_until = 0.0
        self.waited_s = 0.0
        self.sent = 0
        self._stamps: list[float] = []  # from when each landed request counts, sorted
        self._flying = 0  # requests taken and not landed
        # Waiting calls (id -> owner, and whether its other budgets have room): a shared
        # budget serves the ready owner it served least recently, so one account's retries
        # never starve another account's kill.
        self._waiting: dict[int, tuple[str, bool]] = {}
        self._served: dict[str, int] = {}
        self._serial = 0

    @property
    def span_s(self) -> float:
        return self.window_s + self.margin_s

    @property
    def rate_per_s(self) -> float:
        """Sustained requests per second this budget allows."""
        return self.limit / self.span_s

    def cap(self, priority: Priority) -> int:
        if priority is Priority.KILL:
            return self.limit
        return max(1, int(self.limit * self.background_share))

    def used(self) -> int:
        """Requests counted now: those in flight and those landed within the span."""
        stamps = self._stamps
        now = self.clock()
        if stamps and stamps[0] <= now - self.span_s:
            del stamps[: bisect.bisect_right(stamps, now - self.span_s)]
        return len(stamps) + self._flying

    def delay_for(self, priority: Priority = Priority.KILL) -> float:
        """Seconds until one more request fits; 0 when it fits now."""
        now = self.clock()
        if now < self.blocked_until:
            return self.blocked_until - now
        over = self.used() - self.cap(priority)
        if over < 0:
            return 0.0
        stamps = self._stamps
        if over < len(stamps):
            # The landed ones leave first, oldest first.
            return stamps[over] + self.span_s - now + 0.001
        # Only a request still in flight can free the slot: a span after it lands, no sooner.
        return self.span_s

    def take(self, owner: str = "") -> None:
        """Spend a slot now (the caller checked `delay_for`); the request is in flight."""
        self._flying += 1
        self.sent += 1
        self._serial += 1
        self._served[owner] = self._serial
        note_limits()

    def landed(self, late_s: float = 0.0) -> None:
        """A request taken earlier is answered, failed or given up: it counts `span_s` more.

        One given up without an answer may still be on its way: `late_s` is how much later
        it may yet arrive, and it counts as landed then."""
        if self._flying > 0:
            self._flying -= 1
            bisect.insort(self._stamps, self.clock() + max(0.0, late_s))
            note_limits()

    def try_take(self, priority: Priority = Priority.KILL, owner: str = "") -> bool:
        """Spend a slot now if one is free."""
        if self.delay_for(priority) > 0:
            return False
        self.take(owner)
        return True

    async def acquire(self, priority: Priority = Priority.KILL, owner: str = "") -> None:
        await acquire_all([self], priority, owner)

    # -- fairness between owners of a shared budget -------------------------------------
    def wait_as(self, call: int, owner: str, ready: bool) -> None:
        """Call `call` of `owner` waits here; `ready` when its other budgets have room."""
        self._waiting[call] = (owner, ready)

    def done_waiting(self, call: int) -> None:
        self._waiting.pop(call, None)

    def my_turn(self, owner: str) -> bool:
        """True unless another ready owner was served less recently than `owner`."""
        ready = {o for o, r in self._waiting.values() if r}
        ready.add(owner)
        if len(ready) == 1:
            return True
        best = min(ready, key=lambda o: (self._served.get(o, 0), o))
        return best == owner

    def block(self, seconds: float) -> None:
        """Send nothing for `seconds` (a venue-disabled period or a backoff)."""
        self.blocked_until = max(self.blocked_until, self.clock() + max(0.0, seconds))
        note_limits(urgent=True)

    def in_window(self) -> int:
        now = self.clock()
        return sum(1 for t in self._stamps if t > now - self.span_s) + self._flying

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """The block, and the requests still counted (`Persistent`); None when nothing."""
        now = self.clock()
        state: dict[str, Any] = {}
        until = 0.0
        if self.blocked_until > now:
            until = state["blocked_until"] = wall.out(self.blocked_until, self.clock)
        stamps = [wall.out(t, self.clock) for t in self._stamps if t > now - self.span_s]
        stamps += [wall.now] * self._flying  # on their way: they count from now
        if stamps:
            state["stamps"] = stamps
            until = max(until, max(stamps) + self.span_s)
        return state_until(state, until)

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        now = self.clock()
        blocked = state.get("blocked_until")
        if blocked is not None:
            self.blocked_until = max(self.blocked_until, wall.ends(float(blocked), self.clock))
        for stamp in state.get("stamps", ()):
            counts_from = wall.happened(float(stamp), self.clock)
            if counts_from > now - self.span_s:
                bisect.insort(self._stamps, counts_from)


FAIR_POLL_S = 0.002  # how soon a waiter that let another owner go first looks again
_CALLS = itertools.count()


async def acquire_all(
    budgets: Sequence[SlidingBudget], priority: Priority, owner: str = ""
) -> None:
    """Take one slot in each of `budgets` at one instant: wait until all have room, then spend
    in all without yielding, so a slot is never held while waiting for another. Where several
    owners wait on one budget, the one with the fewest slots lately goes first."""
    if not budgets:
        return
    call = next(_CALLS)
    try:
        while True:
            delays = [b.delay_for(priority) for b in budgets]
            delay = max(delays)
            for i, budget in enumerate(budgets):
                others = max((d for j, d in enumerate(delays) if j != i), default=0.0)
                # Owners take turns on a full budget; a background call held only by its share
                # (a kill's call would fit now) is not in the queue ahead of the kill.
                held_by_share = budget.cap(priority) <= budget.used() < budget.limit
                budget.wait_as(call, owner, others <= 0 and not held_by_share)
            if delay <= 0:
                if all(b.my_turn(owner) for b in budgets):
                    for budget in budgets:
                        budget.take(owner)
                    return
                delay = FAIR_POLL_S
            for budget in budgets:
                budget.waited_s += delay
            await budgets[0].sleep(delay)
    finally:
        for budget in budgets:
            budget.done_waiting(call)


class BudgetOptions(TypedDict, total=False):
    """`SlidingBudget`'s keyword options, with its defaults, for `shared_budget` to pass on."""

    margin_s: float
    background_share: float
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]


def shared_budget(
    scope: str, name: str, limit: int, window_s: float = 1.0, **options: Unpack[BudgetOptions]
) -> SlidingBudget:
    """The one sliding budget named `name` for `scope` (`shared_item`). The first caller's
    limit, clock and sleep win."""
    return shared_item(scope, name, lambda: SlidingBudget(limit, window_s, name=name, **options))
