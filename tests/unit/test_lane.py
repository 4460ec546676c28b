"""The loop's lane for background work (`killswitch.lane`): a turn comes when nothing else is
ready, never later than its bound, one per loop iteration, in the order asked, and a cancelled
turn holds nobody up."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from killswitch.lane import Lane, lane
from tests.conftest import never_idle


async def _hops(n: int, done: list[str], name: str) -> None:
    """A chain of `n` task steps (a kill's acknowledgement on its way to the wave)."""
    for _ in range(n):
        await asyncio.sleep(0)
    done.append(name)


async def test_a_turn_waits_for_every_other_ready_step() -> None:
    turns = Lane(asyncio.get_running_loop(), max_wait_s=60.0)
    order: list[str] = []

    async def background() -> None:
        await turns.turn()
        order.append("background")

    with turns.first():
        chain = asyncio.create_task(_hops(50, order, "chain"))
        waiting = asyncio.create_task(background())
        await asyncio.wait_for(asyncio.gather(chain, waiting), timeout=10)
    assert order == ["chain", "background"]
    assert turns.deferred >= 49


async def test_a_turn_comes_within_its_bound_on_a_loop_that_is_never_idle() -> None:
    turns = Lane(asyncio.get_running_loop(), max_wait_s=0.001)
    async with never_idle():
        with turns.first():
            for _ in range(3):
                await asyncio.wait_for(turns.turn(), timeout=10)
    assert turns.deferred > 0


async def test_turns_come_in_the_order_asked() -> None:
    turns = Lane(asyncio.get_running_loop(), max_wait_s=60.0)
    got: list[int] = []

    async def background(i: int) -> None:
        await turns.turn()
        got.append(i)

    await asyncio.wait_for(asyncio.gather(*(background(i) for i in range(5))), timeout=10)
    assert got == [0, 1, 2, 3, 4]


class _StubLoop:
    """What `Lane._tick` uses of a loop, with its clock and ready queue in the test's hands."""

    def __init__(self) -> None:
        self.now = 0.0
        self._ready: list[object] = []
        self.scheduled: list[object] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: object, *args: object) -> None:
        self.scheduled.append(callback)


async def test_every_turn_comes_within_its_bound_of_being_asked() -> None:
    """While a kill runs, a turn asked for `max_wait_s` ago comes now, whatever came between
    (review 101: the bound was timed from the last turn given, so one idle iteration in each
    2 ms let one waiter through at a time, and the thirtieth waited 46 ms)."""
    stub = _StubLoop()
    turns = Lane(stub, max_wait_s=0.002)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    waiters = [loop.create_future() for _ in range(30)]
    turns._waiters.extend((w, 0.0) for w in waiters)
    with turns.first():
        stub.now = 0.0015  # an idle moment: one turn
        turns._tick(stub)  # type: ignore[arg-type]
        assert sum(w.done() for w in waiters) == 1
        stub.now = 0.0019
        stub._ready.append("busy")  # busy, and not yet due: none
        turns._tick(stub)  # type: ignore[arg-type]
        assert sum(w.done() for w in waiters) == 1
        stub.now = 0.0021  # busy, and due: every one of them
        turns._tick(stub)  # type: ignore[arg-type]
        assert all(w.done() for w in waiters)


async def test_a_cancelled_turn_is_skipped_and_the_next_one_still_comes() -> None:
    turns = Lane(asyncio.get_running_loop(), max_wait_s=60.0)
    first = asyncio.create_task(turns.turn())
    second = asyncio.create_task(turns.turn())
    await asyncio.sleep(0)  # both are waiting
    first.cancel()
    await asyncio.wait_for(second, timeout=10)
    with pytest.raises(asyncio.CancelledError):
        await first
    # and the lane is idle again: a new turn is served
    await asyncio.wait_for(turns.turn(), timeout=10)


async def test_without_a_ready_queue_to_look_at_a_turn_comes_at_the_next_iteration() -> None:
    turns = Lane(asyncio.get_running_loop(), max_wait_s=60.0)
    turns._ready = None  # a loop that does not keep one (not CPython's)
    order: list[str] = []
    with turns.first():
        chain = asyncio.create_task(_hops(50, order, "chain"))
        await asyncio.wait_for(turns.turn(), timeout=10)
        order.append("turn")
        await chain
    assert order == ["turn", "chain"]


async def test_with_no_kill_running_a_turn_is_a_plain_yield() -> None:
    """Outside a kill the stream work keeps its old pace, a slice per loop iteration (the lane
    at first made every slice wait behind any ready work: a busy account's tracker fell behind
    its stream and the watchdog called it a gap)."""
    turns = Lane(asyncio.get_running_loop(), max_wait_s=60.0)
    order: list[str] = []
    chain = asyncio.create_task(_hops(50, order, "chain"))
    await asyncio.wait_for(turns.turn(), timeout=10)
    order.append("turn")
    await chain
    assert order == ["turn", "chain"]
    assert turns.deferred == 0


async def test_with_no_kill_running_every_turn_asked_comes_at_the_next_iteration() -> None:
    """Outside a kill, thirty accounts' events that came at once are each handled an iteration
    later, not one account an iteration (review 100: 15 ms against 1 ms before the lane)."""
    loop = asyncio.get_running_loop()
    turns = Lane(loop, max_wait_s=60.0)
    iteration = 0
    stop = asyncio.Event()

    async def count() -> None:
        nonlocal iteration
        while not stop.is_set():
            iteration += 1
            await asyncio.sleep(0)

    got: list[int] = []

    async def background() -> None:
        await turns.turn()
        got.append(iteration)

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)
    try:
        await asyncio.wait_for(asyncio.gather(*(background() for _ in range(30))), timeout=10)
    finally:
        stop.set()
        await counter
    assert len(set(got)) == 1, got


async def test_one_lane_per_loop() -> None:
    assert lane() is lane()


def test_a_lane_does_not_keep_its_loop_alive() -> None:
    """(review 100: each `Lane` held its loop, so the weak map kept every loop that asked)"""

    async def ask() -> None:
        lane()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(ask())
    finally:
        loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
