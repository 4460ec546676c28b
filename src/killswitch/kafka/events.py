"""Publish the engine's event records to the Kafka events topic, never holding up a kill.

`emit` (called by the engine through `FanOut`) only appends to a bounded buffer: O(1), no I/O,
never raises. A drain task sends the buffer in order with acks=all. While the broker is away
the buffer fills; once full, the oldest record is dropped and counted (`dropped`), so memory
stays bounded and the newest state is what survives.

Records are keyed by the replica's name, so one daemon's events go to one partition. What a
reader gets there, and how to put it back in order:

- (`life`, `seq`) names a record: `life` is drawn once per process, `seq` counts from 1 within
  it (see `killswitch.events`). The key alone is not enough: every life starts again at 1.
- A record may appear twice (a send that failed after the broker had stored it is sent again),
  and after records of its life with a higher `seq` (a failed send is sent again after the
  records behind it that went through). Within a life, sort by `seq` and drop repeats.
- A record larger than `max_record_bytes` is sent shrunk: its open-order lists (`orders`,
  `lists`, `undecided`) are cut to a few entries, each cut list gets a `<name>_total` with its
  full length, and the record gets `"truncated": true`; only if that is still too large is it
  sent as its scalar fields alone. The audit log keeps every record whole.
- A record that can never be sent (the broker or the producer refuses its size, or it cannot be
  encoded) is dropped, logged, counted (`dropped`, `undeliverable`) and named by an `alarm`
  record (`kind: "event_not_sent"`, `record_type`, `record_seq`) sent after it: a gap in `seq`
  is either that or a full buffer (`dropped`). It is never retried, so it never holds up the
  records behind it.
- A stuck producer (records wait and the last few sends all failed on a producer that had
  connected) is said in `status()` and the `killswitch_kafka_events_stuck` gauge; `healthy()`
  stays true: the watchdog would restart the kill switch, and its kills, over its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from killswitch.backoff import Backoff
from killswitch.events import EventRecord, EventType, make_event
from killswitch.kafka.client import (
    BROKER_ERRORS,
    ReconnectingClient,
    new_producer,
    stop_client,
)
from killswitch.lane import lane

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)

# Under the producer's max_request_size and the broker's message.max.bytes (1 MiB by default),
# with room for the key and the batch's own bytes.
MAX_RECORD_BYTES = 512 * 1024
# What `open_json` lists for a kill that failed: one entry per order still open, thousands on
# a big account, twice in a `failed` record (its `still_open` and its accounts' summaries).
OPEN_LISTS = frozenset({"orders", "lists", "undecided"})
# Entries kept per cut list, tried in turn until the record fits.
KEEP = (100, 10, 0)
# Refusals of a record's size (or its batch's) that a resend would only repeat.
UNSENDABLE: tuple[type[BaseException], ...] = (MessageSizeTooLargeError, RecordListTooLargeError)
# A field kept by the last resort of `shrink_event` (a record's small scalar fields alone).
SCALAR_MAX_CHARS = 1000
NOT_SENT = "event_not_sent"  # the `kind` of the alarm that stands in for a dropped record


def encode_event(event: EventRecord) -> bytes:
    """Serialise one event record (anything orjson cannot encode is sent as its `str`)."""
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)


def shrink_event(event: EventRecord, max_bytes: int) -> bytes:
    """Encode a record too large to send whole in at most `max_bytes` (module docstring)."""
    for keep in KEEP:
        value = encode_event({**_cut_lists(event, keep), "truncated": True})
        if len(value) <= max_bytes:
            return value
    scalars = {k: v for k, v in event.items() if _small_scalar(v)}
    omitted = sorted(str(k) for k in event.keys() - scalars.keys())
    value = encode_event({**scalars, "truncated": True, "omitted": omitted})
    if len(value) <= max_bytes:
        return value
    stamp = {k: event.get(k) for k in ("type", "life", "seq", "ts_ms", "mono_ms")}
    return encode_event({**stamp, "truncated": True})


def _small_scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= SCALAR_MAX_CHARS
    return value is None or isinstance(value, int | float | bool)


def _cut_lists(value: Any, keep: int) -> Any:
    """A copy of `value` with every `OPEN_LISTS` list cut to `keep` entries and counted."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key in OPEN_LISTS and isinstance(item, list | tuple) and len(item) > keep:
                out[key] = [_cut_lists(x, keep) for x in item[:keep]]
                out[f"{key}_total"] = len(item)
            else:
                out[key] = _cut_lists(item, keep)
        return out
    if isinstance(value, list | tuple):
        return [_cut_lists(x, keep) for x in value]
    return value


@dataclass(slots=True)
class _Outgoing:
    """A record on its way: what the engine emitted and the bytes that stand for it."""

    event: EventRecord
    value: bytes


class KafkaEventSink(ReconnectingClient):
    """An `EventSink` and a daemon `Service`: buffer event records, drain them to Kafka."""

    name = "kafka-events"

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        key: str | None = None,
        buffer: int | None = None,
        batch_max: int = 500,
        max_record_bytes: int = MAX_RECORD_BYTES,
        stuck_after_failures: int = 5,
        start_timeout_s: float = 5.0,
        flush_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(backoff=backoff, clock=clock)
        self.what = "kafka events"
        self.settings = settings
        self.topic = settings.events_topic
        self.key = (key or settings.replica_name()).encode()
        self.batch_max = batch_max
        self.max_record_bytes = max_record_bytes
        self.stuck_after_failures = stuck_after_failures
        self.start_timeout_s = start_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self._buffer: deque[EventRecord] = deque(maxlen=buffer or settings.event_buffer)
        self._inflight: list[_Outgoing] = []
        self._work = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self.emitted = 0
        self.sent = 0
        self.dropped = 0  # lost: pushed out of a full buffer, or undeliverable
        self.undeliverable = 0  # records that could never be sent (module docstring)
        self.truncated = 0  # records sent shrunk
        self.send_failures = 0
        self._failures_in_a_row = 0  # failed sends on a connected producer since the last ack

    # -- EventSink --------------------------------------------------------------------------

    def emit(self, event: EventRecord) -> None:
        """Queue one record; when the buffer is full the oldest queued record is dropped."""
        self.emitted += 1
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(event)
        self._work.set()

    # -- Service ----------------------------------------------------------------------------

    async def _step(self) -> None:
        if not self.pending():
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._work.wait()
            return
        await lane().turn()  # after a kill's own next steps: see `killswitch.lane`
        await self._send_batch()

    def _wake(self) -> None:
        self._work.set()

    async def _at_stop(self) -> None:
        await self._flush()

    def healthy(self) -> bool:
        """True while the drain loop turns. A stuck producer (see `stuck`) is said in `status`
        and the metrics, never by going unhealthy: the watchdog would restart the daemon, its
        kills and latched sweeps with it, over events (review 74: a broker whose partition
        leader was unreachable made the kill switch restart in a loop)."""
        return super().healthy()

    def stuck(self) -> bool:
        """Records wait and the last `stuck_after_failures` sends all failed on a producer that
        had connected: the broker is there and takes none of them (an outage, where connecting
        fails, is reported but is not this)."""
        return bool(self.pending()) and self._failures_in_a_row >= self.stuck_after_failures

    def status(self) -> str:
        """Say whether events are flowing and what is waiting or lost."""
        state = (
            "connected" if self.connected else f"disconnected: {self.last_error or 'connecting'}"
        )
        if self.stuck():
            state = f"stuck, {self._failures_in_a_row} sends failed in a row: {self.last_error}"
        return f"{state}, {self.pending()} buffered, {self.dropped} dropped"

    def pending(self) -> int:
        """Records not yet acknowledged by the broker."""
        return len(self._buffer) + len(self._inflight)

    def snapshot(self) -> dict[str, object]:
        """Counters for `killswitch status` and metrics."""
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "buffered": self.pending(),
            "emitted": self.emitted,
            "sent": self.sent,
            "dropped": self.dropped,
            "undeliverable": self.undeliverable,
            "truncated": self.truncated,
            "send_failures": self.send_failures,
            "stuck": self.stuck(),
        }

    # -- draining ---------------------------------------------------------------------------

    async def _send_batch(self) -> None:
        producer = self._producer
        assert producer is not None
        if not self._inflight:
            self._take()
        # Hand the whole batch to the producer before awaiting any of it: it batches them.
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        for out in self._inflight:
            try:
                futures.append(await producer.send(self.topic, out.value, key=self.key))
            except UNSENDABLE as exc:
                futures.append(_refused(exc))
            except BROKER_ERRORS as exc:
                error = exc
                break
        results = await asyncio.gather(*futures, return_exceptions=True)
        tried = self._inflight[: len(futures)]
        retry = []
        for out, result in zip(tried, results, strict=True):
            if isinstance(result, UNSENDABLE):
                self._not_sent(out.event, result)
            elif isinstance(result, BaseException):
                error = error or result
                retry.append(out)
            else:
                self.sent += 1
                self._failures_in_a_row = 0
        # Only what failed goes again, ahead of anything newer: on the topic it may follow
        # records of its batch with a higher seq (the module docstring tells readers).
        self._inflight = retry + self._inflight[len(futures) :]
        if error is not None:
            self.send_failures += 1
            self._failures_in_a_row += 1
            raise error

    def _take(self) -> None:
        """Move the next records from the buffer to `_inflight`, encoded to fit."""
        while self._buffer and len(self._inflight) < self.batch_max:
            event = self._buffer.popleft()
            try:
                value = encode_event(event)
                if len(value) > self.max_record_bytes:
                    size, value = len(value), shrink_event(event, self.max_record_bytes)
                    self.truncated += 1
                    log.warning(
                        "kafka event too large, sent shrunk type=%s seq=%s bytes=%d sent=%d",
                        event.get("type"),
                        event.get("seq"),
                        size,
                        len(value),
                    )
            except orjson.JSONEncodeError as exc:
                self._not_sent(event, exc)
                continue
            self._inflight.append(_Outgoing(event, value))

    def _not_sent(self, event: EventRecord, error: BaseException) -> None:
        """Drop a record that can never be sent; an alarm record says so in its place."""
        self.dropped += 1
        self.undeliverable += 1
        log.error(
            "kafka event dropped, it can never be sent type=%s life=%s seq=%s error=%s: %s",
            event.get("type"),
            event.get("life"),
            event.get("seq"),
            type(error).__name__,
            error,
        )
        if event.get("type") == EventType.ALARM and event.get("kind") == NOT_SENT:
            return  # an alarm about an alarm would follow it into the same refusal
        self.emit(
            make_event(
                EventType.ALARM,
                kind=NOT_SENT,
                component=self.name,
                record_type=event.get("type"),
                record_seq=event.get("seq"),
                error=f"{type(error).__name__}: {error}"[:300],
            )
        )

    async def _flush(self) -> None:
        if not self.pending() or self._producer is None:
            if self.pending():
                log.warning("kafka events not delivered at stop count=%d", self.pending())
            return
        try:
            async with asyncio.timeout(self.flush_timeout_s):
                while self.pending():
                    await self._send_batch()
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            log.warning("kafka events not delivered at stop count=%d error=%s", self.pending(), exc)

    # -- connection -------------------------------------------------------------------------

    async def _connect(self) -> None:
        producer = new_producer(self.settings, linger_ms=2)
        self._producer = producer
        await producer.start()

    def _on_connected(self) -> None:
        log.info("kafka events connected topic=%s", self.topic)

    def _on_disconnected(self, was_connected: bool) -> None:
        if was_connected:
            log.warning("kafka events disconnected, buffering error=%s", self.last_error)

    async def _teardown(self) -> None:
        producer, self._producer = self._producer, None
        self.connected = False
        if producer is not None:
            await stop_client(producer)


def _refused(error: BaseException) -> asyncio.Future[Any]:
    """A future already failed with `error`, so a refusal at `send` reads like one later."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
