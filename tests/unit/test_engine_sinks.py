"""The engine's sinks: the audit log on disk and the Prometheus metrics."""

from __future__ import annotations

import random
import stat
import threading
from pathlib import Path

from prometheus_client import generate_latest

from killswitch.exchanges.base import RateLimited
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from killswitch.sinks.audit import AuditLog, read_audit
from killswitch.sinks.metrics import Metrics
from killswitch.streams.tracker import OrderTracker
from tests.fakes import FakeClock, FakeExchange, StaticTracker


async def run_kill(tmp_path: Path, *sinks: object) -> Engine:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=3)
    venue.fail("cancel_all", RateLimited("429", retry_after_s=1.0, http_status=429))
    tracker = StaticTracker(held=await venue.snapshot())
    clock = FakeClock()
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), venue, tracker=tracker)],
        Journal(tmp_path / "journal.jsonl"),
        EngineConfig(quiet_window_s=0.01, sweep_interval_s=3600),
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(1),
    )
    for sink in sinks:
        engine.events.add(sink)  # type: ignore[arg-type]
    await engine.start()
    await engine.submit(Trigger("t", "test", Mode.KILL, "why", Scope(), created_ms=1))
    kill = engine.kill_for("t")
    assert kill is not None
    await kill.finished.wait()
    return engine


async def test_audit_log_holds_every_step_as_one_json_line_and_is_owner_only(
    tmp_path: Path,
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = await run_kill(tmp_path, audit)
    await engine.reset(actor="ops", reason="done")
    await engine.stop()
    audit.close()

    records = read_audit(tmp_path / "audit.jsonl")
    types = [r["type"] for r in records]
    for expected in ("triggered", "latched", "wave", "outcome", "flat", "confirmed", "reset"):
        assert expected in types
    assert all({"seq", "ts_ms", "mono_ms"} <= r.keys() for r in records)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)  # type: ignore[type-var]
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600


async def test_metrics_count_requests_retries_429s_and_time_to_flat(tmp_path: Path) -> None:
    engine_holder: list[Engine] = []

    def status() -> dict[str, object]:
        return engine_holder[0].status() if engine_holder else {}

    m = Metrics(status=status)
    engine = await run_kill(tmp_path, m)
    engine_holder.append(engine)
    text = generate_latest(m.registry).decode()
    await engine.stop()

    assert 'killswitch_rate_limited_total{account="binance/mm-1"} 1.0' in text
    assert 'killswitch_retries_total{account="binance/mm-1"} 1.0' in text
    assert "killswitch_time_to_flat_seconds_count 1.0" in text
    assert "killswitch_latched 1.0" in text
    assert 'killswitch_open_orders{account="binance/mm-1"} 3.0' in text  # the tracker's view
    assert 'killswitch_tracker_trusted{account="binance/mm-1"} 1.0' in text


def test_a_tracker_that_never_read_the_venue_exports_no_count_of_open_orders(
    tmp_path: Path,
) -> None:
    """Review 37: a tracker whose stream never synced showed `killswitch_open_orders 0` while
    the venue held two orders: a 0 no read ever said. It is now absent, and the trust gauge 0."""
    venue = FakeExchange()
    venue.book.place(OrderSpec("BTCUSDT"))
    venue.book.place(OrderSpec("BTCUSDT"))
    ref = AccountRef("binance", "main")
    tracker = OrderTracker(ref)  # no stream, no snapshot yet
    engine = Engine(
        [Account(ref, venue, tracker=tracker)],
        Journal(tmp_path / "j.jsonl"),
        rng=random.Random(1),
    )
    text = generate_latest(Metrics(status=engine.status).registry).decode()
    assert not tracker.trusted
    assert 'killswitch_tracker_trusted{account="binance/main"} 0.0' in text
    assert not [x for x in text.splitlines() if x.startswith("killswitch_open_order")]


def test_the_audit_fsync_never_holds_up_the_writer_and_close_waits_for_it(
    tmp_path: Path,
) -> None:
    # An audit disk that takes its time: the event loop (the kill's path) must not wait for it.
    release = threading.Event()
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        assert release.wait(timeout=10.0), "the test never released the fsync"

    audit = AuditLog(tmp_path / "audit.jsonl", fsync=slow_fsync)
    audit.emit({"type": "triggered", "seq": 1})
    audit.emit({"type": "wave", "seq": 2})  # written at once, the fsync still pending
    assert [r["seq"] for r in read_audit(tmp_path / "audit.jsonl")] == [1, 2]
    assert audit.synced == 0
    release.set()
    audit.close()  # waits for the pending fsync, and syncs the tail once more
    assert audit.synced >= 1
    assert calls
    audit.emit({"type": "flat", "seq": 3})  # after close: dropped, never an error
    assert [r["seq"] for r in read_audit(tmp_path / "audit.jsonl")] == [1, 2]
