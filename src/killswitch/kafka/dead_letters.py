"""Dead letters of the alert consumer: a rejected record with the future of its delivery, the
task that sends them, in order, to the dead-letter topic, and `DeadLetters`, which holds each
partition's letters until they are delivered, resends the failed and bounds what is pending.
The consumer commits a partition only up to its first letter still pending."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition

from killswitch.handlers.alerts import AlertRejected

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)


class Record(Protocol):
    """The fields of an aiokafka `ConsumerRecord` we read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class DeadLetter:
    offset: int
    record: Record
    error: AlertRejected
    future: asyncio.Future[Any] | None = None
    attempts: int = 0

    @property
    def delivered(self) -> bool:
        fut = self.future
        return fut is not None and fut.done() and not fut.cancelled() and not fut.exception()


async def send_letters(
    queue: asyncio.Queue[DeadLetter], producer: AIOKafkaProducer, settings: KafkaSettings
) -> None:
    """Send queued dead letters in order (sends return at once while the topic is known)."""
    while True:
        letter = await queue.get()
        target = letter.future
        if target is None or target.done():
            continue  # given up or cancelled at a disconnect
        record = letter.record
        headers = [
            *record.headers,
            ("x-dlq-error-kind", letter.error.kind.encode()),
            ("x-dlq-error", letter.error.msg[:1000].encode()),
            ("x-dlq-topic", record.topic.encode()),
            ("x-dlq-partition", str(record.partition).encode()),
            ("x-dlq-offset", str(record.offset).encode()),
            ("x-dlq-group", settings.group_id.encode()),
        ]
        try:
            delivery = await producer.send(
                settings.dead_letter_topic,
                value=record.value if record.value is not None else b"",
                key=record.key,
                headers=headers,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the letter, counted and resent
            if not target.done():
                target.set_exception(exc)
            continue
        delivery.add_done_callback(functools.partial(forward, target))


def forward(target: asyncio.Future[None], delivery: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if delivery.cancelled():
        target.cancel()
    elif (exc := delivery.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(None)


class LetterCounts(Protocol):
    """The consumer's counters the dead letters keep (`ConsumerStats`)."""

    dead_lettered: int
    dead_letter_failures: int
    dead_letter_lost: int


class DeadLetters:
    """Each partition's dead letters, oldest first, until delivered or given up."""

    def __init__(
        self, settings: KafkaSettings, counts: LetterCounts, *, pending_limit: int
    ) -> None:
        self.settings = settings
        self.counts = counts
        self.pending_limit = pending_limit
        self._pending: dict[TopicPartition, deque[DeadLetter]] = {}
        self._queue: asyncio.Queue[DeadLetter] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._failed: list[DeadLetter] = []  # sends that failed, to resend

    def start(self, producer: AIOKafkaProducer) -> None:
        """Send through `producer` (the consumer's connection) from now on."""
        self._sender = asyncio.create_task(
            send_letters(self._queue, producer, self.settings), name="dead letters"
        )

    async def drop(self) -> None:
        """The connection is gone: forget every letter in flight (none is committed, so their
        records come back) and stop the sender."""
        for letters in self._pending.values():
            for letter in letters:
                if letter.future is not None:
                    letter.future.cancel()
        self._pending = {}
        self._failed = []
        self._queue = asyncio.Queue()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.wait({sender})

    def post(self, tp: TopicPartition, record: Record, error: AlertRejected) -> None:
        """Dead-letter `record`: sent in the background, held until delivered."""
        letter = DeadLetter(record.offset, record, error)
        self.send(letter)
        self._pending.setdefault(tp, deque()).append(letter)

    def send(self, letter: DeadLetter) -> None:
        """Queue one dead letter for the sender task; its future resolves once delivered.

        A send can wait out the request timeout (metadata of a broken topic): it happens in
        its own task so the alerts behind never wait for the dead-letter topic.
        """
        letter.attempts += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda fut: self._done(letter, fut))
        letter.future = future
        self._queue.put_nowait(letter)

    def _done(self, letter: DeadLetter, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self._failed.append(letter)

    def first_pending(self, tp: TopicPartition) -> int | None:
        """The offset of the oldest letter of `tp` not yet settled: commits stop before it."""
        letters = self._pending.get(tp)
        return letters[0].offset if letters else None

    async def settle(self, *, wait_s: float = 0.0) -> None:
        """Confirm dead letters in order, resend the failed, and bound what is pending.

        A dead letter never holds up the alerts behind it: only the commit waits for it. Past
        `pending_limit` letters undelivered, the consumer waits for the oldest (at most a
        second per poll: a slow topic slows a flood of bad records), gives up on letters that
        failed three times, and beyond ten times the limit on the oldest whatever their state
        (each counted and logged with its offset: the record is still in the alerts topic).
        """
        if wait_s:
            futures = {lt.future for q in self._pending.values() for lt in q if lt.future}
            if futures:
                await asyncio.wait(futures, timeout=wait_s)
        undelivered = sum(len(q) for q in self._pending.values())
        crowded = undelivered >= self.pending_limit
        failed, self._failed = self._failed, []
        for letter in failed:
            self.counts.dead_letter_failures += 1
            fut = letter.future
            error = fut.exception() if fut is not None and not fut.cancelled() else None
            if crowded and letter.attempts >= 3:
                letter.future = None  # given up when it reaches the head of its queue
                continue
            log.warning("dead letter failed, resending offset=%d error=%s", letter.offset, error)
            self.send(letter)
        self._release(undelivered - 10 * self.pending_limit)
        if crowded:
            oldest = [q[0].future for q in self._pending.values() if q and q[0].future]
            if oldest:
                await asyncio.wait(oldest, timeout=1.0)

    def _release(self, overflow: int) -> None:
        """Pop each partition's settled letters off its head; give up `overflow` more."""
        for letters in self._pending.values():
            while letters:
                head = letters[0]
                if overflow > 0 and head.future is not None and not head.future.done():
                    head.future.cancel()
                    head.future = None
                    overflow -= 1
                if head.future is not None and not head.delivered:
                    break
                letters.popleft()
                if head.future is not None:
                    self.counts.dead_lettered += 1
                    continue
                self.counts.dead_letter_lost += 1
                log.error(
                    "dead letter given up topic=%s partition=%d offset=%d kind=%s",
                    head.record.topic,
                    head.record.partition,
                    head.offset,
                    head.error.kind,
                )
