"""The latch topic's plumbing: making the compacted topic, and a fetch a wake can end early."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from killswitch.kafka.client import BROKER_ERRORS, client_options

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger("killswitch.kafka.replicas")

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


async def ensure_compacted_topic(settings: KafkaSettings, topic_name: str) -> None:
    """Create the compacted topic `topic_name` if it is missing (best effort: it may be made by
    an operator, who may have denied us the right; producing to it then says why)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
        if topic_name in await admin.list_topics():
            return
        brokers = (await admin.describe_cluster()).get("brokers") or [None]
        topic = NewTopic(
            topic_name,
            num_partitions=1,
            replication_factor=min(3, len(brokers)),
            topic_configs={"cleanup.policy": "compact"},
        )
        response = await admin.create_topics([topic])
        for error in response.topic_errors:
            code = error[1]
            if code == 0:
                log.info("latch topic created topic=%s", topic_name)
            elif code != TOPIC_ALREADY_EXISTS:
                log.warning("latch topic not created topic=%s error=%s", topic_name, error)
    except asyncio.CancelledError:
        raise
    except BROKER_ERRORS as exc:
        log.warning("latch topic check failed topic=%s error=%s", topic_name, exc)
    finally:
        await admin.close()


async def get_many(
    consumer: AIOKafkaConsumer, tp: TopicPartition, timeout_ms: int, wake: asyncio.Event | None
) -> dict[TopicPartition, list[Any]]:
    """`consumer.getmany`, ended early (with nothing) once `wake` is set. A fetch cancelled
    before it returned loses nothing: aiokafka hands records over only when it returns."""
    if wake is None:
        batch: dict[TopicPartition, list[Any]] = await consumer.getmany(tp, timeout_ms=timeout_ms)
        return batch
    if wake.is_set():
        return {}
    fetch = asyncio.ensure_future(consumer.getmany(tp, timeout_ms=timeout_ms))
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({fetch, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        fetch.cancel()  # a no-op once it returned
        await asyncio.wait({fetch, woken})
    return {} if fetch.cancelled() else fetch.result()
