"""The journal file: open (replay, or fail safe on damage), append fsynced records, compact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from killswitch.journal.read import MAX_APPEND_RECORDS, _Read, _read
from killswitch.journal.state import DEFAULT_SEEN_LIMIT, UNREADABLE_PREFIX, JournalState, _snapshot
from killswitch.model import Mode, Scope, Trigger

log = logging.getLogger(__name__)

DEFAULT_COMPACT_BYTES = 8 * 1024 * 1024


class FileOps:
    """The system calls behind every journal write: the seam where tests inject a failing disk."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)


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
        # Why the last append failed (its error's kind and text), until one succeeds: while
        # set, no trigger can be accepted, and `status` says so (review 79: a full disk
        # refused every kill while the daemon said it was armed and ready).
        self.failing = ""
        self.failing_spells = 0  # how many times it began to fail (each spell is alarmed once)
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
        error nothing of them is kept, and the error is raised. At most `MAX_APPEND_RECORDS`
        (a trigger and its latch): reading back after a crash relies on it (see `read`)."""
        if len(records) > MAX_APPEND_RECORDS:
            raise ValueError(f"{len(records)} records in one append, at most {MAX_APPEND_RECORDS}")
        with self._io:
            try:
                written = self._append(records)
            except OSError as exc:
                if not self.failing:
                    self.failing_spells += 1
                self.failing = f"{type(exc).__name__}: {exc.strerror or exc}"
                raise
            if self.failing:
                log.warning("journal writable again path=%s", self.path)
                self.failing = ""
            return written

    def free_bytes(self) -> int | None:
        """Free space where the journal lives (None when it cannot be read)."""
        try:
            return shutil.disk_usage(self.path.parent).free
        except OSError:
            return None

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
