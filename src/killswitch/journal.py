"""Durable kill state: an append-only JSON-lines journal, fsynced per record.

Records (`kind`): `trigger` (the full trigger, written before any request goes out), `latch`
(a scope is HALTED), `reset` (every latch released, with who and why), `kill_done` (a kill's
summary), and `seen` (trigger ids carried over by compaction). `replay` rebuilds the state a
restart needs: latched scopes, seen trigger ids, unfinished triggers and the last kill.

A torn last line (the process died mid-write) is tolerated: it is reported, cut off, and the
journal goes on from the last whole record. A bad line anywhere else means the file was damaged,
and the journal refuses to guess (`JournalCorrupt`): starting unlatched by mistake is worse than
not starting. Compaction rewrites the state into a temporary file, fsyncs it, renames it over
the journal and fsyncs the directory, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from killswitch.model import Mode, Scope, Trigger

log = logging.getLogger(__name__)

DEFAULT_COMPACT_BYTES = 8 * 1024 * 1024
DEFAULT_SEEN_LIMIT = 100_000


class JournalCorrupt(Exception):
    """A journal line other than the last one cannot be read."""


class FileOps:
    """The system calls behind every journal write: the seam where tests inject a failing disk."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)


@dataclass(slots=True)
class JournalState:
    """What the journal says: rebuilt by `replay`, kept current by `Journal`'s writers."""

    latches: dict[str, Scope] = field(default_factory=dict)  # trigger id -> latched scope
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)  # trigger ids, oldest first
    triggers: dict[str, Trigger] = field(default_factory=dict)  # latched or unfinished triggers
    unfinished: set[str] = field(default_factory=set)  # triggers without kill_done
    last_kill: dict[str, object] | None = None
    last_reset: dict[str, object] | None = None
    records: int = 0
    torn_tail: bool = False

    @property
    def latched(self) -> bool:
        return bool(self.latches)

    def apply(self, record: dict[str, object], *, seen_limit: int = DEFAULT_SEEN_LIMIT) -> None:
        """Fold one record into the state."""
        kind = record.get("kind")
        self.records += 1
        if kind == "trigger":
            raw = record["trigger"]
            if not isinstance(raw, dict):
                raise TypeError("trigger record without a trigger object")
            trigger = Trigger.from_json(raw)
            self._see(trigger.id, seen_limit)
            self.triggers[trigger.id] = trigger
            self.unfinished.add(trigger.id)
            if trigger.mode is Mode.KILL:
                # The intent to kill is the latch: a crash before the `latch` record must
                # not come back unlatched.
                self.latches[trigger.id] = trigger.scope
        elif kind == "latch":
            trigger_id = str(record["trigger_id"])
            scope = record["scope"]
            if not isinstance(scope, dict):
                raise TypeError("latch record without a scope object")
            self.latches[trigger_id] = Scope.from_json(scope)
        elif kind == "reset":
            # A reset releases exactly the latches it names (older records without the list
            # released everything), and aborts their kills: a restart must not resume them.
            named = _released_ids(record)
            gone = set(self.latches) if named is None else named & set(self.latches)
            for trigger_id in gone:
                del self.latches[trigger_id]
            self.unfinished -= {
                t for t in self.unfinished if t in gone and self.triggers[t].mode is Mode.KILL
            }
            self.last_reset = record
            self._forget_finished()
        elif kind == "kill_done":
            trigger_id = str(record["trigger_id"])
            self.unfinished.discard(trigger_id)
            self.last_kill = record
            self._forget_finished()
        elif kind == "seen":
            ids = record.get("ids") or []
            if not isinstance(ids, list):
                raise TypeError("seen record without an id list")
            for trigger_id in ids:
                self._see(str(trigger_id), seen_limit)
        else:
            log.warning("journal record of unknown kind=%s ignored", kind)

    def _see(self, trigger_id: str, limit: int) -> None:
        self.seen[trigger_id] = None
        self.seen.move_to_end(trigger_id)
        while len(self.seen) > limit:
            self.seen.popitem(last=False)

    def _forget_finished(self) -> None:
        keep = set(self.latches) | self.unfinished
        for trigger_id in [t for t in self.triggers if t not in keep]:
            del self.triggers[trigger_id]


class Journal:
    """The kill journal at `path`. `open()` replays it; `append` writes one fsynced record."""

    def __init__(
        self,
        path: Path,
        *,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
        seen_limit: int = DEFAULT_SEEN_LIMIT,
        ops: FileOps | None = None,
    ) -> None:
        self.path = path
        self.ops = ops or FileOps()
        self.compact_bytes = compact_bytes
        self.seen_limit = seen_limit
        self.state = JournalState()
        self._fd: int | None = None
        self._size = 0
        self._lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> JournalState:
        """Replay the journal, cut a torn tail, and open it for appending."""
        if self._fd is not None:
            raise RuntimeError("journal already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.state, good_bytes = replay(self.path, seen_limit=self.seen_limit)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if self.state.torn_tail:
            self.ops.ftruncate(fd, good_bytes)
            self.ops.fsync(fd)
        self._fd = fd
        self._size = good_bytes
        if self._size > self.compact_bytes:
            self.compact()
        return self.state

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # -- writing -------------------------------------------------------------------------------
    def append(self, kind: str, **fields: object) -> dict[str, object]:
        """Write one record and fsync it; returns the record. Blocks the caller for the fsync."""
        return self.append_many([(kind, fields)])[0]

    def append_many(self, records: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
        """Write several records with one fsync (a crash may keep a prefix of them)."""
        if self._fd is None:
            raise RuntimeError("journal not open")
        now = int(time.time() * 1000)
        out: list[dict[str, object]] = [{"kind": k, "ts_ms": now, **f} for k, f in records]
        data = b"".join(orjson.dumps(r) + b"\n" for r in out)
        written = 0
        while written < len(data):
            written += self.ops.write(self._fd, data[written:])
        self.ops.fsync(self._fd)
        self._size += len(data)
        for record in out:
            self.state.apply(record, seen_limit=self.seen_limit)
        if self._size > self.compact_bytes:
            self.compact()
        return out

    async def append_async(self, kind: str, **fields: object) -> dict[str, object]:
        """`append` on a worker thread, one at a time, so a slow disk never stalls the loop."""
        return (await self.append_many_async([(kind, fields)]))[0]

    async def append_many_async(
        self, records: list[tuple[str, dict[str, object]]]
    ) -> list[dict[str, object]]:
        """`append_many` on a worker thread, one write at a time."""
        async with self._lock:
            return await asyncio.to_thread(self.append_many, records)

    def record_trigger(self, trigger: Trigger) -> None:
        self.append("trigger", trigger=trigger.to_json())

    def compact(self) -> None:
        """Rewrite the journal as the records that rebuild the current state (atomic replace)."""
        state = self.state
        records: list[dict[str, object]] = []
        now = int(time.time() * 1000)
        if state.seen:
            records.append({"kind": "seen", "ts_ms": now, "ids": list(state.seen)})
        if state.last_reset is not None:
            records.append(state.last_reset)
        for trigger in state.triggers.values():
            records.append({"kind": "trigger", "ts_ms": now, "trigger": trigger.to_json()})
        for trigger_id, scope in state.latches.items():
            records.append(
                {"kind": "latch", "ts_ms": now, "trigger_id": trigger_id, "scope": scope.to_json()}
            )
        if state.last_kill is not None:
            records.append(state.last_kill)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.ops.write(fd, data)
            self.ops.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        old, self._fd = self._fd, os.open(self.path, os.O_RDWR | os.O_APPEND, 0o600)
        if old is not None:
            os.close(old)
        self._size = len(data)
        log.info(
            "journal compacted path=%s records=%d bytes=%d", self.path, len(records), len(data)
        )


def _released_ids(record: dict[str, object]) -> set[str] | None:
    """The trigger ids a reset record names, or None for an old record that named none."""
    released = record.get("released")
    if released is None:
        return None
    if not isinstance(released, list):
        raise TypeError("reset record with a released field that is not a list")
    return {str(r["trigger_id"]) if isinstance(r, dict) else str(r) for r in released}


def replay(path: Path, *, seen_limit: int = DEFAULT_SEEN_LIMIT) -> tuple[JournalState, int]:
    """Read the journal at `path`: the state it describes and the byte length of whole records."""
    state = JournalState()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return state, 0
    good = 0
    lines = data.split(b"\n")
    # After the last newline comes either nothing (a clean file) or a torn record.
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        if last and not line:
            break
        try:
            state.apply(_parse(line, whole=not last), seen_limit=seen_limit)
        except (ValueError, TypeError, KeyError) as exc:
            if last or (index == len(lines) - 2 and not lines[-1]):
                state.torn_tail = True
                log.warning(
                    "journal torn last record cut path=%s offset=%d bytes=%d error=%s",
                    path,
                    good,
                    len(data) - good,
                    type(exc).__name__,
                )
                break
            raise JournalCorrupt(
                f"{path}: record {index + 1} at byte {good} is unreadable"
            ) from exc
        good += len(line) + 1
    return state, good


def _parse(line: bytes, *, whole: bool) -> dict[str, object]:
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise TypeError("record is not an object")
    if not whole:
        raise ValueError("record without its newline")
    return record


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
