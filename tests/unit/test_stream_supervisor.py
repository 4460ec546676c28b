"""StreamSupervisor against an in-test fake Exchange whose user stream the test drives."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from killswitch.exchanges.base import (
    BatchResult,
    CancelAck,
    Capabilities,
    DeadMansSwitchState,
    Exchange,
    Fatal,
    RateLimited,
    Transient,
    VenueError,
)
from killswitch.exchanges.budget import Priority
from killswitch.lane import lane
from killswitch.model import (
    AccountRef,
    ExecType,
    ListEvent,
    Order,
    OrderEvent,
    OrderKey,
    Snapshot,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)
from killswitch.streams import supervisor as supervisor_module
from killswitch.streams.supervisor import StreamState, StreamSupervisor, _End
from killswitch.streams.tracker import OrderTracker
from tests.conftest import eventually, never_idle

_CLOSE = object()


@dataclass
class FakeConnection:
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    closed: bool = False


class FakeExchange:
    """A venue account in memory: a book, user streams the test can drop, silence or end."""

    venue = "fake"
    account = "acct"
    capabilities = Capabilities(
        cancel_all_max_symbols=1,
        cancel_all_without_symbol=False,
        cancel_all_covers_lists=True,
        batch_cancel_max=0,
        has_order_lists=True,
        open_orders_without_symbol=True,
        dead_mans_switch=False,
    )

    def __init__(self) -> None:
        self.book: dict[str, Order] = {}
        self.time_ms = 1_000_000
        self.connections: list[FakeConnection] = []
        self.connected = asyncio.Event()
        self.silent = False  # connected, but events are not delivered (ws_silent)
        self.held: list[object] | None = None  # events delayed until release_held()
        self.connect_errors: list[Exception] = []  # raised by the next connects, in order
        self.iterator_errors: list[Exception] = []
        self.snapshot_errors: list[VenueError] = []
        self.snapshot_gate: asyncio.Event | None = None
        self.snapshot_started = asyncio.Event()
        self.release_after_snapshot = False
        self.snapshot_priorities: list[Priority] = []
        self.subscribe_gate: asyncio.Event | None = None  # holds back the venue's confirmation

    # -- the venue side: another client places and cancels ---------------------------------
    def place(self, order_id: str, symbol: str = "BTCUSDT") -> None:
        self.time_ms += 1
        self.book[order_id] = Order(symbol, order_id, f"c{order_id}", time_ms=self.time_ms)
        self._publish(
            OrderEvent(symbol, order_id, f"c{order_id}", ExecType.NEW, "NEW", True, self.time_ms)
        )

    def cancel(self, order_id: str) -> None:
        self.time_ms += 1
        gone = self.book.pop(order_id)
        self._publish(
            OrderEvent(
                gone.symbol, order_id, "x", ExecType.CANCELED, "CANCELED", False, self.time_ms
            )
        )

    def _publish(self, item: object) -> None:
        if self.silent:
            return
        if self.held is not None:
            self.held.append(item)
            return
        for conn in self.live():
            conn.queue.put_nowait(item)

    def release_held(self) -> None:
        held, self.held = self.held or [], None
        for item in held:
            self._publish(item)

    def live(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed]

    def drop(self, error: Exception | None = None) -> None:
        for conn in self.live():
            conn.queue.put_nowait(error or Transient("connection lost", venue=self.venue))

    def terminate(self, reason: str) -> None:
        for conn in self.live():
            conn.queue.put_nowait(StreamTerminated(reason))

    def end(self) -> None:
        for conn in self.live():
            conn.queue.put_nowait(_CLOSE)

    # -- the Exchange protocol -------------------------------------------------------------
    def user_stream(self) -> AsyncIterator[StreamEvent]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[StreamEvent]:
        if self.connect_errors:
            raise self.connect_errors.pop(0)
        conn = FakeConnection()
        self.connections.append(conn)
        self.connected.set()
        try:
            if self.subscribe_gate is not None:
                await self.subscribe_gate.wait()
            yield StreamSubscribed()
            while True:
                item = await conn.queue.get()
                if item is _CLOSE:
                    return
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, OrderEvent | ListEvent | StreamTerminated)
                yield item
                if isinstance(item, StreamTerminated):
                    return
                if self.iterator_errors:
                    raise self.iterator_errors.pop(0)
        finally:
            conn.closed = True

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        self.snapshot_priorities.append(priority)
        result = Snapshot(orders=tuple(self.book.values()), server_time_ms=self.time_ms)
        self.snapshot_started.set()
        if self.snapshot_gate is not None:
            await self.snapshot_gate.wait()
        if self.snapshot_errors:
            raise self.snapshot_errors.pop(0)
        if self.release_after_snapshot:
            self.release_held()
        return result

    async def start(self) -> None:
        return

    async def close(self) -> None:
        return

    async def server_time_ms(self) -> int:
        return self.time_ms

    async def resync_clock(self) -> None:
        return

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        return {}

    async def cancel_all(self, symbols: Sequence[str] | None) -> CancelAck:
        raise Fatal("not used here")

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        raise Fatal("not used here")

    async def cancel_orders(self, symbol: str, order_ids: Sequence[str]) -> BatchResult:
        raise Fatal("not used here")

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        raise Fatal("not used here")

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        raise Fatal("not used here")

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        raise Fatal("not used here")


class SleepRecorder:
    """Stands in for asyncio.sleep in backoffs: records the delay, waits for the test if held."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.called = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)


class CeilingRandom(random.Random):
    """Full jitter draws uniform(0, ceiling); this one records the bounds and returns the top."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Harness:
    exchange: FakeExchange
    tracker: OrderTracker
    supervisor: StreamSupervisor
    sleep: SleepRecorder
    events: list[OrderEvent | ListEvent]
    states: list[tuple[StreamState, str]]
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.supervisor.run())

    def venue_ids(self) -> set[str]:
        return set(self.exchange.book)

    def tracked_ids(self) -> set[str]:
        return {o.order_id for o in self.tracker.open_orders()}


class Make(Protocol):
    def __call__(self, **options: Any) -> Harness: ...


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Build a fake exchange, a tracker and a supervisor; cancel every run at teardown."""
    made: list[Harness] = []

    def build(**options: Any) -> Harness:
        exchange = FakeExchange()
        tracker = OrderTracker(AccountRef("fake", "acct"))
        sleep = SleepRecorder()
        events: list[OrderEvent | ListEvent] = []
        states: list[tuple[StreamState, str]] = []
        supervisor = StreamSupervisor(
            exchange,
            tracker,
            on_event=lambda ref, ev: events.append(ev),
            on_state=lambda ref, st, why: states.append((st, why)),
            **{"reconcile_interval_s": None, "sleep": sleep, **options},
        )
        h = Harness(exchange, tracker, supervisor, sleep, events, states)
        made.append(h)
        return h

    yield build
    for h in made:
        if h.task is not None:
            h.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await h.task


async def test_fake_exchange_satisfies_the_exchange_protocol() -> None:
    assert isinstance(FakeExchange(), Exchange)


async def test_goes_live_from_the_snapshot_then_follows_stream_events(make: Make) -> None:
    h = make()
    h.exchange.place("1")
    h.exchange.place("2", "ETHUSDT")
    h.start()
    assert await h.supervisor.wait_live(5)
    assert h.supervisor.state is StreamState.LIVE
    assert h.tracker.trusted
    assert h.tracked_ids() == {"1", "2"}
    h.exchange.place("3")
    h.exchange.cancel("1")
    await eventually(lambda: h.tracked_ids() == {"2", "3"})
    assert [(e.order_id, e.is_open) for e in h.events if isinstance(e, OrderEvent)] == [
        ("3", True),
        ("1", False),
    ]
    assert h.tracker.count_by_symbol() == {"BTCUSDT": 1, "ETHUSDT": 1}
    assert [s for s, _ in h.states] == [
        StreamState.CONNECTING,
        StreamState.SYNCING,
        StreamState.LIVE,
    ]
    assert h.exchange.snapshot_priorities == [Priority.KILL]


async def test_events_arriving_during_the_snapshot_read_are_applied_on_top_of_it(
    make: Make,
) -> None:
    h = make()
    h.exchange.place("1")
    h.exchange.place("2")
    h.exchange.snapshot_gate = asyncio.Event()
    h.start()
    await h.exchange.snapshot_started.wait()  # the snapshot holds {1, 2}
    assert h.supervisor.state is StreamState.SYNCING
    h.exchange.place("3")
    h.exchange.cancel("2")
    h.exchange.place("4")
    h.exchange.cancel("4")
    await eventually(lambda: h.exchange.live()[0].queue.empty())  # the pump took them
    assert not h.tracker.trusted
    h.exchange.snapshot_gate.set()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"1", "3"}
    assert [e.order_id for e in h.events if isinstance(e, OrderEvent)] == ["3", "2", "4", "4"]


async def test_events_during_the_snapshot_read_reach_on_event_before_it_returns(
    make: Make,
) -> None:
    """The engine cancels a latched order by id as soon as a stream shows it: it must not wait
    for a snapshot read that may take `snapshot_timeout_s` in a crisis."""
    h = make()
    h.exchange.snapshot_gate = asyncio.Event()
    h.start()
    await h.exchange.snapshot_started.wait()
    h.exchange.place("1")
    h.exchange.place("2")
    h.exchange.cancel("1")
    await eventually(lambda: len(h.events) == 3)
    assert h.supervisor.state is StreamState.SYNCING  # the read is still in flight
    assert not h.tracker.trusted
    h.exchange.snapshot_gate.set()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"2"}  # still re-applied on top of the snapshot
    assert [(e.order_id, e.is_open) for e in h.events if isinstance(e, OrderEvent)] == [
        ("1", True),
        ("2", True),
        ("1", False),
    ]  # each once: not again when the snapshot lands


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        pytest.param(
            lambda ex: ex.snapshot_errors.append(Transient("503")),
            "Transient: 503",
            id="venue-error",
        ),
        pytest.param(lambda ex: None, "snapshot timed out after 0.2s", id="timeout"),
    ],
)
async def test_events_heard_while_a_snapshot_read_fails_are_notified_once(
    make: Make, fail: object, reason: str
) -> None:
    """A snapshot read that fails or times out ends the connection: the events the stream
    showed during the read still reach the engine, once, and the next connection's snapshot
    does not report them again."""
    h = make(snapshot_timeout_s=0.2)
    h.sleep.gate = asyncio.Event()  # hold the reconnect: look at the failed connection alone
    h.exchange.snapshot_gate = asyncio.Event()
    h.start()
    await h.exchange.snapshot_started.wait()
    h.exchange.place("1")
    await eventually(lambda: h.exchange.live()[0].queue.empty())  # the pump took it
    fail(h.exchange)  # type: ignore[operator]
    if reason.startswith("Transient"):
        h.exchange.snapshot_gate.set()
    await h.sleep.called.wait()  # the connection ended: in backoff
    assert h.supervisor.last_gap_reason == reason
    assert not h.tracker.trusted
    assert [e.order_id for e in h.events if isinstance(e, OrderEvent)] == ["1"]
    assert h.tracked_ids() == {"1"}  # the untrusted tracker heard it too
    h.exchange.snapshot_gate.set()
    h.sleep.gate.set()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"1"}
    assert [e.order_id for e in h.events if isinstance(e, OrderEvent)] == ["1"]


async def test_dropped_stream_marks_a_gap_reconnects_and_resnapshots(make: Make) -> None:
    h = make()
    h.exchange.place("1")
    h.start()
    assert await h.supervisor.wait_live(5)
    h.sleep.gate = asyncio.Event()
    h.exchange.drop()
    await h.sleep.called.wait()  # in backoff, nothing connected
    assert h.supervisor.state is StreamState.DOWN
    assert not h.tracker.trusted
    assert h.tracker.gap_reason == "Transient: connection lost"
    assert h.exchange.live() == []
    h.exchange.place("2")  # nobody hears this event
    h.exchange.cancel("1")
    h.sleep.gate.set()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"2"}
    assert (h.supervisor.gaps, h.supervisor.reconnects) == (1, 1)
    assert len(h.exchange.connections) == 2
    assert len(h.exchange.snapshot_priorities) == 2


@pytest.mark.parametrize(
    "end_stream",
    [
        pytest.param(lambda ex: ex.terminate("eventStreamTerminated"), id="terminated"),
        pytest.param(lambda ex: ex.end(), id="iterator-end"),
        pytest.param(
            lambda ex: ex.drop(RateLimited("slow down", retry_after_s=1)), id="venue-error"
        ),
        pytest.param(lambda ex: ex.drop(RuntimeError("connector bug")), id="connector-bug"),
    ],
)
async def test_every_kind_of_stream_end_leads_to_a_fresh_connection_and_snapshot(
    make: Make, end_stream: object
) -> None:
    h = make()
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.connected.clear()
    end_stream(h.exchange)  # type: ignore[operator]
    await h.exchange.connected.wait()
    assert await h.supervisor.wait_live(5)
    h.exchange.place("after")
    await eventually(lambda: h.tracked_ids() == {"after"})
    assert h.supervisor.gaps == 1
    assert len(h.exchange.snapshot_priorities) == 2
    assert h.exchange.connections[0].closed


async def test_backoff_doubles_with_full_jitter_up_to_the_cap(make: Make) -> None:
    rng = CeilingRandom()
    h = make(rng=rng, backoff_initial_s=0.2, backoff_max_s=1.0)
    h.exchange.connect_errors = [Transient("refused") for _ in range(6)]
    h.start()
    assert await h.supervisor.wait_live(5)
    assert rng.bounds == [(0.0, 0.2), (0.0, 0.4), (0.0, 0.8), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0)]
    assert h.sleep.delays == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert h.supervisor.reconnects == 6


async def test_backoff_resets_only_after_a_connection_stayed_healthy(make: Make) -> None:
    clock = FakeClock()
    rng = CeilingRandom()
    h = make(rng=rng, clock=clock, backoff_initial_s=0.2, healthy_after_s=10.0)
    h.exchange.connect_errors = [Transient("refused"), Transient("refused")]
    h.start()
    assert await h.supervisor.wait_live(5)
    assert h.sleep.delays == [0.2, 0.4]
    clock.t += 1.0  # live, but not long enough to count as healthy
    h.exchange.connected.clear()
    h.exchange.drop()
    await h.exchange.connected.wait()
    assert await h.supervisor.wait_live(5)
    assert h.sleep.delays == [0.2, 0.4, 0.8]
    clock.t += 10.0  # now it has been healthy
    h.exchange.connected.clear()
    h.exchange.drop()
    await h.exchange.connected.wait()
    assert h.sleep.delays == [0.2, 0.4, 0.8, 0.2]


async def test_a_failed_snapshot_is_a_failed_connection_and_is_retried(make: Make) -> None:
    h = make()
    h.exchange.place("1")
    h.exchange.snapshot_errors = [RateLimited("429", retry_after_s=2.0)]
    h.start()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == {"1"}
    assert h.supervisor.gaps == 1
    assert h.supervisor.last_gap_reason == "RateLimited: 429"
    assert h.exchange.connections[0].closed  # the first stream was closed, not leaked


async def test_stream_end_during_the_snapshot_read_abandons_that_snapshot(
    make: Make,
) -> None:
    h = make()
    h.exchange.snapshot_gate = asyncio.Event()
    h.start()
    await h.exchange.snapshot_started.wait()
    h.exchange.snapshot_started.clear()
    h.exchange.place("1")  # heard before the drop: still reported, though the read is dropped
    h.exchange.drop()
    await h.exchange.snapshot_started.wait()  # a second connection reads a second snapshot
    assert not h.tracker.trusted
    assert h.supervisor.gaps == 1
    assert [e.order_id for e in h.events if isinstance(e, OrderEvent)] == ["1"]
    h.exchange.snapshot_gate.set()
    assert await h.supervisor.wait_live(5)


async def test_the_snapshot_waits_for_the_venue_to_confirm_the_subscription(
    make: Make,
) -> None:
    h = make(reconcile_interval_s=30.0)
    h.exchange.subscribe_gate = asyncio.Event()
    h.exchange.silent = True  # the venue does not deliver before it confirms
    h.start()
    await h.exchange.connected.wait()
    h.exchange.place("before-confirmation")  # reaches nobody on the stream
    await asyncio.sleep(0.05)
    assert not h.exchange.snapshot_started.is_set()
    assert h.supervisor.state is StreamState.CONNECTING
    h.exchange.silent = False
    h.exchange.subscribe_gate.set()
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"before-confirmation"}
    h.exchange.place("heard")
    await eventually(lambda: h.tracked_ids() == {"before-confirmation", "heard"})
    assert (h.supervisor.repairs, h.supervisor.gaps) == (0, 0)


async def test_a_stream_that_never_confirms_is_reconnected(make: Make) -> None:
    h = make(snapshot_timeout_s=0.2)
    h.exchange.subscribe_gate = asyncio.Event()  # never set
    h.start()
    await eventually(lambda: h.supervisor.gaps >= 1)
    assert h.supervisor.last_gap_reason is not None
    assert "no subscription confirmation" in h.supervisor.last_gap_reason
    assert not h.exchange.snapshot_started.is_set()


async def test_silent_stream_is_caught_by_reconcile_and_resnapshotted(make: Make) -> None:
    h = make(reconcile_interval_s=0.05, reconcile_grace_ms=20)
    h.exchange.place("1")
    h.start()
    assert await h.supervisor.wait_live(5)
    await eventually(lambda: h.supervisor.reconciles >= 1)  # past the post-connect check
    h.exchange.silent = True  # pings fine, no events
    h.exchange.place("2")
    h.exchange.cancel("1")
    await eventually(lambda: h.supervisor.gaps >= 1)
    assert h.supervisor.last_gap_reason is not None
    reason = "stream missed events: missing=1[BTCUSDT:2] extra=1[BTCUSDT:1]"
    assert reason in h.supervisor.last_gap_reason
    h.exchange.silent = False
    assert await h.supervisor.wait_live(5)
    assert h.tracked_ids() == h.venue_ids() == {"2"}
    assert Priority.BACKGROUND in h.exchange.snapshot_priorities
    assert h.exchange.snapshot_priorities[0] is Priority.KILL


async def test_reconcile_gives_events_in_flight_the_grace_period(make: Make) -> None:
    h = make(reconcile_grace_ms=300)
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.held = []
    h.exchange.place("late")  # the event is delayed past the snapshot
    h.exchange.release_after_snapshot = True
    assert not await h.supervisor.reconcile()
    assert h.tracked_ids() == {"late"}
    assert h.supervisor.gaps == 0


async def test_reconcile_reports_what_events_never_explain(make: Make) -> None:
    h = make(reconcile_grace_ms=10)
    h.exchange.place("1")
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.held = []  # never released
    h.exchange.place("2")
    h.exchange.cancel("1")
    divergence = await h.supervisor.reconcile()
    assert (divergence.missing, divergence.extra) == ((("BTCUSDT", "2"),), (("BTCUSDT", "1"),))


async def test_resync_forces_an_immediate_reconnect_and_fresh_snapshot(make: Make) -> None:
    h = make()
    h.start()
    assert await h.supervisor.wait_live(5)
    await h.supervisor.resync("engine asked")
    assert not h.tracker.trusted  # at once, before the reconnect
    assert await h.supervisor.wait_live(5)
    assert len(h.exchange.connections) == 2
    assert len(h.exchange.snapshot_priorities) == 2
    assert h.supervisor.backoff_delays == [0.0]
    assert h.sleep.delays == []  # no wait at all
    assert h.supervisor.last_gap_reason == "resync requested: engine asked"


async def test_resync_cuts_a_backoff_short(make: Make) -> None:
    h = make()
    h.start()
    assert await h.supervisor.wait_live(5)
    h.sleep.gate = asyncio.Event()  # a backoff that never ends by itself
    h.exchange.drop()
    await h.sleep.called.wait()
    await h.supervisor.resync("operator")
    assert await h.supervisor.wait_live(5)
    assert len(h.exchange.connections) == 2


async def test_silence_timeout_reconnects_a_stream_with_no_events(make: Make) -> None:
    h = make(silence_timeout_s=0.05)
    h.start()
    assert await h.supervisor.wait_live(5)
    await eventually(lambda: len(h.exchange.connections) >= 2)
    assert h.supervisor.last_gap_reason is not None
    assert h.supervisor.last_gap_reason.startswith("no event for")


async def test_connection_is_renewed_before_the_venue_age_limit(make: Make) -> None:
    h = make(max_connection_age_s=0.05)
    h.start()
    assert await h.supervisor.wait_live(5)
    await eventually(lambda: len(h.exchange.connections) >= 2)
    assert h.supervisor.last_gap_reason == "connection older than 0s"
    assert h.supervisor.backoff_delays[0] == 0.0


async def test_callback_failures_do_not_stop_supervision(make: Make) -> None:
    h = make()

    def explode(*_: object) -> None:
        raise ValueError("observer bug")

    h.supervisor.on_event = explode
    h.supervisor.on_state = explode
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.place("1")
    h.exchange.place("2")
    await eventually(lambda: h.tracked_ids() == {"1", "2"})


async def test_wait_live_is_false_while_the_venue_stays_unreachable(make: Make) -> None:
    h = make()
    h.exchange.connect_errors = [Transient("refused") for _ in range(1000)]
    h.sleep.gate = asyncio.Event()
    h.start()
    assert not await h.supervisor.wait_live(0.05)
    assert h.supervisor.state is StreamState.DOWN
    assert h.supervisor.status()["state"] == "down"


async def test_cancelling_run_closes_the_stream_and_run_refuses_to_start_twice(
    make: Make,
) -> None:
    h = make()
    h.start()
    assert await h.supervisor.wait_live(5)
    with pytest.raises(RuntimeError, match="already running"):
        await h.supervisor.run()
    assert h.task is not None
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    h.task = None
    assert h.exchange.connections[0].closed
    assert not await h.supervisor.wait_live(0.01)


async def _live_with_held(make: Make, n: int) -> Harness:
    """A LIVE supervisor whose venue holds back the pushes of `n` new orders until released."""
    h = make()
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.held = []
    for i in range(n):
        h.exchange.place(str(i))
    return h


@contextlib.asynccontextmanager
async def _a_kill_on_a_loop_never_idle() -> AsyncIterator[None]:
    """A kill runs (`Lane.first`) and another task is always ready: every turn waits."""
    async with never_idle():
        with lane().first():
            yield


async def _stopped(h: Harness) -> None:
    """Cancel the supervisor's run and wait for it to end."""
    assert h.task is not None
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    h.task = None


async def test_a_burst_of_stream_events_never_holds_the_loop(make: Make) -> None:
    """A kill's cancels come back as a burst on every stream at once: other tasks (the kill's
    acknowledgements, its next requests) run between the events, not after the whole burst."""
    h = await _live_with_held(make, 200)
    seen: list[int] = []

    async def meanwhile() -> None:
        while len(h.events) < 200:
            seen.append(len(h.events))
            await asyncio.sleep(0)

    h.exchange.release_held()
    await asyncio.wait_for(meanwhile(), timeout=10)
    assert any(0 < n < 200 for n in seen), seen
    assert h.tracked_ids() == {str(i) for i in range(200)}


async def test_a_burst_of_stream_events_waits_for_the_kills_own_steps(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The burst comes with the kill's acknowledgements, and each acknowledgement reaches its
    wave through a chain of task steps: the chain goes first, not one step per slice of every
    stream (before the lane, a slice of each ready stream task ran before each step). With
    slices of one event, none is handled before the chain is done."""
    monkeypatch.setattr(lane(), "max_wait_s", 60.0)
    monkeypatch.setattr(supervisor_module, "SLICE_S", 0.0)
    h = await _live_with_held(make, 200)
    handled_when_done: list[int] = []

    async def chain() -> None:
        for _ in range(30):
            await asyncio.sleep(0)
        handled_when_done.append(len(h.events))

    with lane().first():  # a kill runs
        h.exchange.release_held()
        await asyncio.wait_for(chain(), timeout=10)
    assert handled_when_done == [0]
    for _ in range(1000):
        if len(h.events) == 200:
            break
        await asyncio.sleep(0.001)
    assert h.tracked_ids() == {str(i) for i in range(200)}


async def test_what_the_stream_gave_reaches_the_tracker_when_stopped_while_waiting_a_turn(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pump or consumer stopped while waiting its turn holds an event it took: the event still
    reaches the tracker and the engine, in order, ahead of what is left in the inbox."""
    monkeypatch.setattr(lane(), "max_wait_s", 60.0)
    monkeypatch.setattr(supervisor_module, "SLICE_S", 0.0)
    h = await _live_with_held(make, 50)
    async with _a_kill_on_a_loop_never_idle():
        h.exchange.release_held()
        for _ in range(20):
            await asyncio.sleep(0)
        assert h.events == []  # all of it waits for a turn
        await _stopped(h)
    conn = h.exchange.connections[0]
    taken = 50 - conn.queue.qsize()
    assert taken >= 1
    assert [e.order_id for e in h.events] == [str(i) for i in range(taken)]
    assert h.tracked_ids() == {str(i) for i in range(taken)}


async def test_an_event_the_consumer_holds_at_stop_comes_before_those_left_in_the_inbox(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer, stopped while it waits its turn holding an event with more behind it in
    the inbox: every event reaches the tracker and the engine, in order (review 100)."""
    monkeypatch.setattr(lane(), "max_wait_s", 60.0)
    monkeypatch.setattr(supervisor_module, "SLICE_S", 1000.0)  # the pump: one turn, then none
    h = await _live_with_held(make, 50)
    async with _a_kill_on_a_loop_never_idle():
        h.exchange.release_held()
        for _ in range(50):
            await asyncio.sleep(0)
        assert h.events == []
        inbox = h.supervisor._inbox
        assert inbox is not None
        assert inbox.qsize() == 49  # the consumer holds "0"
        await _stopped(h)
    assert [e.order_id for e in h.events] == [str(i) for i in range(50)]
    assert h.tracked_ids() == {str(i) for i in range(50)}


async def test_a_snapshot_read_cancelled_from_inside_is_a_connection_end_not_the_end(
    make: Make,
) -> None:
    """A read that ends in CancelledError of its own (a future it awaited was cancelled by
    someone else) is a connection to reconnect, never the end of supervision (review of
    769e65e: `run()` ended cancelled, and the account was no longer supervised)."""
    h = make()
    first = h.exchange.snapshot
    calls = 0

    async def snapshot(symbols=None, *, priority=None):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            shared = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, shared.cancel)
            await shared
        return await first(symbols, priority=priority)

    h.exchange.snapshot = snapshot  # type: ignore[method-assign]
    h.start()
    assert await h.supervisor.wait_live(5)
    assert h.task is not None
    assert not h.task.done()
    assert calls == 2


async def test_a_tracker_failure_at_a_connections_end_does_not_end_supervision(
    make: Make,
) -> None:
    """Events left behind a connection's end are applied in `_drain`, outside the loop's
    error handling: a tracker that raises there is logged (review of 769e65e: it escaped
    `run()`)."""
    h = make()
    h.sleep.gate = asyncio.Event()
    h.start()
    assert await h.supervisor.wait_live(5)
    real = h.tracker.apply

    def apply(event):  # type: ignore[no-untyped-def]
        if event.order_id == "bad":
            raise ValueError("tracker bug")
        real(event)

    h.tracker.apply = apply  # type: ignore[method-assign]
    h.supervisor._post(_End("age limit"))
    h.supervisor._post(OrderEvent("BTCUSDT", "bad", "c", ExecType.NEW, "NEW", True, 5))
    assert h.task is not None
    done, _ = await asyncio.wait({h.task}, timeout=1.0)
    assert not done, f"run() ended: {h.task.exception() if done else None!r}"


async def test_a_reconcile_that_times_out_says_so(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # Bench at 64 accounts: a background read waiting for the venue's budget timed out, and
    # the warning read "stream reconcile failed account=... error=" (a TimeoutError's text is
    # empty): a failure reported without its reason.
    h = make(reconcile_interval_s=0.05, snapshot_timeout_s=0.1)
    h.start()
    assert await h.supervisor.wait_live(5)
    h.exchange.snapshot_gate = asyncio.Event()  # the next read never answers
    with caplog.at_level("WARNING", logger="killswitch.streams.supervisor"):
        await eventually(lambda: "stream reconcile failed" in caplog.text)
    assert "error=timed out after 0.1s" in caplog.text
