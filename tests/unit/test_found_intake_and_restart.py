"""Found by review 29: intake, resets and restarts that broke the kill's promises.

* One shot is one shot: a `cancel` resumed after a crash or a graceful stop ran again on
  accounts it had already proved flat, cancelling orders placed after that.
* Nothing acknowledged is forgotten: a submit cancelled during its journal write left a
  journaled latch with no kill; a second submit of an id still being written was answered
  DUPLICATE, though the first write then failed.
* Resets are exact: a reset cancelled during its write was journaled, but neither applied in
  memory nor announced.
* An alert id reused across actions: a kill whose id an earlier reset used was dropped as a
  duplicate; a reset whose id an earlier kill used was a silent no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import time
from pathlib import Path

from killswitch.events import FanOut
from killswitch.journal import FileOps, Journal, replay
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, KillState, SubmitResult
from killswitch.model import AccountRef, Mode
from tests.conftest import eventually
from tests.fakes import EventLog, FakeClock, FakeExchange
from tests.unit.test_engine import QUICK, kill_trigger


def engine_over(
    path: Path, venues: list[FakeExchange], log: EventLog | None = None, ops: FileOps | None = None
) -> Engine:
    clock = FakeClock()
    return Engine(
        [Account(AccountRef(v.venue, v.account), v) for v in venues],
        Journal(path, ops=ops) if ops is not None else Journal(path),
        QUICK,
        events=FanOut([log]) if log is not None else None,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
    )


class JournalAtFlat:
    """Copies the journal the moment `flat` is emitted: what a crash right then leaves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved: bytes | None = None

    def emit(self, event: dict[str, object]) -> None:
        if event["type"] == "flat" and self.saved is None:
            self.saved = self.path.read_bytes()


async def test_a_cancel_reported_flat_is_not_run_again_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "desk-", n=2)
    crash = JournalAtFlat(path)
    first = engine_over(path, [venue])
    first.events.add(crash)
    await first.start()
    await first.submit(kill_trigger("c1", mode=Mode.CANCEL))
    kill = first.kill_for("c1")
    assert kill is not None
    await kill.finished.wait()
    await first.stop()
    assert crash.saved is not None
    path.write_bytes(crash.saved)  # the process died right after reporting flat

    (later,) = venue.place("BTCUSDT", "desk-new")
    log = EventLog()
    second = engine_over(path, [venue], log)
    await second.start()
    try:
        await second.wait_idle()
        assert ("BTCUSDT", later) in venue.open_keys()
        # The resumed cancel still reaches a reported end, and its record: no third life.
        assert [e["state"] for e in log.of("flat")] == ["flat"]
        assert "c1" not in replay(path)[0].unfinished
    finally:
        await second.stop()


async def test_a_cancel_stopped_gracefully_resumes_only_where_it_was_not_yet_flat(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    b1 = FakeExchange("binance", "b1")
    b2 = FakeExchange("binance", "b2")
    b1.place("BTCUSDT", "desk-", n=2)
    b2.place("BTCUSDT", "desk-", n=2)
    hung = asyncio.Event()
    b2.hold("snapshot", hung)  # b2's venue does not answer its reads
    first = engine_over(path, [b1, b2])
    await first.start()
    await first.submit(kill_trigger("c1", mode=Mode.CANCEL))
    kill = first.kill_for("c1")
    assert kill is not None
    ref1 = AccountRef("binance", "b1")
    await eventually(lambda: kill.accounts[ref1].state is AccountState.FLAT)
    (later,) = b1.place("BTCUSDT", "desk-new")  # after b1's flat snapshot
    await first.stop(grace_s=0.2)  # SIGTERM: the grace ends before b2 answers
    hung.set()

    second = engine_over(path, [b1, b2])
    await second.start()
    try:
        await second.wait_idle()
        assert b1.open_keys() == {("BTCUSDT", later)}  # left alone
        assert not b2.open_keys()  # carried out where it was not done
        resumed = second.kill_for("c1")
        assert resumed is not None
        assert resumed.state is KillState.FLAT
    finally:
        await second.stop()


async def test_a_submit_cancelled_during_its_write_still_launches_its_kill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "desk-", n=2)
    log = EventLog()
    engine = engine_over(path, [venue], log)
    await engine.start()
    journal = engine.journal
    original = journal.append_many_async
    slow = asyncio.Event()

    async def held(records: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
        await slow.wait()  # a slow fsync
        return await original(records)

    journal.append_many_async = held  # type: ignore[method-assign]
    submit = asyncio.create_task(engine.submit(kill_trigger("k1")))
    for _ in range(5):
        await asyncio.sleep(0)
    submit.cancel()  # e.g. the replicator's start-up sync timing out now
    slow.set()
    with contextlib.suppress(asyncio.CancelledError):
        await submit
    await eventually(lambda: engine.kill_for("k1") is not None)
    await engine.wait_idle()
    try:
        assert "k1" in replay(path)[0].latches
        assert "k1" in engine.latches()
        assert [e["type"] for e in log.records][:2] == ["triggered", "latched"]
        assert log.of("flat")
        assert not venue.open_keys()
    finally:
        await engine.stop()


class SlowDisk(FileOps):
    slow = False
    fail_next = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.slow:
            time.sleep(0.2)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.slow:
            time.sleep(0.2)
        os.fsync(fd)


async def test_a_second_submit_of_an_id_being_written_waits_for_the_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    disk = SlowDisk()
    engine = engine_over(path, [venue], ops=disk)
    await engine.start()
    disk.slow, disk.fail_next = True, 1  # the first write fails (ENOSPC), slowly
    first = asyncio.create_task(engine.submit(kill_trigger("a-1")))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(engine.submit(kill_trigger("a-1")))
    try:
        try:
            await first
        except OSError:
            pass
        else:
            raise AssertionError("the first write was to fail")
        # Not DUPLICATE: nothing was journaled. The second goes to the disk itself.
        assert await second is SubmitResult.ACCEPTED
        assert "a-1" in replay(path)[0].seen
    finally:
        disk.slow = False
        await engine.stop()


async def test_alert_ids_of_kills_and_of_resets_are_apart(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "desk-", n=1)
    engine = engine_over(path, [venue])
    await engine.start()
    try:
        await engine.submit(kill_trigger("k0"))
        assert await engine.reset(actor="ops", reason="r", reset_id="x-1")
        # A kill under an id a reset used is a kill, not a duplicate.
        assert await engine.submit(kill_trigger("x-1")) is SubmitResult.ACCEPTED
        assert "x-1" in engine.latches()
        # And a reset under an id a kill used releases it.
        assert await engine.reset(actor="ops", reason="r", reset_id="x-1") is False  # seen
        assert await engine.reset(actor="ops", reason="r", reset_id="k0")
        assert engine.latches() == {}
    finally:
        await engine.stop()
    # Both namespaces read back after a restart (and a compaction).
    state, _ = replay(path)
    assert "x-1" in state.reset_ids
    assert "k0" in state.reset_ids
    assert "x-1" in state.seen


# -- found by review 34 -------------------------------------------------------------------------


class DiskFullAfterTrigger(FileOps):
    """The disk fills up right after the trigger's record is written."""

    full = False

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = super().write(fd, data)
        if b'"kind":"trigger"' in data:
            self.full = True
        return written


async def test_a_cancel_proved_flat_is_reported_though_the_disk_refuses_its_record(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "desk-", n=2)
    log = EventLog()
    engine = engine_over(tmp_path / "j.jsonl", [venue], log, ops=DiskFullAfterTrigger())
    await engine.start()
    try:
        await engine.submit(kill_trigger("c1", mode=Mode.CANCEL))
        # Retried until the kill's deadline (virtual time here), then reported all the same,
        # with an alarm naming what a restart would do.
        await eventually(lambda: log.of("flat"))
        assert not venue.open_keys()
        (alarm,) = log.of("alarm")
        assert alarm["account"] == "binance/b1"
        assert "flat not journaled" in str(alarm["error"])
    finally:
        await engine.stop(grace_s=0.1)


async def test_a_reset_cancelled_during_its_write_is_applied_and_announced_before_stop_returns(
    tmp_path: Path,
) -> None:
    # Review 29: a reset cancelled with its caller mid-write was journaled, but neither applied
    # in memory nor announced. Review 34: shielded, it still announced itself after the engine
    # (and then the audit log) had stopped.
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    log = EventLog()
    disk = SlowDisk()
    engine = engine_over(path, [venue], log, ops=disk)
    await engine.start()
    await engine.submit(kill_trigger("k1"))
    await engine.wait_idle()
    disk.slow = True
    client = asyncio.create_task(engine.reset(actor="ops", reason="all clear"))
    await asyncio.sleep(0.05)  # the reset's write is on its worker thread
    client.cancel()  # the control server stops its clients first
    with contextlib.suppress(asyncio.CancelledError):
        await client
    await engine.stop(grace_s=0.1)  # then the engine; the audit log closes after it
    disk.slow = False
    (event,) = log.of("reset")  # out before stop() returned
    assert [r["trigger_id"] for r in event["released"]] == ["k1"]  # type: ignore[attr-defined]
    assert list(replay(path)[0].latches) == list(engine.latches()) == []
