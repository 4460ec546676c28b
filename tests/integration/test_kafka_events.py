"""The events sink against a real broker: order, bounded buffering, outages never block emit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from killswitch.events import make_event
from killswitch.kafka.client import Backoff
from killswitch.kafka.events import KafkaEventSink
from killswitch.settings import KafkaSettings
from tests.conftest import eventually
from tests.fixtures.kafka import (
    KafkaBroker,
    ProxiedBroker,
    create_topics,
    kafka_broker,
    proxied_broker,
    read_topic,
    unique_name,
)

__all__ = ["kafka_broker", "proxied_broker"]

pytestmark = pytest.mark.kafka


async def events_settings(broker: KafkaBroker | ProxiedBroker) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        events_topic=unique_name("events"),
        group_id=unique_name("replica"),
    )
    await create_topics(broker.bootstrap, settings.events_topic, partitions=3)
    return settings


@contextlib.asynccontextmanager
async def running(sink: KafkaEventSink) -> AsyncIterator[asyncio.Task[None]]:
    await sink.start()
    task = asyncio.create_task(sink.run())
    try:
        yield task
    finally:
        await sink.stop()
        await asyncio.wait_for(task, 30)


def decoded(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


async def test_events_reach_the_topic_in_order_on_one_partition_keyed_by_replica(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await events_settings(kafka_broker)
    sink = KafkaEventSink(settings)
    async with running(sink):
        for i in range(50):
            sink.emit(make_event("wave", kill_id="k-1", wave=i))
        await eventually(lambda: sink.sent == 50, timeout_s=30)
    records = await read_topic(kafka_broker.bootstrap, settings.events_topic, count=50)
    assert {r.key for r in records} == {settings.replica_name().encode()}
    assert len({r.partition for r in records}) == 1
    events = decoded(records)
    assert [e["wave"] for e in events] == list(range(50))
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert sink.dropped == 0


async def test_a_full_buffer_drops_the_oldest_records_and_counts_them(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = await events_settings(proxied_broker)
    await proxied_broker.cut()
    sink = KafkaEventSink(
        settings, buffer=5, start_timeout_s=0.5, backoff=Backoff(initial_s=0.05, max_s=0.2)
    )
    async with running(sink):
        for i in range(8):
            sink.emit(make_event("outcome", n=i))  # returns at once, broker or not
        assert sink.dropped == 3
        assert sink.pending() == 5
        assert sink.status().startswith("disconnected")
        await proxied_broker.restore()
        await eventually(lambda: sink.sent == 5, timeout_s=60)
    records = await read_topic(proxied_broker.bootstrap, settings.events_topic, count=5)
    assert [e["n"] for e in decoded(records)] == [3, 4, 5, 6, 7]


async def test_events_emitted_during_an_outage_are_delivered_after_it(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = await events_settings(proxied_broker)
    sink = KafkaEventSink(settings, backoff=Backoff(initial_s=0.05, max_s=0.2))
    async with running(sink):
        sink.emit(make_event("triggered", n=0))
        await eventually(lambda: sink.sent == 1, timeout_s=30)
        await proxied_broker.cut()
        for i in range(1, 4):
            sink.emit(make_event("outcome", n=i))
        await proxied_broker.restore()
        await eventually(lambda: sink.pending() == 0, timeout_s=60)
    records = await read_topic(proxied_broker.bootstrap, settings.events_topic, count=4)
    numbers = [e["n"] for e in decoded(records)]
    assert sorted(set(numbers)) == [0, 1, 2, 3]  # at-least-once: a resend may repeat one
    assert numbers[:1] == [0]


async def test_records_that_json_cannot_express_are_sent_as_text(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await events_settings(kafka_broker)
    sink = KafkaEventSink(settings)
    async with running(sink):
        sink.emit(make_event("odd", scope={"symbols": frozenset({"BTCUSDT"})}))
        await eventually(lambda: sink.sent == 1, timeout_s=30)
    [event] = decoded(await read_topic(kafka_broker.bootstrap, settings.events_topic, count=1))
    assert event["scope"] == {"symbols": "frozenset({'BTCUSDT'})"}


async def test_stop_before_start_is_safe_and_emit_still_buffers() -> None:
    sink = KafkaEventSink(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    await sink.stop()
    await sink.stop()
    sink.emit(make_event("late"))
    assert sink.pending() == 1
