"""Durable kill state: an append-only JSON-lines journal, fsynced per record.

Records (`kind`): `trigger` (the full trigger, written before any request goes out), `latch`
(a scope is HALTED), `reset` (the latches it names released, with who and why), `kill_done` (a
kill's summary), and `seen` (trigger ids carried over by compaction). `replay` rebuilds the state
a restart needs: latched scopes, seen trigger ids, unfinished triggers and the last kill.

The journal always reads back, whatever the disk did to the last append:

* A failed append (a short write, ENOSPC, EIO, a failed fsync) is cut: the file is truncated
  back to its last whole record and the truncation fsynced before the error reaches the caller,
  who must not treat the record as written. If the cut itself fails, the next append (or
  `close`) makes it before writing anything. So a retry never lands behind half a record.
* A torn last record (the process or the machine died mid-append) is the tail after the last
  newline, or a last line holding NUL bytes (a crash that lost some of its pages). It was never
  acknowledged: it is reported, cut off, and the journal goes on from the record before it.
* Every record is checked to fold into a state before it is written: what is written reads back.
* Async appends run one at a time on a worker thread. A caller cancelled while its write is in
  flight stops waiting, not writing: the next append starts only when that write is done (the
  record may then be in the journal although its caller saw `CancelledError`).

A journal that truly cannot be read (a bad record anywhere but at the end: damage, not a crash)
does not stop the daemon, and is never guessed around. `Journal.open` then fails safe:

* the damaged file is kept for forensics as `<name>.unreadable-<UTC time>` (a hard link, else a
  copy), and a fresh journal replaces it, holding every record that could still be read
  (before and after the damage: extra latches only err towards cancelling), then a trigger and
  a latch over everything (`Scope()`), id `journal-unreadable-<UTC time>`, source `journal`, mode
  kill, whose reason names where the damage is (never what the file holds);
* the returned state carries the reason in `unreadable` and the kept file in `unreadable_copy`,
  so the engine raises an alarm; it resumes the fail-safe kill like any latched kill, and the
  latch holds across restarts until an operator resets it (`failsafe_latches` lists it);
* if the fresh journal cannot be written (the disk is full or failing), the damaged file stays
  in place and the fail-safe trigger and latch are appended to it, or held in memory only if
  even that fails; every start then fails safe again until the file can be rewritten.

`replay`, the read-only view used by tools and tests, raises `JournalCorrupt` on such damage.

Compaction rewrites the state into a temporary file, fsyncs it, renames it over the journal and
fsyncs the directory, so a crash leaves either the old or the new file. A compaction that fails
is logged and retried later; it never fails the append that prompted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from killswitch.model import Mode, Scope, Trigger

log = logging.getLogger(__name__)

DEFAULT_COMPACT_BYTES = 8 * 1024 * 1024
DEFAULT_SEEN_LIMIT = 100_000
UNREADABLE_PREFIX = "journal-unreadable-"  # the id prefix of a fail-safe trigger

_RECORD_START = b'{"kind":'  # every record this module writes starts so ("kind" is always first)
_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)  # a record that does not fold


class JournalCorrupt(Exception):
    """A journal line other than the last one cannot be read (raised by `replay` only)."""


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
    # Set by `Journal.open` when the file was damaged and it failed safe: why (no file contents).
    unreadable: str | None = None
    unreadable_copy: Path | None = None  # where the damaged file was kept, if it could be

    @property
    def latched(self) -> bool:
        return bool(self.latches)

    @property
    def failsafe_latches(self) -> list[str]:
        """Fail-safe latches over everything, from this start or an earlier one, not yet reset."""
        return [t for t in self.latches if t.startswith(UNREADABLE_PREFIX)]

    def apply(self, record: dict[str, object], *, seen_limit: int = DEFAULT_SEEN_LIMIT) -> None:
        """Fold one record into the state (nothing changes when it raises)."""
        kind = record.get("kind")
        if kind == "trigger":
            raw = record["trigger"]
            if not isinstance(raw, dict):
                raise TypeError("trigger record without a trigger object")
            trigger = Trigger.from_json(raw)
            self._see(trigger.id, seen_limit)
            self.triggers[trigger.id] = trigger
            # Compaction marks a kill that ended but is still latched: it is not resumed.
            if record.get("finished") is not True:
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
        self.records += 1

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
        self._size = 0  # bytes of whole, durable records: the file's length once cuts are made
        self._cut_pending = False  # the file may hold a failed append's bytes past `_size`
        self._dir_unsynced = False  # the journal's name in its directory is not yet durable
        self._compact_at = compact_bytes  # raised after a failed compaction, so not every append
        self._io = threading.Lock()  # one writer at a time, whichever thread it runs on
        self._lock = asyncio.Lock()  # async appends queue here, held until their write is done

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> JournalState:
        """Replay the journal, cut a torn tail, fail safe on damage, and open it for appending."""
        with self._io:
            if self._fd is not None:
                raise RuntimeError("journal already open")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._cut_pending = self._dir_unsynced = False
            self._compact_at = self.compact_bytes
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = None
            read = _read(data or b"", seen_limit=self.seen_limit, path=self.path)
            if read.damage is not None:
                self._open_damaged(data or b"", read)
            else:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                self.state, self._size = read.state, read.good
                self._dir_unsynced = data is None  # a new file: its name must be made durable
                if read.good != len(data or b""):
                    self._cut_pending = True
                    try:
                        self._cut()
                    except OSError as exc:
                        log.error(
                            "journal torn tail not cut yet, the next append cuts it "
                            "path=%s error=%s",
                            self.path,
                            exc,
                        )
            if self._size > self._compact_at:
                self._compact_or_log()
            return self.state

    def close(self) -> None:
        """Close the file, once any write in flight is done. Safe to call twice."""
        with self._io:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            if self._cut_pending:
                try:
                    self.ops.ftruncate(fd, self._size)
                    self.ops.fsync(fd)
                except OSError as exc:
                    log.error(
                        "journal closed with a failed append not cut path=%s error=%s",
                        self.path,
                        exc,
                    )
            os.close(fd)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # -- writing -------------------------------------------------------------------------------
    def append(self, kind: str, **fields: object) -> dict[str, object]:
        """Write one record and fsync it; returns the record. Blocks the caller for the fsync."""
        return self.append_many([(kind, fields)])[0]

    def append_many(self, records: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
        """Write several records with one fsync (a crash may keep a prefix of them). On an
        error nothing of them is kept, and the error is raised."""
        with self._io:
            return self._append(records)

    async def append_async(self, kind: str, **fields: object) -> dict[str, object]:
        """`append` on a worker thread, one at a time, so a slow disk never stalls the loop."""
        return (await self.append_many_async([(kind, fields)]))[0]

    async def append_many_async(
        self, records: list[tuple[str, dict[str, object]]]
    ) -> list[dict[str, object]]:
        """`append_many` on a worker thread, one write at a time."""
        await self._lock.acquire()
        try:
            written = asyncio.get_running_loop().run_in_executor(None, self.append_many, records)
        except BaseException:
            self._lock.release()
            raise
        written.add_done_callback(self._written)
        # Cancelling the caller must not cancel the wait the lock is released by: the thread
        # goes on writing, and the next append must not run beside it.
        return await asyncio.shield(written)

    def _written(self, written: asyncio.Future[list[dict[str, object]]]) -> None:
        self._lock.release()
        if not written.cancelled():
            written.exception()  # retrieved: a cancelled caller never will, and asyncio would warn

    def record_trigger(self, trigger: Trigger) -> None:
        self.append("trigger", trigger=trigger.to_json())

    def compact(self) -> None:
        """Rewrite the journal as the records that rebuild the current state (atomic replace)."""
        with self._io:
            if self._fd is None:
                raise RuntimeError("journal not open")
            self._compact()

    # -- under `_io` ---------------------------------------------------------------------------
    def _append(
        self, records: list[tuple[str, dict[str, object]]], *, lead: bytes = b""
    ) -> list[dict[str, object]]:
        fd = self._fd
        if fd is None:
            raise RuntimeError("journal not open")
        now = int(time.time() * 1000)
        out: list[dict[str, object]] = [{"kind": k, "ts_ms": now, **f} for k, f in records]
        probe = JournalState()
        for record in out:
            probe.apply(record, seen_limit=self.seen_limit)  # raises before a byte is written
        data = lead + b"".join(orjson.dumps(r) + b"\n" for r in out)
        if self._cut_pending:
            self._cut()
        if self._dir_unsynced:
            self._sync_dir()
        try:
            self._write_all(fd, data)
            self.ops.fsync(fd)
        except BaseException:
            self._cut_pending = True
            try:
                self._cut()
            except OSError as exc:
                log.error(
                    "journal append failed and was not cut yet, the next append cuts it "
                    "path=%s error=%s",
                    self.path,
                    exc,
                )
            raise
        self._size += len(data)
        for record in out:
            self.state.apply(record, seen_limit=self.seen_limit)
        if self._size > self._compact_at:
            self._compact_or_log()
        return out

    def _write_all(self, fd: int, data: bytes) -> None:
        written = 0
        while written < len(data):
            written += self.ops.write(fd, data[written:])

    def _cut(self) -> None:
        """Truncate the file back to its whole records and make that durable."""
        assert self._fd is not None
        self.ops.ftruncate(self._fd, self._size)
        self.ops.fsync(self._fd)
        self._cut_pending = False

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            self.ops.fsync(fd)
        finally:
            os.close(fd)
        self._dir_unsynced = False

    def _compact_or_log(self) -> None:
        try:
            self._compact()
        except OSError as exc:
            # The records are durable in the journal as it is; try again after some growth.
            self._compact_at = self._size + max(self.compact_bytes // 8, 4096)
            log.error("journal compaction failed path=%s error=%s", self.path, exc)
        else:
            self._compact_at = self.compact_bytes

    def _compact(self) -> None:
        records = _snapshot(self.state, int(time.time() * 1000))
        self._install(b"".join(orjson.dumps(r) + b"\n" for r in records))
        log.info(
            "journal compacted path=%s records=%d bytes=%d", self.path, len(records), self._size
        )

    def _install(self, data: bytes) -> None:
        """Make `data` the journal: a temporary file, fsynced, renamed over it. Raises only
        before the rename, when the journal is as it was."""
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            self._write_all(fd, data)
            self.ops.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        old, self._fd = self._fd, fd
        self._size, self._cut_pending, self._dir_unsynced = len(data), False, True
        if old is not None:
            os.close(old)
        try:
            self._sync_dir()
        except OSError as exc:
            log.error(
                "journal directory not synced, the next append syncs it first path=%s error=%s",
                self.path,
                exc,
            )

    # -- failing safe ------------------------------------------------------------------------
    def _open_damaged(self, data: bytes, read: _Read) -> None:
        damage = read.damage
        assert damage is not None
        now = datetime.now(UTC)
        stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
        now_ms = int(now.timestamp() * 1000)
        reason = (
            f"journal unreadable: record {damage.record} at byte {damage.offset} of {len(data)}"
            f" cannot be read ({damage.records} unreadable in all, {read.state.records} read);"
            " latched on everything until an operator resets"
        )
        failsafe = Trigger(
            UNREADABLE_PREFIX + stamp,
            "journal",
            Mode.KILL,
            reason,
            Scope(),
            created_ms=now_ms,
            received_ms=now_ms,
            actor="journal",
        )
        first: list[tuple[str, dict[str, object]]] = [
            ("trigger", {"trigger": failsafe.to_json()}),
            ("latch", {"trigger_id": failsafe.id, "scope": Scope().to_json()}),
        ]
        log.error(
            "journal unreadable, failing safe: latched on everything trigger_id=%s path=%s "
            "record=%d offset=%d unreadable=%d read=%d",
            failsafe.id,
            self.path,
            damage.record,
            damage.offset,
            damage.records,
            read.state.records,
        )
        kept: Path | None = None
        records = _snapshot(read.state, now_ms, first=first)
        try:
            kept = self._keep(stamp)
            self._install(b"".join(orjson.dumps(r) + b"\n" for r in records))
        except OSError as exc:
            log.error(
                "journal unreadable and not rewritten, appending the fail-safe latch to it "
                "path=%s kept=%s error=%s",
                self.path,
                kept,
                exc,
            )
            self.state = read.state
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            self._size = len(data)
            if kept is None:
                self._compact_at = 2**62  # compaction would drop the only copy of the damage
            lead = b"" if data.endswith(b"\n") else b"\n"
            try:
                self._append(first, lead=lead)
            except OSError as again:
                log.error("journal fail-safe latch not journaled, held in memory error=%s", again)
                reason += " (the fail-safe latch is not journaled: the disk refused it)"
                for kind, fields in first:
                    self.state.apply({"kind": kind, "ts_ms": now_ms, **fields})
        else:
            self.state = JournalState()
            for record in records:
                self.state.apply(record, seen_limit=self.seen_limit)
            log.error("journal unreadable file kept path=%s", kept)
        self.state.unreadable, self.state.unreadable_copy = reason, kept

    def _keep(self, stamp: str) -> Path:
        """Keep the damaged journal beside it, durably, under a name no other file has."""
        for n in range(1000):
            kept = self.path.with_name(f"{self.path.name}.unreadable-{stamp}{f'-{n}' if n else ''}")
            try:
                os.link(self.path, kept)
            except FileExistsError:
                continue
            except OSError:  # a filesystem without hard links: copy the bytes
                try:
                    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue
                try:
                    self._write_all(fd, self.path.read_bytes())
                    self.ops.fsync(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(kept)
                    raise
                finally:
                    os.close(fd)
            self._sync_dir()
            return kept
        raise FileExistsError(f"{self.path}: no free name to keep the unreadable journal under")


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


def _snapshot(
    state: JournalState, now_ms: int, *, first: Sequence[tuple[str, dict[str, object]]] = ()
) -> list[dict[str, object]]:
    """The records that rebuild `state`; `first` after the ids, the last reset and the last
    kill, which are replayed for their record alone: they release or finish nothing after them."""
    records: list[dict[str, object]] = []
    if state.seen:
        records.append({"kind": "seen", "ts_ms": now_ms, "ids": list(state.seen)})
    if state.last_reset is not None:
        records.append(state.last_reset)
    if state.last_kill is not None:
        records.append(state.last_kill)
    records += [{"kind": k, "ts_ms": now_ms, **f} for k, f in first]
    for trigger_id, trigger in state.triggers.items():
        record: dict[str, object] = {
            "kind": "trigger",
            "ts_ms": now_ms,
            "trigger": trigger.to_json(),
        }
        if trigger_id not in state.unfinished:
            record["finished"] = True
        records.append(record)
    for trigger_id, scope in state.latches.items():
        records.append(
            {"kind": "latch", "ts_ms": now_ms, "trigger_id": trigger_id, "scope": scope.to_json()}
        )
    return records


def _released_ids(record: dict[str, object]) -> set[str] | None:
    """The trigger ids a reset record names, or None for an old record that named none."""
    released = record.get("released")
    if released is None:
        return None
    if not isinstance(released, list):
        raise TypeError("reset record with a released field that is not a list")
    return {str(r["trigger_id"]) if isinstance(r, dict) else str(r) for r in released}
