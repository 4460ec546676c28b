"""Reading a journal back: `replay`, torn tails, records glued after a failed append, damage.

What a crash can do to the file, and so what may be cut as a torn tail rather than read as
damage: every append is fsynced before it is acknowledged, so the pages a crash can lose (or
leave short) belong to the last append only, which was never acknowledged. That append is one
record, or a trigger and its latch in one write: `MAX_APPEND_RECORDS`, which `Journal.append_many`
enforces. After the crash the file holds the records before it, whole, then a prefix of the
append's bytes (the file may be shorter than the append, or its full length) in which any
lost page reads as NUL bytes: the first page too (its start then reads as NULs followed by the
rest of a record), and a lost page may swallow a record's newline, gluing what survived of the
next record to the NULs. Bytes that did reach the disk are the bytes written.

So the tail from the first unreadable line to the end of the file is cut as torn only when all
of it can be that append (`_torn_append`):

* each of its lines is what a crash leaves of a record: one cut short (no newline) or holding
  NULs, beginning as a record begins as far as it survived, and a whole line ending as a record
  does (`}`) or in NULs (`_crash_line`); a whole line without NULs is what was written, so one
  that does not read is damage;
* it holds no more records than one append writes (each line is a record, a whole record after
  NULs on the same line one more); and
* a record in it that survived whole after the damaged first one can only be the latch written
  with the lost trigger: a latch naming a trigger the records before the tail do not know.

Anything else is damage, kept aside and failed safe on (see `Journal.open`): NULs before the
last append (the tail would hold more records than an append, or a record the last append cannot
hold), a damaged region followed by more records than the last append's, a line a crash cannot
leave. The bound is in records, not bytes: an append's size is not bounded (a reset naming many
latches, a kill summary), so a damaged region is "larger than one append" when it spans or is
followed by more records than one. A failed append (no crash) is cut back to its last whole
record by the writer itself, so it never reaches this reader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from killswitch.journal.state import DEFAULT_SEEN_LIMIT, JournalState

log = logging.getLogger(__name__)


_RECORD_START = b'{"kind":'  # every record this module writes starts so ("kind" is always first)
MAX_APPEND_RECORDS = 2  # the most one append writes: one record, or a trigger and its latch
_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)  # a record that does not fold


class JournalCorrupt(Exception):
    """A journal line other than the last one cannot be read (raised by `replay` only)."""


@dataclass(slots=True)
class _Damage:
    record: int  # the first unreadable record, counted from 1
    offset: int  # its byte offset
    records: int = 1  # unreadable records in all


@dataclass(slots=True)
class _Read:
    state: JournalState
    good: int  # bytes of the file to keep: all of it but a torn tail
    damage: _Damage | None


def replay(path: Path, *, seen_limit: int = DEFAULT_SEEN_LIMIT) -> tuple[JournalState, int]:
    """Read the journal at `path`: the state it describes and the byte length of whole records.
    Raises `JournalCorrupt` when a record other than a torn last one cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JournalState(), 0
    read = _read(data, seen_limit=seen_limit, path=path)
    if read.damage is not None:
        raise JournalCorrupt(
            f"{path}: record {read.damage.record} at byte {read.damage.offset} is unreadable"
        )
    return read.state, read.good


def _read(data: bytes, *, seen_limit: int, path: Path) -> _Read:
    """Fold every readable record of `data`; note a torn tail, and where any damage starts."""
    state = JournalState()
    damage: _Damage | None = None
    offset = 0
    lines = data.split(b"\n")
    # After the last newline comes either nothing (a clean file) or a torn record.
    for index, line in enumerate(lines):
        fragment = index == len(lines) - 1
        if fragment and not line:
            break
        try:
            state.apply(_parse(line, whole=not fragment), seen_limit=seen_limit)
        except _UNREADABLE as exc:
            if damage is None and _torn_append(lines[index:], state):
                return _cut(state, data, offset, None, path, exc)
            glued = None if fragment else _glued(line, state, seen_limit)
            last = fragment or (index == len(lines) - 2 and not lines[-1])
            if last and glued is None and _crash_line(line, whole=not fragment):
                return _cut(state, data, offset, damage, path, exc)  # damage before it
            if damage is None:
                damage = _Damage(index + 1, offset)
            else:
                damage.records += 1
        offset += len(line) + 1
    return _Read(state, len(data), damage)


def _cut(
    state: JournalState,
    data: bytes,
    offset: int,
    damage: _Damage | None,
    path: Path,
    exc: Exception,
) -> _Read:
    """The read of `data` with its torn tail, from `offset`, cut."""
    state.torn_tail = True
    log.warning(
        "journal torn last append cut path=%s offset=%d bytes=%d error=%s",
        path,
        offset,
        len(data) - offset,
        type(exc).__name__,
    )
    return _Read(state, offset, damage)


def _parse(line: bytes, *, whole: bool) -> dict[str, object]:
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise TypeError("record is not an object")
    if not whole:
        raise ValueError("record without its newline")
    return record


def _torn_append(tail: list[bytes], known: JournalState) -> bool:
    """Whether `tail`, the lines from the first unreadable one to the end of the file (the last
    item the bytes after the last newline), can be the last append with what a crash did to it
    (see the module docstring). `known` is the state the records before the tail rebuild."""
    *whole, fragment = tail
    records = 0
    for index, line in enumerate([*whole, fragment] if fragment else whole):
        is_whole = index < len(whole)
        if index > 0 and is_whole and b"\0" not in line:
            # a record that reached the disk whole after the damaged first one
            if not _second_record(line, known):
                return False
            records += 1
            continue
        if not _crash_line(line, whole=is_whole):
            return False
        records += 1
        rest = line[line.rfind(b"\0") + 1 :]
        if is_whole and b"\0" in line and rest.startswith(_RECORD_START):
            try:
                _parse(rest, whole=True)
            except _UNREADABLE:
                continue  # the end of the record whose start was lost (a nested object)
            # a lost page swallowed a newline: what follows the NULs is a record of its own
            if not _second_record(rest, known):
                return False
            records += 1
    return 0 < records <= MAX_APPEND_RECORDS


def _crash_line(line: bytes, *, whole: bool) -> bool:
    """Whether `line` is what a crash can leave of a record: cut short (no newline) or holding
    NUL bytes (lost pages), beginning as a record begins as far as it survived, and (a whole
    line) ending as a record ends, or in NULs."""
    if whole and (b"\0" not in line or not line.endswith((b"}", b"\0"))):
        return False
    start = line.split(b"\0", 1)[0][: len(_RECORD_START)]
    return start == _RECORD_START[: len(start)]


def _second_record(line: bytes, known: JournalState) -> bool:
    """Whether a record that survived whole after a damaged one can be the second record of the
    same append: a latch, naming a trigger that the records before the tail do not know."""
    try:
        record = _parse(line, whole=True)
        if record.get("kind") != "latch":
            return False
        JournalState().apply(record)
    except _UNREADABLE:
        return False
    trigger_id = str(record["trigger_id"])
    return trigger_id not in known.seen and trigger_id not in known.latches


def _glued(line: bytes, state: JournalState, seen_limit: int) -> dict[str, object] | None:
    """A whole record after the fragment of a failed append on the same line (what journals
    written before failed appends were cut can hold): folded into `state` and returned."""
    at = line.find(_RECORD_START, 1)
    while at > 0:
        try:
            record = _parse(line[at:], whole=True)
            state.apply(record, seen_limit=seen_limit)
        except _UNREADABLE:
            at = line.find(_RECORD_START, at + 1)
        else:
            return record
    return None
