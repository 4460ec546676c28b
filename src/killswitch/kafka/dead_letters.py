"""Dead letters of the alert consumer: a rejected record with the future of its delivery, and
the task that sends them, in order, to the dead-letter topic (`kafka.alerts` decides when a
letter is settled, resent or given up)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaProducer

from killswitch.handlers.alerts import AlertRejected

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings


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
