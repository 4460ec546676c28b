"""The journal under a failing disk: whatever fails, at whatever byte, it reopens holding exactly
the appends that returned, and a crash mid-append reads back as everything before it.

Hypothesis draws histories of appends (triggers, latches, resets, kill summaries; one or two
records an append, the most one append writes), each with its faults: the disk fills up after any
number of bytes (the write that crosses it is short), the n-th fsync fails, the cut after a
failure fails. Compaction runs often (small thresholds), so faults land in its writes too. A
crash may also lose any pages of the last append (NULs). The budget is `FUZZ_EXAMPLES`.
"""

from __future__ import annotations

import errno
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from killswitch.journal import FileOps, Journal, JournalState, replay
from killswitch.model import Mode, Scope, Trigger
from tests.fixtures.fuzz import FUZZ

IDS = [f"t{i}" for i in range(6)]
SCOPES = st.builds(
    Scope.of,
    venues=st.lists(st.sampled_from(["binance", "mexc", "bingx"]), max_size=2),
    accounts=st.lists(st.sampled_from(["mm-1", "mm-2"]), max_size=1),
    symbols=st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT"]), max_size=1),
)
Record = tuple[str, dict[str, object]]


@st.composite
def records(draw: st.DrawFn) -> Record:
    kind = draw(st.sampled_from(["trigger", "trigger", "latch", "kill_done", "reset"]))
    trigger_id = draw(st.sampled_from(IDS))
    if kind == "trigger":
        mode = draw(st.sampled_from(list(Mode)))
        reason = draw(st.text(max_size=30))  # any text: escapes and multi-byte characters
        trigger = Trigger(trigger_id, "fuzz", mode, reason, draw(SCOPES), created_ms=1)
        return kind, {"trigger": trigger.to_json()}
    if kind == "latch":
        return kind, {"trigger_id": trigger_id, "scope": draw(SCOPES).to_json()}
    if kind == "kill_done":
        return kind, {"trigger_id": trigger_id, "state": draw(st.sampled_from(["flat", "failed"]))}
    released = draw(st.none() | st.lists(st.sampled_from(IDS), unique=True))
    fields: dict[str, object] = {"actor": "ops", "reason": "fuzz"}
    if released is not None:
        fields["released"] = [{"trigger_id": t, "scope": {}} for t in released]
    return kind, fields


@dataclass(frozen=True)
class Faults:
    """What fails during one append (compaction included): all `None`/`False` is a good disk."""

    room: int | None = None  # bytes that still fit; the next write past them raises ENOSPC
    fsync: int | None = None  # this fsync call (counted from 0) raises EIO
    cut: bool = False  # the first truncation raises EIO


FAULTS = st.one_of(
    st.just(Faults()),
    st.builds(
        Faults,
        room=st.none() | st.integers(0, 4_000),
        fsync=st.none() | st.integers(0, 3),
        cut=st.booleans(),
    ),
)


class FaultyDisk(FileOps):
    """Real system calls with the faults `arm` sets."""

    def __init__(self) -> None:
        self.arm(Faults())

    def arm(self, faults: Faults) -> None:
        self.room, self.fsync_fails_at, self.cut_fails = faults.room, faults.fsync, faults.cut
        self.fsyncs = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.room is None:
            return super().write(fd, data)
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = super().write(fd, data[: self.room])
        self.room -= written
        return written

    def fsync(self, fd: int) -> None:
        call, self.fsyncs = self.fsyncs, self.fsyncs + 1
        if call == self.fsync_fails_at:
            raise OSError(errno.EIO, "Input/output error")
        super().fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.cut_fails:
            self.cut_fails = False
            raise OSError(errno.EIO, "Input/output error")
        super().ftruncate(fd, size)


def view(state: JournalState) -> dict[str, object]:
    """What a restart acts on."""
    return {
        "latches": state.latches,
        "seen": set(state.seen),
        "triggers": state.triggers,
        "unfinished": state.unfinished,
        "last_kill": state.last_kill,
        "last_reset": state.last_reset,
    }


HISTORIES = st.lists(st.tuples(st.lists(records(), min_size=1, max_size=2), FAULTS), max_size=12)


@FUZZ
@given(history=HISTORIES, compact_bytes=st.sampled_from([400, 1_500, 8 * 1024 * 1024]))
def test_after_any_failures_the_journal_reopens_with_exactly_the_appends_that_returned(
    history: list[tuple[list[Record], Faults]], compact_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        disk = FaultyDisk()
        journal = Journal(path, compact_bytes=compact_bytes, ops=disk)
        expected = JournalState()
        journal.open()
        for batch, faults in history:
            disk.arm(faults)
            try:
                written = journal.append_many(batch)
            except OSError:
                pass
            else:
                for record in written:
                    expected.apply(record)
            disk.arm(Faults())
            assert view(journal.state) == view(expected)
            replay(path)  # the file reads back at every step, a failed append's leftovers or not
        journal.close()

        reopened = Journal(path)
        state = reopened.open()
        reopened.close()
        assert state.unreadable is None
        assert view(state) == view(expected)


@FUZZ
@given(
    history=st.lists(st.lists(records(), min_size=1, max_size=2), max_size=6),
    torn=st.lists(records(), min_size=1, max_size=2),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_crash_mid_append_reads_back_as_every_whole_record_before_the_tear(
    history: list[list[Record]], torn: list[Record], cut: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        journal = Journal(path)
        expected = JournalState()
        journal.open()
        for batch in history:
            for record in journal.append_many(batch):
                expected.apply(record)
        journal.close()
        lines = [orjson.dumps({"kind": k, "ts_ms": 1, **f}) + b"\n" for k, f in torn]
        data = b"".join(lines)
        at = int(cut * len(data))  # the process died with this much of the append written
        before = path.stat().st_size
        with path.open("ab") as f:
            f.write(data[:at])
        whole = 0
        for line in lines:  # a multi-record append may keep its whole records
            if whole + len(line) > at:
                break
            whole += len(line)
            expected.apply(orjson.loads(line))

        reopened = Journal(path)
        state = reopened.open()
        reopened.close()
        assert state.unreadable is None
        assert view(state) == view(expected)
        assert path.stat().st_size == before + whole  # the torn record is cut, nothing else


@FUZZ
@given(
    history=st.lists(st.lists(records(), min_size=1, max_size=2), min_size=1, max_size=6),
    where=st.floats(0.0, 1.0, exclude_max=True),
    damage=st.one_of(
        st.binary(min_size=1, max_size=3).map(lambda b: ("replace", b)),
        st.binary(min_size=1, max_size=40).map(lambda b: ("insert", b)),
        st.integers(1, 200).map(lambda n: ("delete", n)),
    ),
)
def test_a_journal_damaged_anywhere_opens_and_reads_back_failing_safe_when_it_sees_it(
    history: list[list[Record]], where: float, damage: tuple[str, bytes | int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        journal = Journal(path)
        journal.open()
        for batch in history:
            journal.append_many(batch)
        journal.close()
        data = path.read_bytes()
        at = int(where * len(data))
        how, what = damage
        if how == "replace":
            assert isinstance(what, bytes)
            damaged = data[:at] + what + data[at + len(what) :]
        elif how == "insert":
            assert isinstance(what, bytes)
            damaged = data[:at] + what + data[at:]
        else:
            assert isinstance(what, int)
            damaged = data[:at] + data[at + what :]
        path.write_bytes(damaged)

        reopened = Journal(path)
        state = reopened.open()  # never raises: the daemon stays up
        reopened.append("kill_done", trigger_id="t0", state="flat")  # and can go on
        reopened.close()
        again, _ = replay(path)  # what it left reads back
        if state.unreadable is not None:
            assert state.failsafe_latches
            assert all(state.latches[t] == Scope() for t in state.failsafe_latches)
            assert state.unreadable_copy is not None
            assert state.unreadable_copy.read_bytes() == damaged
            assert set(state.failsafe_latches) <= set(again.latches)
        else:
            assert not state.failsafe_latches


@st.composite
def last_appends(draw: st.DrawFn) -> list[Record]:
    """What one append writes: one record, or a kill's trigger and its latch (a new trigger)."""
    if draw(st.booleans()):
        return [draw(records())]
    scope = draw(SCOPES)
    trigger = Trigger("new", "fuzz", Mode.KILL, draw(st.text(max_size=30)), scope, created_ms=1)
    return [
        ("trigger", {"trigger": trigger.to_json()}),
        ("latch", {"trigger_id": "new", "scope": scope.to_json()}),
    ]


@FUZZ
@given(
    history=st.lists(st.lists(records(), min_size=1, max_size=2), max_size=6),
    torn=last_appends(),
    page=st.sampled_from([8, 16, 64, 4096]),
    reached=st.floats(0.0, 1.0),
    lost=st.sets(st.integers(0, 64)),
)
def test_a_crash_that_lost_any_pages_of_the_last_append_reads_back_as_the_records_before(
    history: list[list[Record]], torn: list[Record], page: int, reached: float, lost: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        journal = Journal(path)
        expected = JournalState()
        journal.open()
        for batch in history:
            for record in journal.append_many(batch):
                expected.apply(record)
        journal.close()
        before = path.stat().st_size
        lines = [orjson.dumps({"kind": k, "ts_ms": 1, **f}) + b"\n" for k, f in torn]
        data = bytearray(b"".join(lines)[: int(reached * sum(map(len, lines)))])
        for n in lost:  # file pages the crash lost: NULs, but never the fsynced bytes before
            n += before // page  # counted from the page the append starts in
            start, end = max(n * page, before), min((n + 1) * page, before + len(data))
            if start < end:
                data[start - before : end - before] = b"\0" * (end - start)
        with path.open("ab") as f:
            f.write(data)
        whole = 0
        for line in lines:  # the append's records that reached the disk whole, up to a lost one
            if whole + len(line) > len(data) or b"\0" in data[whole : whole + len(line)]:
                break
            whole += len(line)
            expected.apply(orjson.loads(line))

        reopened = Journal(path)
        state = reopened.open()
        reopened.close()
        assert state.unreadable is None
        assert view(state) == view(expected)
        assert path.stat().st_size == before + whole  # the torn append is cut, nothing else


@FUZZ
@given(
    history=st.lists(st.lists(records(), min_size=1, max_size=2), min_size=3, max_size=8),
    which=st.floats(0.0, 1.0, exclude_max=True),
    where=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
)
def test_nuls_in_a_record_before_the_last_append_fail_safe(
    history: list[list[Record]], which: float, where: tuple[float, float]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.jsonl"
        journal = Journal(path)
        journal.open()
        for batch in history:
            journal.append_many(batch)
        journal.close()
        lines = path.read_bytes().splitlines(keepends=True)
        # a record followed by at least two more: never within the last append's records alone
        at = int(which * (len(lines) - 2))
        line = lines[at]
        start, end = sorted(int(w * (len(line) - 1)) for w in where)
        lines[at] = line[:start] + b"\0" * (end - start + 1) + line[end + 1 :]
        damaged = b"".join(lines)
        path.write_bytes(damaged)

        reopened = Journal(path)
        state = reopened.open()
        reopened.close()
        assert state.unreadable is not None
        assert len(state.failsafe_latches) == 1
        assert state.unreadable_copy is not None
        assert state.unreadable_copy.read_bytes() == damaged
