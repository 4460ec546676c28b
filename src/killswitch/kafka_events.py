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

from killswitch.events import EventRecord
from killswitch.handlers.kafka import BROKER_ERRORS, Backoff, new_producer, stop_client

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)


def encode_event(event: EventRecord) -> bytes:
    """Serialise one event record (anything orjson cannot encode is sent as its `str`)."""
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)


class KafkaEventSink:
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
        self.settings = settings
        self.topic = settings.events_topic
        self.key = (key or settings.replica_name()).encode()
        self.batch_max = batch_max
        self.start_timeout_s = start_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._buffer: deque[EventRecord] = deque(maxlen=buffer or settings.event_buffer)
        self._inflight: list[EventRecord] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._running = False
        self._last_tick = clock()
        self.connected = False
        self.last_error = ""
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
        self._wake.set()

    # -- Service ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (bounded); events buffer while the broker is away."""
        if self._started:
            raise RuntimeError("event sink already started")
        self._started = True
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await self._connect()
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            await self._disconnect(exc)
            log.warning("kafka events not connected at start, buffering error=%s", exc)

    async def run(self) -> None:
        """Drain the buffer until `stop()`, then flush what the flush timeout allows."""
        self._running = True
        try:
            while not self._stopping.is_set():
                self._last_tick = self._clock()
                if not self.pending():
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await self._wake.wait()
                    continue
                await self._drain_once()
            await self._flush()
        finally:
            await self._teardown()

    async def stop(self) -> None:
        """Stop draining after a last bounded flush; safe twice and before `start()`."""
        self._stopping.set()
        self._wake.set()
        if not self._running:  # no run() to tear the clients down
            await self._teardown()

    def healthy(self) -> bool:
        """True while the drain loop turns; a broker outage only fills the buffer."""
        return self._clock() - self._last_tick < max(30.0, 3 * self.backoff.max_s)

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

    async def _drain_once(self) -> None:
        if self._producer is None:
            await self._reconnect()
            return
        try:
            await self._send_batch()
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            await self._disconnect(exc)

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
        self.connected = True
        self.last_error = ""
        self.backoff.reset()
        log.info("kafka events connected topic=%s", self.topic)

    async def _reconnect(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.backoff.next_delay()):
                await self._stopping.wait()
        if self._stopping.is_set():
            return
        try:
            await self._connect()
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            await self._disconnect(exc)

    async def _disconnect(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("kafka events disconnected, buffering error=%s", exc)
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        await self._teardown()

    async def _teardown(self) -> None:
        producer, self._producer = self._producer, None
        self.connected = False
        if producer is not None:
            await stop_client(producer)
