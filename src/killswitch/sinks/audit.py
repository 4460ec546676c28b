"""The audit log: every event record appended as one JSON line under the state directory.

Append-only (`O_APPEND`, mode 0600), written per record so a crash of the process loses nothing
the kernel has; fsynced on the records an auditor must be able to rely on after a power cut (a
trigger, its result, a reset, an alarm). The fsync runs on a thread of its own, never on the
event loop: the kill's path never waits for the audit disk (the journal, fsynced before
anything is acknowledged, is what the kill's promises rest on). `close` waits for it. Records
carry no secrets: the engine never puts one in an event.

A line torn by a power cut (or a short write on a full disk) is left as it is, and the next
record starts on a line of its own: `read_audit` skips the torn line and nothing after it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import orjson

from killswitch.events import EventRecord, EventType

log = logging.getLogger(__name__)

FSYNC_TYPES: frozenset[str] = frozenset(
    {
        EventType.TRIGGERED,
        EventType.FLAT,
        EventType.CONFIRMED,
        EventType.FAILED,
        EventType.RESET,
        EventType.ALARM,
        EventType.ABORTED,
    }
)


class AuditLog:
    """An `EventSink` writing `path` (normally `state_dir/audit.jsonl`)."""

    def __init__(
        self,
        path: Path,
        *,
        fsync_types: frozenset[str] = FSYNC_TYPES,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.path = path
        self.fsync_types = fsync_types
        self.written = 0
        self.failures = 0
        self.synced = 0  # fsyncs done (each covers every record written before it)
        self._fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # A torn last line: the next record would be glued onto it and lost with it.
        self._torn = not _ends_a_line(path)
        self._lock = threading.Lock()  # the fd is closed only between fsyncs
        self._due = threading.Event()  # a record that must be fsynced was written
        self._closing = False
        self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True)
        self._syncer.start()

    def emit(self, event: EventRecord) -> None:
        """Append one record; have it fsynced soon if its type must survive a power cut."""
        fd = self._fd
        if fd is None:
            return
        line = orjson.dumps(event, default=str) + b"\n"
        if self._torn:
            line = b"\n" + line
        try:
            written = os.write(fd, line)
        except OSError as exc:
            self.failures += 1
            log.error("audit log write failed path=%s error=%s", self.path, exc)
            return
        # A short write (a full disk) tears the line; the next one must not be glued onto it.
        self._torn = written < len(line)
        if self._torn:
            self.failures += 1
            log.error("audit log write cut short path=%s written=%d", self.path, written)
            return
        self.written += 1
        if event.get("type") in self.fsync_types:
            self._due.set()

    def _sync_loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            with self._lock:
                if self._fd is None:
                    return
                self._sync(self._fd)
            if self._closing:
                return

    def _sync(self, fd: int) -> None:
        try:
            self._fsync(fd)
        except OSError as exc:
            self.failures += 1
            log.error("audit log fsync failed path=%s error=%s", self.path, exc)
        else:
            self.synced += 1

    def close(self) -> None:
        """Fsync what is pending and close the file. Safe to call twice."""
        self._closing = True
        self._due.set()
        self._syncer.join(timeout=10.0)
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                self._sync(fd)
                os.close(fd)


def _ends_a_line(path: Path) -> bool:
    """True when `path` is empty or its last byte ends a line."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def read_audit(path: Path) -> list[EventRecord]:
    """Read every whole record of an audit log (a torn last line is skipped)."""
    records: list[EventRecord] = []
    for line in path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
