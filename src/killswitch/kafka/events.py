"""Publish the engine's event records to the Kafka events topic, never holding up a kill.

`emit` (called by the engine through `FanOut`) only appends to a bounded buffer: O(1), no I/O,
never raises. A drain task sends the buffer in order with acks=all. While the broker is away
the buffer fills; once full, the oldest record is dropped and counted (`dropped`), so memory
stays bounded and the newest state is what survives. Records are keyed by the replica's group
id, so one daemon's events stay in order on one partition; `seq` orders and de-duplicates
them for readers (a resend after a broker failure may repeat a record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer

from killswitch.backoff import Backoff
from killswitch.events import EventRecord
from killswitch.kafka.client import (
    BROKER_ERRORS,
    ReconnectingClient,
    new_producer,
    stop_client,
)

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)


def encode_event(event: EventRecord) -> bytes:
    """Serialise one event record (anything orjson cannot encode is sent as its `str`)."""
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)


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
        self.start_timeout_s = start_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self._buffer: deque[EventRecord] = deque(maxlen=buffer or settings.event_buffer)
        self._inflight: list[EventRecord] = []
        self._work = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self.emitted = 0
        self.sent = 0
        self.dropped = 0
        self.send_failures = 0

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
        await self._send_batch()

    def _wake(self) -> None:
        self._work.set()

    async def _at_stop(self) -> None:
        await self._flush()

    def status(self) -> str:
        """Say whether events are flowing and what is waiting or lost."""
        state = (
            "connected" if self.connected else f"disconnected: {self.last_error or 'connecting'}"
        )
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
            "send_failures": self.send_failures,
        }

    # -- draining ---------------------------------------------------------------------------

    async def _send_batch(self) -> None:
        producer = self._producer
        assert producer is not None
        if not self._inflight:
            take = min(self.batch_max, len(self._buffer))
            self._inflight = [self._buffer.popleft() for _ in range(take)]
        futures: list[asyncio.Future[Any]] = []
        for event in self._inflight:
            futures.append(await producer.send(self.topic, encode_event(event), key=self.key))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), None)
        if failed is None:
            self.sent += len(self._inflight)
            self._inflight = []
            return
        self.sent += failed
        self._inflight = self._inflight[failed:]  # resent in order, before anything newer
        self.send_failures += 1
        error = results[failed]
        assert isinstance(error, BaseException)
        raise error

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
