"""Review 67: the alert consumer told "this group never started" from "the broker has no offsets
of this group" by whether it was the process's first connect, and got both wrong.

Kafka expires a manually assigned group's offsets `offsets.retention.minutes` (7 days) after its
last commit, and the daemon committed only when alerts came. After a quiet week, a restart took
the expired offsets for a new group and started at the records produced since it started: a
kill published while the daemon was down was skipped. And a reconnect that found no committed
offset read the topic from its beginning: a kill from before the group's first start, history
the daemon promises never to replay, was acted on.

Now the position is committed again at every connect and every hour; a reconnect resumes at the
position this process committed; a start without offsets reads the alerts stamped and dated
within `kafka.start_max_age_ms` of the start and none older. Expiry is simulated by committing
-1 for the group: `committed()` then answers None, as it does for expired offsets.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from killswitch.journal import Journal
from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kill.config import EngineConfig
from killswitch.kill.engine import Engine
from killswitch.settings import KafkaSettings
from tests.conftest import eventually
from tests.fixtures.kafka import KafkaBroker, ProxiedBroker, kafka_broker, producer, proxied_broker
from tests.fixtures.kafka_daemon import kafka_drill
from tests.integration.test_kafka_alerts import (
    alert,
    committed,
    kafka_settings,
    new_consumer,
    running,
)

__all__ = ["kafka_broker", "proxied_broker"]

pytestmark = pytest.mark.kafka

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


async def forget_offsets(bootstrap: str, group: str, topic: str) -> None:
    """Drop `group`'s committed offset of `topic`, as Kafka's offset expiry does."""
    writer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await writer.start()
    try:
        tp = TopicPartition(topic, 0)
        writer.assign([tp])
        await writer.commit({tp: -1})
        assert await writer.committed(tp) is None
    finally:
        await writer.stop()


async def forget(settings: KafkaSettings) -> None:
    await forget_offsets(settings.bootstrap_servers, settings.group_id, settings.alerts_topic)


async def publish_stamped(
    bootstrap: str, topic: str, alert_id: str, age_ms: int, *, stamp_record: bool = True
) -> None:
    """Publish a kill alert dated `age_ms` in the past, its record stamped so too or now."""
    ts = int(time.time() * 1000) - age_ms
    async with producer(bootstrap) as prod:
        stamp = ts if stamp_record else None
        await prod.send_and_wait(topic, alert(alert_id, ts=ts), timestamp_ms=stamp)


@contextlib.asynccontextmanager
async def real_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine([], Journal(tmp_path / "journal.jsonl"), EngineConfig(quiet_window_s=0.0))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s=1.0)


async def test_a_kill_published_while_the_daemon_was_down_is_acted_on_after_its_offsets_expired(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        topic, group = d.topics["alerts_topic"], d.group("a")
        await publish_stamped(d.bootstrap, topic, "drill-an-hour-ago", HOUR_MS)
        config = d.config("a")
        async with d.daemon("a", config) as daemon:  # a new group: the hour-old drill is history
            await daemon.ready()
            await eventually(lambda: d.committed(group), timeout_s=60)
            assert await d.committed(group) == 1
        await d.publish(alert("k-while-down", reason="drawdown"))
        await forget_offsets(d.bootstrap, group, topic)  # a quiet week later: expired
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await eventually(d.flat, timeout_s=60)
            status = await daemon.status()
            await eventually(lambda: d.committed(group), timeout_s=60)
            assert await d.committed(group) == 2
    assert [latch["trigger_id"] for latch in status["latches"]] == ["k-while-down"]


async def test_a_new_group_reads_the_alerts_of_the_last_start_max_age_and_none_older(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    settings = await kafka_settings(kafka_broker)  # start_max_age_ms: ten minutes
    bootstrap, topic = kafka_broker.bootstrap, settings.alerts_topic
    await publish_stamped(bootstrap, topic, "older", HOUR_MS)
    # sent just now, but the alert itself is an hour old
    await publish_stamped(bootstrap, topic, "dated-older", HOUR_MS, stamp_record=False)
    # published as the daemon was starting, before its consumer first connected
    await publish_stamped(bootstrap, topic, "recent", MINUTE_MS)
    async with real_engine(tmp_path) as engine:
        consumer = new_consumer(settings, engine)
        async with running(consumer):
            await eventually(lambda: engine.accepted("recent"), timeout_s=30)
            await eventually(lambda: committed(settings), timeout_s=30)
            assert await committed(settings) == 3
        assert not engine.accepted("older")
        assert not engine.accepted("dated-older")
        assert list(engine.latches()) == ["recent"]


async def test_a_reconnect_without_committed_offsets_resumes_where_it_was_and_replays_no_history(
    tmp_path: Path, proxied_broker: ProxiedBroker
) -> None:
    settings = await kafka_settings(proxied_broker)
    # an alert an hour old, sent just before the group's first start (review 67's repro)
    await publish_stamped(
        proxied_broker.bootstrap, settings.alerts_topic, "history", HOUR_MS, stamp_record=False
    )
    async with real_engine(tmp_path) as engine:
        consumer = new_consumer(settings, engine)
        async with running(consumer), producer(proxied_broker.bootstrap) as prod:
            await eventually(lambda: committed(settings), timeout_s=30)
            assert await committed(settings) == 1  # the history was passed over
            await forget(settings)  # the broker lost them
            await proxied_broker.cut()
            await eventually(lambda: not consumer.connected, timeout_s=30)
            await proxied_broker.restore()
            await eventually(lambda: consumer.connected, timeout_s=60)
            assert await committed(settings) == 1  # the reconnect committed its position
            await prod.send_and_wait(settings.alerts_topic, alert("fresh"))
            await eventually(lambda: engine.accepted("fresh"), timeout_s=30)
        assert not engine.accepted("history")
        assert list(engine.latches()) == ["fresh"]


async def test_a_reconnect_after_a_lost_commit_without_offsets_replays_no_history(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    """As above on any broker: the connection breaks at the commit after an alert."""
    settings = await kafka_settings(kafka_broker)
    await publish_stamped(kafka_broker.bootstrap, settings.alerts_topic, "history", HOUR_MS)
    breaks = [KafkaConnectionError("connection lost at the commit")]

    def lose_the_connection(_offsets: dict[TopicPartition, int]) -> None:
        if breaks:
            raise breaks.pop()

    async with real_engine(tmp_path) as engine:
        consumer = new_consumer(settings, engine)
        async with running(consumer), producer(kafka_broker.bootstrap) as prod:
            await eventually(lambda: committed(settings), timeout_s=30)
            await forget(settings)
            consumer.before_commit = lose_the_connection
            await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
            await eventually(lambda: consumer.stats.connects == 2, timeout_s=30)
            await prod.send_and_wait(settings.alerts_topic, alert("fresh"))
            await eventually(lambda: engine.accepted("fresh"), timeout_s=30)
            await eventually(lambda: consumer.commit_offsets() == {}, timeout_s=30)
            assert await committed(settings) == 3
        assert not engine.accepted("history")
        assert sorted(engine.latches()) == ["fresh", "k-1"]


async def has_committed(settings: KafkaSettings) -> bool:
    return await committed(settings) is not None


def frozen_clock() -> tuple[list[float], Any]:
    now = [0.0]
    return now, lambda: now[0]


async def test_a_quiet_consumer_commits_its_position_again_every_hour(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    settings = await kafka_settings(kafka_broker)
    now, clock = frozen_clock()
    async with real_engine(tmp_path) as engine:
        consumer = new_consumer(settings, engine, clock=clock)
        async with running(consumer):
            await eventually(lambda: consumer.connected, timeout_s=30)
            assert await committed(settings) == 0
            await forget(settings)  # as Kafka would a retention period after that commit
            now[0] += HOUR_MS / 1000  # an hour with no alert
            await eventually(lambda: has_committed(settings), timeout_s=30, interval_s=0.1)
            assert await committed(settings) == 0


async def test_the_hourly_commit_never_goes_past_a_record_not_done(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    settings = await kafka_settings(kafka_broker)
    broken = settings.model_copy(update={"dead_letter_topic": "no such topic!"})  # illegal name
    now, clock = frozen_clock()
    async with real_engine(tmp_path) as engine:
        consumer: KafkaAlertConsumer = new_consumer(
            broken, engine, clock=clock, io_timeout_s=60.0, stop_wait_s=0.1
        )
        async with running(consumer), producer(kafka_broker.bootstrap) as prod:
            await eventually(lambda: consumer.connected, timeout_s=30)
            await prod.send_and_wait(settings.alerts_topic, b"junk")  # its dead letter hangs
            await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
            await eventually(lambda: engine.accepted("k-1"), timeout_s=30)
            await forget(settings)
            now[0] += HOUR_MS / 1000
            await eventually(lambda: has_committed(settings), timeout_s=30, interval_s=0.1)
            assert await committed(settings) == 0  # not past the junk, still not dead-lettered
