"""The per-second budgets BingX needs: sliding windows, shared per-IP budgets that accounts take
turns on, and the error counter that keeps an API clear of BingX's error lock."""

from __future__ import annotations

import asyncio
import heapq

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.exchanges.budget import ErrorCounter, Priority, release_shared, use_shared
from killswitch.exchanges.sliding_budget import SlidingBudget, acquire_all, shared_budget
from tests.fakes import FakeClock


def fixed_windows_hold(stamps: list[float], limit: int, offset: float) -> bool:
    """No fixed 1 s window (starting at `offset` mod 1) holds more than `limit` stamps."""
    counts: dict[int, int] = {}
    for t in stamps:
        key = int((t - offset) // 1.0)
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0) <= limit


@given(
    limit=st.integers(1, 5),
    n=st.integers(1, 30),
    offset=st.floats(0, 1, allow_nan=False),
)
def test_no_venue_second_ever_sees_more_than_the_limit_whatever_its_alignment(
    limit: int, n: int, offset: float
) -> None:
    fake = FakeClock()
    budget = SlidingBudget(limit, clock=fake.clock, sleep=fake.sleep)
    stamps: list[float] = []

    async def run() -> None:
        for _ in range(n):
            await budget.acquire()
            stamps.append(fake.now)
            budget.landed()  # answered at once

    asyncio.run(run())
    assert fixed_windows_hold(stamps, limit, offset)
    # And it is not slower than it must be: `limit` at once, then `limit` per span.
    assert stamps[-1] - stamps[0] <= ((n - 1) // limit) * budget.span_s + 0.002 * n


class VirtualTime:
    """Time that moves only when every task waits: sleeps wake in order of their end."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._serial = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._serial += 1
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._serial, future))
        await future

    async def run(self, tasks: list[asyncio.Task[None]]) -> None:
        while not all(t.done() for t in tasks):
            for _ in range(20):  # let every task run until it waits
                await asyncio.sleep(0)
            if self._sleepers:
                wake, _, future = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                future.set_result(None)
        for task in tasks:
            task.result()


@given(
    limit=st.integers(1, 4),
    flights=st.lists(st.tuples(st.floats(0.0, 0.6), st.floats(0.0, 0.3)), min_size=1, max_size=24),
    offset=st.floats(0, 1, allow_nan=False),
)
def test_no_venue_second_sees_more_than_the_limit_however_long_requests_take_to_arrive(
    limit: int, flights: list[tuple[float, float]], offset: float
) -> None:
    """A request reaches the venue some time after it is sent and before its answer comes
    back; both spans vary (a loaded loop, a retransmit). Counted from its send, a request
    delayed on the way shares the venue's second with ones sent 1.1 s later (the 100410 a
    chaos trial earned under load); counted from its answer, it cannot."""
    time = VirtualTime()
    budget = SlidingBudget(limit, clock=time.clock, sleep=time.sleep)
    arrivals: list[float] = []

    async def one(to_venue: float, back: float) -> None:
        await acquire_all([budget], Priority.KILL, "a")
        arrivals.append(time.now + to_venue)
        await time.sleep(to_venue + back)
        budget.landed()

    async def run() -> None:
        tasks = [asyncio.ensure_future(one(a, b)) for a, b in flights]
        await time.run(tasks)

    asyncio.run(run())
    assert fixed_windows_hold(arrivals, limit, offset)


def test_background_reads_leave_room_for_the_kill() -> None:
    fake = FakeClock()
    budget = SlidingBudget(4, clock=fake.clock, sleep=fake.sleep)
    assert budget.try_take(Priority.BACKGROUND)
    assert budget.try_take(Priority.BACKGROUND)
    assert not budget.try_take(Priority.BACKGROUND)
    assert budget.try_take(Priority.KILL)
    assert budget.try_take(Priority.KILL)
    assert not budget.try_take(Priority.KILL)


def test_a_block_holds_every_request_until_it_ends() -> None:
    fake = FakeClock()
    budget = SlidingBudget(5, clock=fake.clock, sleep=fake.sleep)
    budget.block(2.5)
    assert budget.delay_for() == pytest.approx(2.5)
    asyncio.run(budget.acquire())
    assert fake.now == pytest.approx(1002.5)


async def test_an_account_with_one_request_is_not_starved_by_another_with_many() -> None:
    # Real time, tiny windows: the order of service is what counts, not how long it took.
    shared = SlidingBudget(2, window_s=0.02, margin_s=0.002)
    served: list[str] = []

    async def one(owner: str) -> None:
        await acquire_all([shared], Priority.KILL, owner)
        served.append(owner)
        shared.landed()

    busy = [asyncio.ensure_future(one("busy")) for _ in range(10)]
    await asyncio.sleep(0)
    quiet = asyncio.ensure_future(one("quiet"))
    await asyncio.gather(*busy, quiet)
    # Two slots a window: "busy" took the first two; "quiet" is next, not eleventh.
    assert served.index("quiet") <= 2


def test_the_error_counter_warns_before_the_lock_and_forgets_old_errors() -> None:
    fake = FakeClock()
    errors = ErrorCounter(limit=20, window_s=480.0, reserve=4, clock=fake.clock)
    for _ in range(15):
        errors.record("/cancel")
    assert not errors.near("/cancel")
    errors.record("/cancel")
    assert errors.near("/cancel")
    assert errors.clear_in_s("/cancel") == pytest.approx(480.0)
    assert not errors.near("/other")
    fake.now += 481.0
    assert errors.count("/cancel") == 0


def test_accounts_of_one_host_share_one_ip_budget_until_the_last_lets_go() -> None:
    use_shared("http://venue")
    use_shared("http://venue")
    a = shared_budget("http://venue", "ip /cancel", 3)
    b = shared_budget("http://venue", "ip /cancel", 3)
    other = shared_budget("http://other", "ip /cancel", 3)
    assert a is b
    assert a is not other
    release_shared("http://venue")
    assert shared_budget("http://venue", "ip /cancel", 3) is a
    release_shared("http://venue")
    assert shared_budget("http://venue", "ip /cancel", 3) is not a
    release_shared("http://venue")
    release_shared("http://other")


async def test_a_background_call_held_at_its_share_never_makes_a_kill_call_wait() -> None:
    """Fairness between owners is among calls that could go now: a background call waiting
    for its share of a full window is not ahead of a kill's call that fits."""
    t = FakeClock()
    market = SlidingBudget(90, 10.0, background_share=0.9, clock=t.clock, sleep=t.sleep)
    for _ in range(81):
        market.take("a")  # the background share is spent, and by account "a"
    held = asyncio.create_task(acquire_all([market], Priority.BACKGROUND, "b"))
    await asyncio.sleep(0)
    start = t.now
    await acquire_all([market], Priority.KILL, "a")
    assert t.now - start < 1.0  # a poll or two, not the window
    assert not held.done()
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
