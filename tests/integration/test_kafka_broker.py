"""The test broker does what the daemon relies on: manual assignment with committed offsets."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.fixtures.kafka import (
    KafkaBroker,
    create_topics,
    kafka_broker,
    producer,
    read_topic,
    unique_name,
)

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka


async def _consume(consumer: AIOKafkaConsumer, count: int) -> list[tuple[int, bytes]]:
    seen: list[tuple[int, bytes]] = []
    async with asyncio.timeout(30):
        while len(seen) < count:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend((r.partition, r.value) for r in recs if r.value is not None)
    return seen


async def test_a_group_resumes_each_partition_after_its_committed_offset(
    kafka_broker: KafkaBroker,
) -> None:
    topic, group = unique_name("alerts"), unique_name("group")
    await create_topics(kafka_broker.bootstrap, topic, partitions=2)
    async with producer(kafka_broker.bootstrap) as prod:
        for i in range(6):
            await prod.send_and_wait(topic, f"v{i}".encode(), partition=i % 2)

    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    committed: list[int | None] = []
    for _ in range(2):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            assert consumer.partitions_for_topic(topic) == {0, 1}
            consumer.assign(tps)
            seen = await _consume(consumer, 6 if not committed else 3)
            await consumer.commit({tps[0]: 2, tps[1]: 1})
            committed = [await consumer.committed(tp) for tp in tps]
        finally:
            await consumer.stop()
    # the second run started from offsets 2 and 1: v4 on partition 0, v3 and v5 on partition 1
    assert sorted(seen) == [(0, b"v4"), (1, b"v3"), (1, b"v5")]
    assert committed == [2, 1]


async def test_headers_keys_and_tombstones_survive_the_round_trip(
    kafka_broker: KafkaBroker,
) -> None:
    topic = unique_name("latch")
    await create_topics(kafka_broker.bootstrap, topic, compact=True)
    async with producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(topic, b"one", key=b"k", headers=[("x-origin", b"r1")])
        await prod.send_and_wait(topic, None, key=b"k")
    records = await read_topic(kafka_broker.bootstrap, topic, count=2)
    assert [(r.key, r.value, tuple(r.headers)) for r in records] == [
        (b"k", b"one", (("x-origin", b"r1"),)),
        (b"k", None, ()),
    ]
