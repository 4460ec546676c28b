"""The journal: every acknowledged record survives a crash; a torn tail is cut and reported;
a failed append leaves nothing behind; a journal damaged mid-file opens latched on everything."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import orjson
import pytest

from killswitch.journal import FileOps, Journal, JournalCorrupt, replay
from killswitch.model import Mode, Scope, Trigger

P = ParamSpec("P")
R = TypeVar("R")


def trigger(trigger_id: str, mode: Mode = Mode.KILL, **scope: object) -> Trigger:
    return Trigger(trigger_id, "test", mode, "why", Scope.of(**scope), created_ms=1)  # type: ignore[arg-type]


def test_replay_restores_latches_seen_ids_and_last_kill(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("a", venues=["binance"]))
    journal.append("latch", trigger_id="a", scope=Scope.of(venues=["binance"]).to_json())
    journal.record_trigger(trigger("b", Mode.CANCEL))
    journal.append("kill_done", trigger_id="b", state="flat")
    journal.close()

    state, _ = replay(tmp_path / "journal.jsonl")
    assert state.latches == {"a": Scope.of(venues=["binance"])}
    assert set(state.seen) == {"a", "b"}
    assert state.unfinished == {"a"}
    assert state.last_kill is not None
    assert state.last_kill["trigger_id"] == "b"
    assert not state.torn_tail


def test_reset_releases_every_latch_after_replay(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.append("latch", trigger_id="a", scope=Scope().to_json())
    journal.append("reset", actor="ops", reason="drill over")
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert not state.latched
    assert state.last_reset is not None
    assert state.last_reset["actor"] == "ops"


def test_a_torn_last_line_is_reported_cut_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.close()
    with path.open("ab") as f:
        f.write(b'{"kind":"latch","trigger_id":"a","sco')

    journal = Journal(path)
    state = journal.open()
    assert state.torn_tail
    assert set(state.seen) == {"a"}
    journal.append("latch", trigger_id="a", scope=Scope().to_json())
    journal.close()
    state, _ = replay(path)
    assert not state.torn_tail
    assert state.latched


def test_compaction_keeps_state_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, compact_bytes=20_000)
    journal.open()
    for i in range(200):
        journal.record_trigger(trigger(f"c{i}", Mode.CANCEL))
        journal.append("kill_done", trigger_id=f"c{i}", state="flat")
    journal.record_trigger(trigger("k", accounts=["mm-1"]))
    journal.append("latch", trigger_id="k", scope=Scope.of(accounts=["mm-1"]).to_json())
    journal.close()

    assert path.stat().st_size < 20_000 + 2_000
    state, _ = replay(path)
    assert state.latches == {"k": Scope.of(accounts=["mm-1"])}
    assert {f"c{i}" for i in range(200)} <= set(state.seen)
    assert "k" in state.triggers


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from killswitch.journal import Journal
    from killswitch.model import Mode, Scope, Trigger

    journal = Journal(Path(sys.argv[1]), compact_bytes=int(sys.argv[2]))
    journal.open()
    i = 0
    while True:
        journal.record_trigger(Trigger(f"t{i}", "crash", Mode.KILL, "x" * 200, Scope()))
        journal.append("latch", trigger_id=f"t{i}", scope=Scope().to_json())
        sys.stdout.write(f"t{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.parametrize("compact_bytes", [8 * 1024 * 1024, 30_000])
def test_sigkill_mid_write_loses_no_acknowledged_record(tmp_path: Path, compact_bytes: int) -> None:
    path = tmp_path / "journal.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(compact_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    acked = [proc.stdout.readline().strip() for _ in range(300)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]
    proc.stdout.close()

    journal = Journal(path)
    state = journal.open()
    journal.close()
    assert set(acked) <= set(state.seen)
    assert set(acked) <= set(state.latches)


def test_a_kill_trigger_without_its_latch_record_still_comes_back_latched(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("k", symbols=["BTCUSDT"]))  # crash before the latch record
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert state.latches == {"k": Scope.of(symbols=["BTCUSDT"])}


def test_a_kill_released_by_reset_is_not_resumed_after_a_crash(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("k"))
    journal.record_trigger(trigger("c", Mode.CANCEL))
    journal.append("reset", actor="ops", reason="false alarm")  # crash before kill_done
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert not state.latched
    assert state.unfinished == {"c"}  # a one-shot cancel is not released by a reset


# -- a disk that fails -----------------------------------------------------------------------------


class FailingDisk(FileOps):
    """Real system calls, until told to fail: a disk that fills up after `room` more bytes (the
    write that crosses it is short, the next raises ENOSPC) or after `writes` more write calls,
    and fsyncs or truncations that fail a given number of times."""

    def __init__(self) -> None:
        self.room: int | None = None
        self.writes: int | None = None
        self.fsync_failures = 0
        self.truncate_failures = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.writes is not None:
            if self.writes == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.writes -= 1
        if self.room is None:
            return super().write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = super().write(fd, data[: self.room])
        self.room -= written
        return written

    def fsync(self, fd: int) -> None:
        if self.fsync_failures:
            self.fsync_failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.truncate_failures:
            self.truncate_failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().ftruncate(fd, size)


def test_a_short_write_then_a_full_disk_leaves_no_fragment_and_the_journal_reads_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    disk = FailingDisk()
    journal = Journal(path, ops=disk)
    journal.open()
    journal.record_trigger(trigger("a"))
    disk.room = 40  # half of the next record fits
    with pytest.raises(OSError, match="No space") as failed:
        journal.record_trigger(trigger("b"))
    assert failed.value.errno == errno.ENOSPC
    disk.room = None  # space freed: the caller retries, then goes on
    journal.record_trigger(trigger("c"))
    journal.record_trigger(trigger("d"))
    journal.close()

    state = Journal(path).open()
    assert list(state.seen) == ["a", "c", "d"]
    assert set(state.latches) == {"a", "c", "d"}
    assert path.read_bytes().count(b"\n") == 3


def test_a_failed_fsync_cuts_the_record_it_could_not_make_durable(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    disk = FailingDisk()
    journal = Journal(path, ops=disk)
    journal.open()
    journal.record_trigger(trigger("a"))
    size = path.stat().st_size
    disk.fsync_failures = 1
    with pytest.raises(OSError, match="Input/output"):
        journal.record_trigger(trigger("b"))
    assert path.stat().st_size == size
    assert "b" not in journal.state.seen
    journal.record_trigger(trigger("c"))
    journal.close()

    state, _ = replay(path)
    assert list(state.seen) == ["a", "c"]


def test_a_cut_that_fails_is_made_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    disk = FailingDisk()
    journal = Journal(path, ops=disk)
    journal.open()
    journal.record_trigger(trigger("a"))
    disk.room, disk.truncate_failures = 40, 1
    with pytest.raises(OSError, match="No space"):
        journal.record_trigger(trigger("b"))
    disk.room = None
    journal.record_trigger(trigger("c"))
    journal.close()

    state, _ = replay(path)
    assert list(state.seen) == ["a", "c"]
    assert not state.torn_tail


def test_a_compaction_that_fails_does_not_fail_the_append_it_follows(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    disk = FailingDisk()
    journal = Journal(path, compact_bytes=1_000, ops=disk)
    journal.open()
    for i in range(3):
        journal.record_trigger(trigger(f"c{i}", Mode.CANCEL))
        journal.append("kill_done", trigger_id=f"c{i}", state="flat")
    size = path.stat().st_size
    disk.writes = 1  # the record fits; the compacted copy that follows does not
    journal.record_trigger(trigger("k"))  # durable, so acknowledged
    disk.writes = None
    assert path.stat().st_size > size
    assert not list(tmp_path.glob("*.compact"))
    journal.close()

    state, _ = replay(path)
    assert "k" in state.latches


def test_compaction_keeps_a_finished_kill_that_is_still_latched_finished(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("k"))
    journal.append("kill_done", trigger_id="k", state="confirmed")
    journal.record_trigger(trigger("c", Mode.CANCEL))
    journal.append("kill_done", trigger_id="c", state="flat")
    journal.record_trigger(trigger("d", Mode.CANCEL))
    journal.compact()
    journal.close()

    state, _ = replay(path)
    assert state.latches == {"k": Scope()}
    assert state.unfinished == {"d"}
    assert state.last_kill is not None
    assert state.last_kill["trigger_id"] == "c"


# -- cancellation --------------------------------------------------------------------------------


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting jobs submitted while another is still running."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self._mu = threading.Lock()
        self.running = 0
        self.submitted = 0
        self.overlaps = 0

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        with self._mu:
            self.submitted += 1
            self.overlaps += self.running > 0
            self.running += 1

        def run() -> R:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._mu:
                    self.running -= 1

        return super().submit(run)


class GatedDisk(FileOps):
    """The first write waits for `gate` and tells the loop, through `started`, that it began."""

    def __init__(self, loop: asyncio.AbstractEventLoop, started: asyncio.Event) -> None:
        self.gate = threading.Event()
        self._loop = loop
        self._started = started
        self._first = True

    def write(self, fd: int, data: bytes) -> int:
        if self._first:
            self._first = False
            self._loop.call_soon_threadsafe(self._started.set)
            self.gate.wait(timeout=60)  # a guard against a hang, never the expected path
        return super().write(fd, data)


async def test_a_cancelled_append_keeps_the_next_one_out_until_its_write_is_done(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    executor = CountingExecutor()
    loop.set_default_executor(executor)
    started = asyncio.Event()
    disk = GatedDisk(loop, started)
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, ops=disk)
    journal.open()
    try:
        first = asyncio.create_task(journal.append_async("trigger", trigger=trigger("a").to_json()))
        await started.wait()  # its write is in flight on the worker thread
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(
            journal.append_async("trigger", trigger=trigger("b").to_json())
        )
        # One pass of the loop runs `second` up to its first wait: tasks run in the order they
        # were scheduled. By then it has either handed its write to a thread, or queued.
        await asyncio.sleep(0)
        assert executor.overlaps == 0
    finally:
        disk.gate.set()
    await second
    journal.close()
    assert executor.submitted == 2
    assert executor.overlaps == 0
    state, _ = replay(path)
    assert list(state.seen) == ["a", "b"]


# -- a journal that cannot be read ----------------------------------------------------------------


def test_a_journal_damaged_mid_file_opens_latched_on_everything_and_is_kept_aside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a", venues=["binance"]))
    journal.append("latch", trigger_id="a", scope=Scope.of(venues=["binance"]).to_json())
    journal.record_trigger(trigger("c", Mode.CANCEL))
    journal.record_trigger(trigger("b", accounts=["mm-1"]))
    journal.close()
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = b"".join(lines[:2]) + b"\x00\x00 api_secret=hunter2\n" + b"".join(lines[2:])
    path.write_bytes(damaged)

    journal = Journal(path)
    state = journal.open()
    assert state.unreadable is not None
    assert "hunter2" not in state.unreadable
    failsafe = [t for t in state.latches if t.startswith("journal-unreadable-")]
    assert len(failsafe) == 1
    assert state.latches[failsafe[0]] == Scope()
    made = state.triggers[failsafe[0]]
    assert (made.source, made.mode, made.scope) == ("journal", Mode.KILL, Scope())
    assert "hunter2" not in made.reason
    assert failsafe[0] in state.unfinished
    # what could be read is kept: the latches before and after the damage, the unfinished cancel
    assert state.latches["a"] == Scope.of(venues=["binance"])
    assert state.latches["b"] == Scope.of(accounts=["mm-1"])
    assert {"a", "b", "c"} <= state.unfinished
    kept = list(tmp_path.glob("journal.jsonl.unreadable-*"))
    assert kept == [state.unreadable_copy]
    assert kept[0].read_bytes() == damaged
    journal.append("kill_done", trigger_id="c", state="flat")
    journal.close()

    # the fresh journal reads back, and is still latched on everything until a reset
    state, _ = replay(path)
    assert state.unreadable is None
    assert state.latches[failsafe[0]] == Scope()
    assert set(state.latches) == {failsafe[0], "a", "b"}
    assert state.unfinished == {failsafe[0], "a", "b"}


def test_a_damaged_journal_that_cannot_be_rewritten_still_opens_latched_on_everything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a", venues=["mexc"]))
    journal.close()
    damaged = b"{not json\n" + path.read_bytes()
    path.write_bytes(damaged)
    disk = FailingDisk()
    disk.room = 0  # nothing can be written at all

    journal = Journal(path, ops=disk)
    state = journal.open()
    journal.close()
    assert state.unreadable is not None
    assert [s for t, s in state.latches.items() if t.startswith("journal-unreadable-")] == [Scope()]
    assert state.latches["a"] == Scope.of(venues=["mexc"])
    assert path.read_bytes() == damaged  # the evidence is untouched

    # the next start, with a disk that works, is fail-safe again and this time journals it
    state = Journal(path).open()
    assert state.unreadable is not None
    assert Scope() in state.latches.values()
    assert replay(path)[0].latches == state.latches


def test_replay_alone_still_refuses_a_journal_damaged_mid_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.close()
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(JournalCorrupt, match="record 1 at byte 0"):
        replay(path)


def test_a_torn_last_record_reads_back_as_everything_before_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.record_trigger(Trigger("b", "test", Mode.KILL, "perte > 5 % — arrêt", Scope()))
    journal.close()
    whole = path.read_bytes()
    start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    for cut in range(start, len(whole)):  # every prefix of the last record, short of its newline
        path.write_bytes(whole[:cut])
        journal = Journal(path)
        state = journal.open()
        journal.close()
        assert (list(state.seen), state.unreadable) == (["a"], None), cut
        assert path.read_bytes() == whole[:start], cut


def test_a_journal_from_before_failed_appends_were_cut_fails_safe_and_keeps_the_retried_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.record_trigger(trigger("b", symbols=["BTCUSDT"]))
    journal.close()
    first, retried = path.read_bytes().splitlines(keepends=True)
    # what the old code left: half of a failed append, the retry glued to it, then more
    path.write_bytes(first + retried[:40] + retried)

    state = Journal(path).open()
    assert state.unreadable is not None
    assert state.latches["b"] == Scope.of(symbols=["BTCUSDT"])
    assert len(state.failsafe_latches) == 1


@pytest.mark.parametrize(
    ("last", "torn"),
    [
        (
            b'{"kind":"latch","trigger_id":"a","scope":{}}\x00\x00\x00\n',
            True,
        ),  # pages never written
        (b"\x00" * 300 + b"\n", True),
        (b'{"kind":"latch","trigger_id":"a","scope":{"venues":"binance"}}\n', False),  # damage
        (b"hello\n", False),
    ],
)
def test_an_unreadable_whole_last_line_is_torn_only_when_a_crash_could_have_left_it(
    tmp_path: Path, last: bytes, torn: bool
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("k", Mode.CANCEL))
    journal.close()
    with path.open("ab") as f:
        f.write(last)

    state = Journal(path).open()
    assert state.torn_tail is torn
    assert (state.unreadable is None) is torn
    assert bool(state.failsafe_latches) is not torn
    assert "k" in state.unfinished


# -- a crash that lost the first page of the last append ------------------------------------------


def crash_journal(path: Path) -> bytes:
    """A journal of one acknowledged cancel, `k`: the records before the last append."""
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("k", Mode.CANCEL, venues=["binance"]))
    journal.close()
    return path.read_bytes()


def kill_append(trigger_id: str) -> bytes:
    """What `Engine.submit` appends for a kill: its trigger and its latch, in one write."""
    t = trigger(trigger_id, venues=["mexc"])
    return b"".join(
        orjson.dumps(r) + b"\n"
        for r in (
            {"kind": "trigger", "ts_ms": 1, "trigger": t.to_json()},
            {"kind": "latch", "ts_ms": 1, "trigger_id": trigger_id, "scope": t.scope.to_json()},
        )
    )


def lost(data: bytes, start: int, end: int) -> bytes:
    """`data` with the bytes in [start, end) never written: NULs, as a lost page reads."""
    return data[:start] + b"\0" * (end - start) + data[end:]


def cancel_append(trigger_id: str) -> bytes:
    t = trigger(trigger_id, Mode.CANCEL)
    return orjson.dumps({"kind": "trigger", "ts_ms": 1, "trigger": t.to_json()}) + b"\n"


def assert_torn_and_cut(path: Path, good: bytes) -> None:
    journal = Journal(path)
    state = journal.open()
    journal.close()
    assert state.unreadable is None, f"a crash read as damage: {state.unreadable}"
    assert not state.failsafe_latches
    assert state.torn_tail
    assert (list(state.seen), state.unfinished, state.latches) == (["k"], {"k"}, {})
    assert path.read_bytes() == good  # the unacknowledged append is cut, nothing else
    assert not list(path.parent.glob("*.unreadable-*"))


@pytest.mark.parametrize("first", [1, 40, 120])
def test_a_last_record_whose_first_page_was_lost_is_a_torn_tail(tmp_path: Path, first: int) -> None:
    path = tmp_path / "journal.jsonl"
    good = crash_journal(path)
    record = cancel_append("x")
    path.write_bytes(good + lost(record, 0, first))  # NULs, then the rest of the record
    assert_torn_and_cut(path, good)


def test_a_last_record_with_a_page_lost_in_its_middle_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = crash_journal(path)
    record = cancel_append("x")
    path.write_bytes(good + lost(record, 20, 60))
    assert_torn_and_cut(path, good)


@pytest.mark.parametrize(
    "damage",
    [
        "trigger",  # the trigger's page lost, newline and all: NULs then the latch, one line
        "trigger but its newline",  # two lines: NULs, then the latch whole
        "start of both",  # the trigger's start and the latch's start lost
        "all",  # the size reached the disk, none of the data
    ],
)
def test_a_trigger_and_latch_append_that_lost_its_first_page_is_a_torn_tail(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "journal.jsonl"
    good = crash_journal(path)
    data = kill_append("m")
    first = data.index(b"\n") + 1
    zeroed = {
        "trigger": lost(data, 0, first),
        "trigger but its newline": lost(data, 0, first - 1),
        "start of both": lost(lost(data, 0, 30), first, first + 10),
        "all": lost(data, 0, len(data)),
    }[damage]
    path.write_bytes(good + zeroed)
    assert_torn_and_cut(path, good)


@pytest.mark.parametrize("end", [60, 200, -5])
def test_an_append_cut_short_after_its_first_page_was_lost_is_a_torn_tail(
    tmp_path: Path, end: int
) -> None:
    path = tmp_path / "journal.jsonl"
    good = crash_journal(path)
    data = kill_append("m")
    path.write_bytes(good + lost(data, 0, 30)[:end])  # no newline at the end
    assert_torn_and_cut(path, good)


def test_a_crash_tail_is_cut_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    good = crash_journal(path)
    data = kill_append("m")
    path.write_bytes(good + lost(data, 0, data.index(b"\n") + 1))
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("m", venues=["mexc"]))  # the redelivered alert
    journal.close()
    state, _ = replay(path)
    assert list(state.seen) == ["k", "m"]
    assert state.latches == {"m": Scope.of(venues=["mexc"])}


def assert_fails_safe(path: Path, damaged: bytes) -> None:
    journal = Journal(path)
    state = journal.open()
    journal.close()
    assert state.unreadable is not None
    assert len(state.failsafe_latches) == 1
    assert state.latches[state.failsafe_latches[0]] == Scope()
    assert state.unreadable_copy is not None
    assert state.unreadable_copy.read_bytes() == damaged
    assert "k" in state.unfinished


@pytest.mark.parametrize(
    "after",
    [
        pytest.param(2, id="two whole records after it"),
        pytest.param(1, id="a record after it that is not the latch of the lost trigger"),
    ],
)
def test_a_record_with_leading_nuls_before_the_last_append_fails_safe(
    tmp_path: Path, after: int
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("k", Mode.CANCEL, venues=["binance"]))
    journal.record_trigger(trigger("a", accounts=["mm-1"]))
    journal.append("reset", actor="ops", reason="drill", released=[])
    if after == 2:
        journal.record_trigger(trigger("b", Mode.CANCEL))
    journal.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lost(lines[1], 0, 50)  # the acknowledged kill "a": its first page gone
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    assert_fails_safe(path, damaged)


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(
            lambda: lost(cancel_append("x"), 0, 30) + lost(kill_append("m"), 0, 30),
            id="damage followed by more records than one append",
        ),
        pytest.param(
            lambda: b"\0" * 200 + b"\n" + b"\0" * 200 + b"\n" + b"\0" * 200 + b"\n",
            id="three records of NULs: larger than one append",
        ),
        pytest.param(
            lambda: lost(cancel_append("y"), 0, 30) + kill_append("x").split(b"\n")[1] + b"\n",
            id="NULs then a latch of a trigger the journal knows",
        ),
        pytest.param(
            lambda: lost(kill_append("m"), 0, 30)[:-1] + b"\n" + cancel_append("y"),
            id="a trigger and latch with NULs, then another record",
        ),
        pytest.param(
            lambda: b"\0\0 api_secret=hunter2\n",
            id="NULs then what no record ends with",
        ),
        pytest.param(
            lambda: b"nonsense\0\0\0\n",
            id="NULs after what no record begins with",
        ),
        pytest.param(
            lambda: lost(cancel_append("x"), 0, 30) + b"garbage\n",
            id="NULs then a whole line that does not read",
        ),
    ],
)
def test_nul_damage_a_crash_of_the_last_append_cannot_leave_fails_safe(
    tmp_path: Path, tail: Callable[[], bytes]
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("k", Mode.CANCEL, venues=["binance"]))
    journal.record_trigger(trigger("x", Mode.CANCEL))
    journal.close()
    damaged = path.read_bytes() + tail()
    path.write_bytes(damaged)
    with pytest.raises(JournalCorrupt):
        replay(path)
    assert_fails_safe(path, damaged)


def test_an_append_of_more_records_than_a_crash_can_be_read_back_from_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    t = trigger("a")
    with pytest.raises(ValueError, match="at most 2"):
        journal.append_many(
            [
                ("trigger", {"trigger": t.to_json()}),
                ("latch", {"trigger_id": "a", "scope": t.scope.to_json()}),
                ("kill_done", {"trigger_id": "a", "state": "flat"}),
            ]
        )
    journal.close()
    assert path.read_bytes() == b""
    assert not journal.state.seen


def _fold(path: Path) -> tuple[object, ...]:
    state, _ = replay(path)
    return (
        state.latches,
        list(state.seen),
        list(state.reset_ids),
        state.unfinished,
        state.flat_accounts,
        sorted(state.triggers),
        state.last_kill,
        state.last_reset,
    )


def test_every_record_kind_cut_anywhere_reads_back_as_the_records_before_it(
    tmp_path: Path,
) -> None:
    """A crash can cut the journal inside any record of any kind (the last write's pages are
    not all on disk): what is read back is exactly the whole records before the cut, never a
    part of the cut one, never damage. Every kind the daemon writes, plain and compacted."""
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.append_many(
        [
            ("trigger", {"trigger": trigger("k1", venues=["binance"]).to_json()}),
            ("latch", {"trigger_id": "k1", "scope": Scope.of(venues=["binance"]).to_json()}),
        ]
    )
    journal.record_trigger(trigger("c1", Mode.CANCEL))
    journal.append("account_flat", trigger_id="c1", account="mexc/mm-1")
    journal.append("account_flat", trigger_id="c1", account="bingx/mm-1")
    journal.append("reset", actor="ops", reason="drill", id="r-1", released=["k1"])
    journal.record_trigger(trigger("k2", symbols=["BTCUSDT"]))
    journal.append("kill_done", trigger_id="k2", state="flat")
    journal.compact()  # the compacted kinds: seen (with resets), finished triggers, latches, ...
    journal.record_trigger(trigger("c2", Mode.CANCEL, venues=["bingx"]))
    journal.append("account_flat", trigger_id="c2", account="bingx/mm-1")
    journal.append("kill_done", trigger_id="c1", state="flat")
    journal.close()
    whole = path.read_bytes()
    ends = [i + 1 for i, byte in enumerate(whole) if byte == ord("\n")]
    kinds = {orjson.loads(line)["kind"] for line in whole.splitlines()}
    assert {"seen", "trigger", "latch", "reset", "account_flat", "kill_done"} <= kinds

    cut_path = tmp_path / "cut.jsonl"
    start = 0
    for end in ends:
        cut_path.write_bytes(whole[:start])
        before = _fold(cut_path)
        for cut in range(start + 1, end):  # every byte of the record, short of its newline
            cut_path.write_bytes(whole[:cut])
            state, good = replay(cut_path)
            assert (good, state.torn_tail) == (start, True), cut
            assert _fold(cut_path) == before, cut
        start = end
