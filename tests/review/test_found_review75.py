"""Review 75's findings in the fixes of reviews 73 and 74."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from killswitch.app import VenueService
from killswitch.backoff import Backoff
from killswitch.drill.live import Drill, DrillRefused
from killswitch.exchanges import limits_file
from killswitch.exchanges.connector import VenueConnector
from killswitch.journal import Journal
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sinks.metrics import _StatusCollector
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.conftest import eventually
from tests.fixtures.mexc import mexc_sim
from tests.review.test_found_review66_restart import bingx_sim
from tests.review.test_found_review73 import bx0_settings, remember_a_bingx_ban


async def test_the_live_drill_s_readiness_check_never_sends_into_a_remembered_ban(
    tmp_path: Path,
) -> None:
    """The drill read `venue-limits.json` only after its readiness check, which (with no
    daemon answering) ran a preflight on fresh budgets: 4 x 418 into a remembered BingX ban."""
    sim = bingx_sim()
    await sim.start()
    try:
        await remember_a_bingx_ban(sim, tmp_path / "venue-limits.json")
        before = dict(sim.counters)
        settings = bx0_settings(sim, tmp_path)
        drill = Drill(
            settings,
            settings.accounts[0],
            "BTC-USDT",
            socket=tmp_path / "control.sock",
            timeout_s=5.0,
        )
        with pytest.raises(DrillRefused, match="banned"):
            await drill.run()
        sent = {k: v - before.get(k, 0) for k, v in sim.counters.items() if v != before.get(k, 0)}
        assert sent == {}
    finally:
        limits_file.stop_persisting()
        await sim.stop()


async def test_a_retried_start_that_fails_again_keeps_the_stream_s_listen_key_alive() -> None:
    """A failed start cancelled every task of the connector, the listenKey keepalive the
    MEXC stream had spawned meanwhile too: the key expired under a live stream."""
    async with mexc_sim(listen_key_ttl_s=4.0) as (sim, connect):
        fault = sim.faults.add(
            Fault(FaultKind.ERROR_BEFORE, endpoint="/api/v3/time", http_status=503)
        )
        exchange = connect("acct0", listen_key_keepalive_s=1.0)
        supervisor = StreamSupervisor(
            exchange, OrderTracker(AccountRef("mexc", "acct0")), reconcile_interval_s=None
        )
        service = VenueService(retry_backoff=lambda: Backoff(initial_s=1.5, max_s=1.5))
        service.add(exchange, supervisor)
        await service.start()
        run = asyncio.create_task(service.run())
        try:
            await eventually(lambda: exchange._keepalive_task is not None, timeout_s=10)
            keepalive = exchange._keepalive_task
            assert keepalive is not None
            retried = len([e for e in sim.request_log if e["path"] == "/api/v3/time"])
            await eventually(  # the first retry, failing again
                lambda: len([e for e in sim.request_log if e["path"] == "/api/v3/time"]) > retried,
                timeout_s=10,
            )
            await asyncio.sleep(0.1)
            assert not keepalive.done()
            sim.faults.remove(fault.id)
            await eventually(lambda: not service.failed_starts, timeout_s=10)
            assert not keepalive.done()
        finally:
            await service.stop()
            run.cancel()


def _failed(journal: Journal, kill_id: str, **summary: object) -> None:
    fields = {"kill_id": kill_id, "kind": "trigger", "scope": Scope().to_json(), **summary}
    journal.append("kill_done", trigger_id=kill_id, state="failed", summary=fields)


def test_a_failed_kill_from_before_kills_carried_times_is_resolved_by_a_later_flat(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    _failed(journal, "old")  # journaled before `ended_ms` was kept
    journal.record_trigger(Trigger("new", "test", Mode.CANCEL, "r", Scope()))  # after it
    flat = {"kill_id": "new", "kind": "trigger", "scope": Scope().to_json(), "started_ms": 5}
    journal.append("kill_done", trigger_id="new", state="flat", summary=flat)
    assert not journal.state.failed
    journal.close()


def test_compaction_does_not_bring_back_a_failed_kill_a_reset_resolved(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(Trigger("k1", "test", Mode.KILL, "r", Scope()))  # latched
    _failed(journal, "k1", trigger_ids=["k1"], ended_ms=10)
    journal.append("reset", actor="op", reason="r", origin="local", released=["k1"])
    assert not journal.state.failed
    journal.compact()
    journal.close()
    again = Journal(tmp_path / "journal.jsonl")
    again.open()
    assert not again.state.failed
    again.close()


def test_failed_kills_pushed_out_of_the_list_do_not_hold_the_gauge() -> None:
    """They cannot be resolved any more: counted in `status`, not in the alerting gauge."""
    status = {"failed_kills": [], "failed_kills_dropped": 5, "accounts": []}
    (gauge,) = [
        m for m in _StatusCollector(lambda: status).collect() if m.name.endswith("failed_kills")
    ]
    assert gauge.samples[0].value == 0.0


async def test_a_keepalive_spawned_while_a_failing_start_runs_survives_it() -> None:
    """Review 76: the start cancelled what was spawned *while* it ran, so a listenKey
    keepalive the stream made during a retried start's `_open` died with it."""
    async with mexc_sim(listen_key_ttl_s=60.0) as (sim, connect):
        sim.faults.add(Fault(FaultKind.ERROR_BEFORE, endpoint="/api/v3/time", http_status=503))
        key_fault = sim.faults.add(
            Fault(FaultKind.ERROR_BEFORE, endpoint="/api/v3/userDataStream", http_status=503)
        )
        exchange = connect("acct0", listen_key_keepalive_s=1.0)
        in_open, release = asyncio.Event(), asyncio.Event()
        real_open = exchange._open

        async def slow_open() -> None:  # a slow /api/v3/time
            in_open.set()
            await release.wait()
            await real_open()

        exchange._open = slow_open  # type: ignore[method-assign]
        supervisor = StreamSupervisor(
            exchange,
            OrderTracker(AccountRef("mexc", "acct0")),
            reconcile_interval_s=None,
            backoff_initial_s=0.1,
            backoff_max_s=0.2,
        )
        release.set()
        service = VenueService(retry_backoff=lambda: Backoff(initial_s=1.0, max_s=1.0))
        service.add(exchange, supervisor)
        await service.start()
        assert service.failed_starts
        release.clear()
        in_open.clear()
        run = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(in_open.wait(), 10)  # a retried start is inside `_open`
            sim.faults.remove(key_fault.id)  # the stream now makes its key
            await eventually(lambda: exchange._keepalive_task is not None, timeout_s=10)
            keepalive = exchange._keepalive_task
            assert keepalive is not None
            release.set()  # the `_open` goes on, and fails
            await asyncio.sleep(0.5)
            assert not keepalive.done()
        finally:
            await service.stop()
            run.cancel()


class _Starting:
    """Just what `VenueConnector.start` and `_spawn` use (review 77's rig)."""

    start = VenueConnector.start
    _spawn = VenueConnector._spawn
    _cancel_tasks = VenueConnector._cancel_tasks

    def __init__(self, open_: Callable[[], Awaitable[None]]) -> None:
        self._started = self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.transport = SimpleNamespace(start=lambda: asyncio.sleep(0))
        self._open = open_


async def test_a_failed_start_never_cancels_another_connector_s_task() -> None:
    """Review 77 (latent): the start's mark was inherited by any task made inside it, so a
    task there that spawned on *another* connector had that task cancelled with the start."""
    forever = asyncio.Event()
    other = _Starting(lambda: asyncio.sleep(0))

    async def failing_open() -> None:
        async def child() -> None:
            other._spawn(forever.wait(), name="other's")  # type: ignore[arg-type]

        await asyncio.create_task(child())
        raise RuntimeError("the start fails")

    starting = _Starting(failing_open)
    with pytest.raises(RuntimeError):
        await starting.start()  # type: ignore[arg-type]
    (task,) = other._tasks
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
