"""Event records: what the engine tells the audit log, the Kafka events topic and metrics.

One JSON object per step of a kill (triggered, wave, outcome, flat, confirmed, failed, reset,
...). Every record carries `type`, `life` (a random id drawn once per process: one life of the
daemon), `seq` (1, 2, 3, ... within that life), `ts_ms` (wall clock) and `mono_ms` (monotonic,
for durations). `seq` starts again at 1 in every process, so a record is named by
(`life`, `seq`) together; `seq` orders records within a life only (lives are ordered by
`ts_ms`). Sinks must not block the engine: `emit` is synchronous and cheap; a sink that does I/O
queues the record and drains it elsewhere.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

EventRecord = dict[str, object]


class EventType(StrEnum):
    """Every event record's `type`. A `StrEnum`: each member is its string on the wire."""

    # A kill's life
    TRIGGERED = "triggered"
    LATCHED = "latched"
    JOINED = "joined"
    DUPLICATE = "duplicate"
    RESUMED = "resumed"
    WAVE = "wave"
    OUTCOME = "outcome"
    STREAM_CANCEL = "stream_cancel"
    SWEEP = "sweep"
    FLAT = "flat"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"
    FAILED = "failed"
    ABORTED = "aborted"
    RESET = "reset"
    # Latched work and health
    ALARM = "alarm"
    DMS = "dms"
    ACCOUNT_READY = "account_ready"
    LEARNED = "learned"
    DRILL = "drill"
    # Inputs
    RULE_FIRED = "rule_fired"
    HEARTBEAT_BACK = "heartbeat_back"
    HEARTBEATS_SUSPENDED = "heartbeats_suspended"
    HEARTBEATS_RESUMED = "heartbeats_resumed"
    HEARTBEAT_SILENT = "heartbeat_silent"
    KAFKA_CONNECTED = "kafka_connected"
    KAFKA_DISCONNECTED = "kafka_disconnected"
    ALERT_UNKNOWN_ACCOUNTS = "alert_unknown_accounts"
    ALERT_REJECTED = "alert_rejected"


# Drawn once per process: `seq` restarts at 1 in every life, and the same daemon (the same
# Kafka key) lives many times, so (life, seq) is what names a record.
LIFE = secrets.token_hex(8)
_seq = itertools.count(1)


def make_event(event_type: EventType, **fields: object) -> EventRecord:
    """Build an event record stamped with this life's id, its sequence, wall and monotonic times."""
    return {
        "type": event_type,
        "life": LIFE,
        "seq": next(_seq),
        "ts_ms": int(time.time() * 1000),
        "mono_ms": round(time.monotonic() * 1000, 3),
        **fields,
    }


class EventSink(Protocol):
    """Receives every event record. Must return quickly and never raise into the engine."""

    def emit(self, event: EventRecord) -> None: ...


class FanOut:
    """Emit to several sinks; one failing sink never stops the others."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks: list[EventSink] = list(sinks)
        self.failures = 0

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, event: EventRecord) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # noqa: BLE001 - a sink bug must not stop a kill; counted
                self.failures += 1
