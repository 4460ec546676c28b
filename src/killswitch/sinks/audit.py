"""The audit log: every event record appended as one JSON line under the state directory.

Append-only (`O_APPEND`, mode 0600), flushed per record so a crash loses nothing the kernel has;
fsynced on the records an auditor must be able to rely on after a power cut (a trigger, its
result, a reset, an alarm). Records carry no secrets: the engine never puts one in an event.
"""

from __future__ import annotations

import logging
import os
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

    def __init__(self, path: Path, *, fsync_types: frozenset[str] = FSYNC_TYPES) -> None:
        self.path = path
        self.fsync_types = fsync_types
        self.written = 0
        self.failures = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def emit(self, event: EventRecord) -> None:
        """Append one record; fsync it if its type is one that must survive a power cut."""
        fd = self._fd
        if fd is None:
            return
        line = orjson.dumps(event, default=str) + b"\n"
        try:
            os.write(fd, line)
            if event.get("type") in self.fsync_types:
                os.fsync(fd)
        except OSError as exc:
            self.failures += 1
            log.error("audit log write failed path=%s error=%s", self.path, exc)
            return
        self.written += 1

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
