"""Reading a journal back: `replay`, torn tails, records glued after a failed append, damage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from killswitch.journal.state import DEFAULT_SEEN_LIMIT, JournalState

log = logging.getLogger(__name__)


_RECORD_START = b'{"kind":'  # every record this module writes starts so ("kind" is always first)
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
            glued = None if fragment else _glued(line, state, seen_limit)
            last = fragment or (index == len(lines) - 2 and not lines[-1])
            if last and glued is None and _torn(line, whole=not fragment):
                state.torn_tail = True
                log.warning(
                    "journal torn last record cut path=%s offset=%d bytes=%d error=%s",
                    path,
                    offset,
                    len(data) - offset,
                    type(exc).__name__,
                )
                return _Read(state, offset, damage)
            if damage is None:
                damage = _Damage(index + 1, offset)
            else:
                damage.records += 1
        offset += len(line) + 1
    return _Read(state, len(data), damage)


def _parse(line: bytes, *, whole: bool) -> dict[str, object]:
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise TypeError("record is not an object")
    if not whole:
        raise ValueError("record without its newline")
    return record


def _torn(line: bytes, *, whole: bool) -> bool:
    """Whether an unreadable last line is what a crash mid-append leaves: the start of a record
    cut short, or (a whole line) one with pages the disk never wrote (NUL bytes)."""
    if whole and b"\0" not in line:
        return False
    start = line.rstrip(b"\0")[: len(_RECORD_START)]
    return start == _RECORD_START[: len(start)]


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
