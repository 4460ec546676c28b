"""Review 79, finding 3: a full state directory refused every kill while the daemon said it was
armed and ready.

Every trigger is journaled before it is acted on (DESIGN, the kill's step 1), so a journal that
refuses writes refuses every kill, and the caller is told (`fire` answers failed, Kafka retries
the record). Nothing else said so: `status` read "armed, not latched", no alarm, no metric. Now
the first refused trigger of a spell raises an alarm, `status` and its text name the journal's
error, a gauge says it (with the free space where the journal lives), and it all clears once the
journal writes again.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from killswitch.app import EngineService
from killswitch.control_client import format_status
from killswitch.journal import Journal
from killswitch.journal.writer import FileOps
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import SubmitResult
from killswitch.model import AccountRef
from killswitch.sinks.audit import AuditLog
from killswitch.sinks.metrics import _StatusCollector
from tests.fakes import EventLog, FakeClock, FakeExchange
from tests.unit.test_engine import QUICK, kill_trigger


class FullDisk(FileOps):  # type: ignore[misc]
    """Journal writes that fail with ENOSPC while `full`."""

    full = False

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(super().write(fd, data))


def _engine(tmp_path: Path, disk: FullDisk, venue: FakeExchange) -> tuple[Engine, EventLog]:
    """An engine over one Binance account whose journal writes go through `disk`."""
    clock = FakeClock()
    events = EventLog()
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), venue)],
        Journal(tmp_path / "journal.jsonl", ops=disk),
        QUICK,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
    )
    engine.events.add(events)
    return engine, events


def _gauge(status: dict[str, object], name: str) -> float | None:
    for metric in _StatusCollector(lambda: status).collect():
        if metric.name == name:
            return float(metric.samples[0].value)
    return None


async def test_a_journal_that_refuses_writes_is_said_until_it_writes_again(
    tmp_path: Path,
) -> None:
    disk = FullDisk()
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", "desk1-", n=2)
    engine, events = _engine(tmp_path, disk, venue)
    await engine.start()
    try:
        status = engine.status()
        assert status["journal_failing"] is None
        assert _gauge(status, "killswitch_journal_writable") == 1.0
        assert isinstance(status["journal_free_bytes"], int)
        disk.full = True
        for attempt in ("t1", "t1", "t2"):  # a retry, and another trigger: one alarm
            with pytest.raises(OSError, match="No space left"):
                await engine.submit(kill_trigger(attempt))
        alarms = [e for e in events.of("alarm") if e.get("account") == "journal"]
        assert len(alarms) == 1
        assert "No space left on device" in str(alarms[0]["error"])
        status = engine.status()
        assert "No space left on device" in str(status["journal_failing"])
        assert _gauge(status, "killswitch_journal_writable") == 0.0
        assert "JOURNAL UNWRITABLE" in format_status(status)
        assert (
            EngineService(engine, AuditLog(tmp_path / "audit.jsonl"), grace_s=1.0)
            .status()
            .startswith("JOURNAL UNWRITABLE, kills refused (OSError: No space left on device)")
        )
        assert not engine.latched()
        disk.full = False
        assert await engine.submit(kill_trigger("t1")) is SubmitResult.ACCEPTED
        status = engine.status()
        assert status["journal_failing"] is None
        assert "JOURNAL UNWRITABLE" not in format_status(status)
    finally:
        await engine.stop()


def test_status_warns_of_a_state_directory_low_on_space() -> None:
    status = {"journal_failing": None, "journal_free_bytes": 5 * 2**20, "accounts": []}
    assert "low on space: 5 MiB free" in format_status(status)
    assert _gauge(status, "killswitch_state_dir_free_bytes") == 5 * 2**20


async def test_each_spell_of_a_journal_refusing_writes_is_alarmed(tmp_path: Path) -> None:
    """Review 81: a spell ended by another write (a reset's) was never cleared for the alarm,
    and the next spell went unsaid."""
    disk = FullDisk()
    venue = FakeExchange("binance", "mm-1")
    engine, events = _engine(tmp_path, disk, venue)
    await engine.start()
    try:
        await engine.submit(kill_trigger("k0"))
        disk.full = True
        with pytest.raises(OSError, match="No space left"):
            await engine.submit(kill_trigger("t1"))
        disk.full = False
        assert await engine.reset(actor="op", reason="done")  # a write ends the spell
        assert engine.status()["journal_failing"] is None
        disk.full = True
        with pytest.raises(OSError, match="No space left"):
            await engine.submit(kill_trigger("t2"))
        alarms = [e for e in events.of("alarm") if e.get("account") == "journal"]
        assert [a["trigger_id"] for a in alarms] == ["t1", "t2"]
    finally:
        disk.full = False
        await engine.stop()
