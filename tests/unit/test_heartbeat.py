"""Heartbeat watches: a silent producer fires its scope once per silence; time is injected."""

from __future__ import annotations

import asyncio

import pytest

from killswitch.handlers.heartbeat import HeartbeatWatch, TriggerSubmitter
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import HeartbeatSettings, ScopeSettings
from tests.conftest import eventually


class Clock:
    """Monotonic seconds and wall milliseconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_763_676_000_000

    def mono(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += int(seconds * 1000)


async def never(_trigger: Trigger) -> None:
    raise AssertionError("not submitted in pure checks")


def bot(timeout_s: float = 10.0, **kw: object) -> HeartbeatSettings:
    return HeartbeatSettings.model_validate({"source": "bot-7", "timeout_s": timeout_s} | kw)


def watch(
    clock: Clock, *settings: HeartbeatSettings, hearing: list[bool] | None = None
) -> HeartbeatWatch:
    state = hearing if hearing is not None else [True]
    return HeartbeatWatch(
        settings or (bot(),),
        never,
        hearing=lambda: state[0],
        clock=clock.mono,
        wall_ms=clock.wall_ms,
    )


def test_a_producer_silent_past_its_timeout_fires_its_scope_and_mode() -> None:
    clock = Clock()
    scope = ScopeSettings(venues=["binance"], accounts=["mm-1"], client_order_id_prefix="bot7-")
    w = watch(clock, bot(timeout_s=10, mode="cancel", scope=scope))
    w.beat("bot-7", clock.wall)
    clock.advance(10)
    assert w.check() == []
    clock.advance(0.5)
    [trigger] = w.check()
    assert trigger.mode is Mode.CANCEL
    assert trigger.scope == Scope.of(["binance"], ["mm-1"], [], "bot7-")
    assert trigger.source == "heartbeat"
    assert trigger.actor == "bot-7"
    assert "no heartbeat from bot-7 for 10.5s" in trigger.reason


def test_a_silence_fires_once_and_the_next_heartbeat_rearms_the_watch() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5))
    clock.advance(6)
    first = w.check()
    clock.advance(60)
    assert w.check() == []  # still the same silence
    w.beat("bot-7", clock.wall)
    clock.advance(6)
    second = w.check()
    assert len(first) == len(second) == 1
    assert first[0].id != second[0].id
    assert first[0].mode is Mode.KILL


def test_every_watch_starts_with_a_full_timeout_of_grace() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5))
    clock.advance(4.9)
    assert w.check() == []
    clock.advance(0.2)
    assert len(w.check()) == 1


def test_a_heartbeat_counts_from_when_it_was_sent_not_when_it_arrived() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=10))
    clock.advance(9)
    w.beat("bot-7", clock.wall - 8000)  # sent 8 s ago (1 s after start), delivered late
    clock.advance(2.5)
    assert len(w.check()) == 1  # 10.5 s after it was sent, 2.5 s after it arrived


def test_a_stale_heartbeat_does_not_rearm_a_fired_watch() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5))
    clock.advance(6)
    assert len(w.check()) == 1
    w.beat("bot-7", clock.wall - 30_000)  # replayed backlog from before the silence
    clock.advance(0.1)
    assert w.check() == []
    assert w.status() == "1 watched, silent: bot-7"


def test_a_heartbeat_from_the_future_counts_as_now() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5))
    clock.advance(4)
    w.beat("bot-7", clock.wall + 60_000)  # producer clock ahead
    clock.advance(4.9)
    assert w.check() == []
    clock.advance(0.2)
    assert len(w.check()) == 1


def test_unknown_sources_are_reported_and_change_nothing() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5))
    assert w.beat("bot-7", clock.wall) is True
    assert w.beat("someone-else", clock.wall) is False


def test_several_watches_on_one_source_escalate_independently() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=5, mode="cancel"), bot(timeout_s=30, mode="kill"))
    clock.advance(6)
    assert [t.mode for t in w.check()] == [Mode.CANCEL]
    clock.advance(25)
    assert [t.mode for t in w.check()] == [Mode.KILL]


def test_watches_are_suspended_while_the_input_cannot_hear_then_get_full_grace() -> None:
    clock = Clock()
    hearing = [True]
    w = watch(clock, bot(timeout_s=5), hearing=hearing)
    clock.advance(3)
    hearing[0] = False
    clock.advance(60)
    assert w.check() == []
    assert w.status() == "suspended: alerts input down"
    hearing[0] = True
    assert w.check() == []
    clock.advance(4.9)
    assert w.check() == []
    clock.advance(0.2)
    assert len(w.check()) == 1


def test_next_deadline_is_the_nearest_armed_watch_capped() -> None:
    clock = Clock()
    w = watch(clock, bot(timeout_s=0.3), bot(timeout_s=50))
    assert w.next_deadline_s() == pytest.approx(0.3)
    clock.advance(1)
    w.check()
    assert w.next_deadline_s() == 1.0  # the short one fired; the long one is 49 s away


async def test_the_service_submits_what_fires_and_retries_a_failed_submit() -> None:
    submitted: list[Trigger] = []
    failures = [2]

    async def submit(trigger: Trigger) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError(28, "No space left on device")
        submitted.append(trigger)

    w = HeartbeatWatch([bot(timeout_s=0.05)], submit)
    w.submitter.retry_initial_s = 0.001
    await w.start()
    task = asyncio.create_task(w.run())
    await eventually(lambda: submitted, timeout_s=10)
    await w.stop()
    await asyncio.wait_for(task, 10)
    assert [t.actor for t in submitted] == ["bot-7"]
    assert w.submitter.failures == 2


async def test_queued_triggers_are_submitted_in_order() -> None:
    seen: list[str] = []

    async def submit(trigger: Trigger) -> None:
        seen.append(trigger.id)

    submitter = TriggerSubmitter(submit)
    for i in range(3):
        submitter.put(Trigger(id=f"t{i}", source="test", mode=Mode.KILL, reason=""))
    task = asyncio.create_task(submitter.run())
    assert await submitter.flush(10)
    task.cancel()
    await asyncio.wait({task})
    assert seen == ["t0", "t1", "t2"]
