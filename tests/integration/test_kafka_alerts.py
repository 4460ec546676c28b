"""The alerts consumer against a real broker, with an in-memory engine behind it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr

from killswitch.handlers.alerts import signature
from killswitch.journal import Journal, replay
from killswitch.kafka.alerts import AlertEngine, KafkaAlertConsumer
from killswitch.kafka.client import Backoff
from killswitch.kill.config import EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef, Mode
from killswitch.settings import KafkaSettings
from killswitch.sinks.kafka_metrics import KafkaCollector
from tests.conftest import eventually
from tests.fixtures.kafka import (
    KafkaBroker,
    ProxiedBroker,
    create_topics,
    kafka_broker,
    producer,
    proxied_broker,
    read_topic,
    unique_name,
)
from tests.fixtures.kafka_engine import FakeEngine

__all__ = ["kafka_broker", "proxied_broker"]

pytestmark = pytest.mark.kafka


def alert(alert_id: str, action: str = "kill", **fields: Any) -> bytes:
    body = {"id": alert_id, "ts": int(time.time() * 1000), "source": "pnl-monitor"}
    return orjson.dumps(body | {"action": action} | fields)


class Beats:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def beat(self, source: str, ts_ms: int) -> bool:
        self.seen.append((source, ts_ms))
        return True


async def kafka_settings(broker: KafkaBroker | ProxiedBroker, **overrides: Any) -> KafkaSettings:
    names = {
        "alerts_topic": unique_name("alerts"),
        "dead_letter_topic": unique_name("dlq"),
        "events_topic": unique_name("events"),
        "latch_topic": unique_name("latch"),
        "group_id": unique_name("group"),
    }
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, **(names | overrides))
    await create_topics(broker.bootstrap, settings.alerts_topic, settings.dead_letter_topic)
    return settings


@contextlib.asynccontextmanager
async def running(consumer: KafkaAlertConsumer) -> AsyncIterator[asyncio.Task[None]]:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 30)


async def committed(settings: KafkaSettings, partition: int = 0) -> int | None:
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        result: int | None = await reader.committed(
            TopicPartition(settings.alerts_topic, partition)
        )
        return result
    finally:
        await reader.stop()


def new_consumer(settings: KafkaSettings, engine: AlertEngine, **kw: Any) -> KafkaAlertConsumer:
    kw.setdefault("backoff", Backoff(initial_s=0.05, max_s=0.5))
    kw.setdefault("probe_interval_s", 0.5)
    return KafkaAlertConsumer(settings, engine, **kw)


async def test_a_kill_alert_is_committed_only_after_the_engine_journaled_it(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    submitted = asyncio.Event()
    engine.on_submit = lambda _t: submitted.set()
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        assert await committed(settings) == 0  # first start pins the end of the topic
        await prod.send_and_wait(settings.alerts_topic, alert("a-1", reason="drawdown"))
        await asyncio.wait_for(submitted.wait(), 30)
        # the engine has not returned: nothing may be committed past the alert
        assert await committed(settings) == 0
        assert engine.journal == []
        engine.gate.set()
        await eventually(lambda: committed(settings), timeout_s=30)
        assert await committed(settings) == 1
    [trigger] = engine.journal
    assert (trigger.id, trigger.mode, trigger.reason, trigger.actor) == (
        "a-1",
        Mode.KILL,
        "drawdown",
        "pnl-monitor",
    )


async def test_a_duplicate_alert_is_a_no_op_and_counted(kafka_broker: KafkaBroker) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        for _ in range(2):
            await prod.send_and_wait(settings.alerts_topic, alert("dup-1"))
        await eventually(lambda: consumer.stats.consumed == 2, timeout_s=30)
    assert [t.id for t in engine.journal] == ["dup-1"]
    assert consumer.stats.triggers == 1
    assert consumer.stats.duplicates == 1
    assert [e["trigger_id"] for e in engine.sink.of_type("duplicate")] == ["dup-1"]


async def test_an_id_reused_for_another_scope_is_dead_lettered_and_committed(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    mexc = alert("dd-1", scope={"venues": ["mexc"]})
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(
            settings.alerts_topic, alert("dd-1", scope={"venues": ["binance"]})
        )
        await prod.send_and_wait(settings.alerts_topic, mexc)
        await eventually(lambda: consumer.stats.dead_lettered == 1, timeout_s=30)
        await eventually(lambda: _equals(committed(settings), 2), timeout_s=30)
    assert [t.scope.venues for t in engine.journal] == [frozenset({"binance"})]
    assert consumer.stats.duplicates == 0
    [letter] = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=1)
    assert letter.value == mexc
    headers = dict(letter.headers)
    assert headers["x-dlq-error-kind"] == b"id_conflict"
    assert b"id dd-1 was already used" in headers["x-dlq-error"]


async def test_alerts_published_before_a_groups_first_start_are_not_replayed(
    kafka_broker: KafkaBroker,
) -> None:
    # No age bound: only what was produced after the consumer started is read (review 67's
    # `start_max_age_ms`, by default ten minutes, is tested in test_found_review67_offsets).
    settings = await kafka_settings(kafka_broker, start_max_age_ms=0)
    async with producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("old-kill"))
        # A first start begins at the records produced since it started: one stamped in the
        # same instant (Tansu stamps a record a few ms after the send) is on the boundary.
        await asyncio.sleep(0.2)
        engine = FakeEngine()
        consumer = new_consumer(settings, engine)
        async with running(consumer):
            await prod.send_and_wait(settings.alerts_topic, alert("new-kill"))
            await eventually(lambda: engine.journal, timeout_s=30)
    assert [t.id for t in engine.journal] == ["new-kill"]


async def test_a_restarted_consumer_resumes_after_the_committed_offset(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    async with producer(kafka_broker.bootstrap) as prod:
        first = FakeEngine()
        consumer = new_consumer(settings, first)
        async with running(consumer):
            await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
            await prod.send_and_wait(settings.alerts_topic, alert("k-2"))
            await eventually(lambda: len(first.journal) == 2, timeout_s=30)
            await eventually(lambda: consumer.commit_offsets() == {}, timeout_s=30)
        await prod.send_and_wait(settings.alerts_topic, alert("k-3"))
        second = FakeEngine()  # no memory of k-1, k-2: a replay would show
        async with running(new_consumer(settings, second)):
            await eventually(lambda: second.journal, timeout_s=30)
            await eventually(lambda: committed(settings), timeout_s=30)
    assert [t.id for t in second.submitted] == ["k-3"]
    assert await committed(settings) == 3


async def test_malformed_records_go_to_the_dead_letter_topic_and_valid_ones_still_act(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    bad = [b"not json", b"[1]", alert("x", action="nuke"), alert("y", scpoe={})]
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        for i, value in enumerate(bad):
            await prod.send(settings.alerts_topic, value, key=f"k{i}".encode())
            await prod.send(settings.alerts_topic, alert(f"good-{i}"))
        await prod.flush()
        await eventually(lambda: len(engine.journal) == 4, timeout_s=30)
        await eventually(lambda: consumer.stats.dead_lettered == 4, timeout_s=30)
        await eventually(lambda: consumer.commit_offsets() == {} and consumer.stats.commits)
        assert consumer.connected
    assert [t.id for t in engine.journal] == ["good-0", "good-1", "good-2", "good-3"]
    assert await committed(settings) == 8
    letters = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=4)
    assert [(r.key, r.value) for r in letters] == [(f"k{i}".encode(), v) for i, v in enumerate(bad)]
    headers = [dict(r.headers) for r in letters]
    assert [h["x-dlq-error-kind"] for h in headers] == [b"malformed"] * 4
    assert [int(h["x-dlq-offset"]) for h in headers] == [0, 2, 4, 6]
    assert b"action" in headers[2]["x-dlq-error"]
    assert b"scpoe" in headers[3]["x-dlq-error"]
    assert {h["x-dlq-topic"] for h in headers} == {settings.alerts_topic.encode()}
    assert consumer.stats.rejected == {"malformed": 4}
    assert len(engine.sink.of_type("alert_rejected")) == 4


async def test_with_a_key_configured_only_correctly_signed_alerts_act(
    kafka_broker: KafkaBroker,
) -> None:
    key = b"alert-key-for-tests"
    settings = await kafka_settings(kafka_broker, alert_hmac_key=SecretStr(key.decode()))
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    unsigned = alert("unsigned-kill")
    forged = alert("forged-kill")
    signed = alert("signed-kill")
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send(settings.alerts_topic, unsigned)
        await prod.send(
            settings.alerts_topic,
            forged,
            headers=[("x-signature", signature(b"other", forged).encode())],
        )
        await prod.send(
            settings.alerts_topic,
            signed,
            headers=[("x-signature", signature(key, signed).encode())],
        )
        await prod.flush()
        await eventually(lambda: consumer.stats.consumed == 3, timeout_s=30)
        await eventually(lambda: consumer.stats.dead_lettered == 2, timeout_s=30)
    assert [t.id for t in engine.journal] == ["signed-kill"]
    letters = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=2)
    assert [dict(r.headers)["x-dlq-error-kind"] for r in letters] == [b"unsigned", b"bad_signature"]
    assert [r.value for r in letters] == [unsigned, forged]


async def test_a_null_signature_header_is_dead_lettered_and_never_stops_the_consumer(
    kafka_broker: KafkaBroker,
) -> None:
    # Kafka header values are nullable: aiokafka hands a null one over as None. It once raised
    # AttributeError out of run(): the daemon stopped, and died again on the record at restart.
    key = b"alert-key-for-tests"
    settings = await kafka_settings(kafka_broker, alert_hmac_key=SecretStr(key.decode()))
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    poison = alert("null-signature")
    signed = alert("signed-kill")
    async with running(consumer) as task, producer(kafka_broker.bootstrap) as prod:
        await prod.send(settings.alerts_topic, poison, headers=[("x-signature", None)])
        await prod.send(
            settings.alerts_topic,
            signed,
            headers=[("x-signature", signature(key, signed).encode())],
        )
        await prod.flush()
        await eventually(lambda: consumer.stats.consumed == 2 or task.done(), timeout_s=30)
        assert not task.done(), f"the consumer's run() ended: {task.exception()!r}"
        await eventually(lambda: _equals(committed(settings), 2), timeout_s=30)
    assert [t.id for t in engine.journal] == ["signed-kill"]
    [letter] = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=1)
    assert letter.value == poison
    assert dict(letter.headers)["x-dlq-error-kind"] == b"bad_signature"
    assert b"null" in dict(letter.headers)["x-dlq-error"]


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_a_reset_alert_is_refused_unless_allowed(kafka_broker: KafkaBroker) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await prod.send_and_wait(settings.alerts_topic, alert("r-1", action="reset"))
        await eventually(lambda: consumer.stats.dead_lettered == 1, timeout_s=30)
    assert engine.latched()
    assert engine.resets == []
    letters = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=1)
    assert dict(letters[0].headers)["x-dlq-error-kind"] == b"refused"


async def test_an_allowed_reset_alert_releases_the_latch_with_its_actor(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker, allow_reset=True)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await eventually(lambda: engine.latched(), timeout_s=30)
        await prod.send_and_wait(
            settings.alerts_topic, alert("r-1", action="reset", reason="risk cleared", source="ops")
        )
        await eventually(lambda: engine.resets, timeout_s=30)
    assert not engine.latched()
    assert engine.resets == [{"actor": "kafka:ops", "reason": "risk cleared", "origin": "kafka"}]


async def test_a_replayed_reset_older_than_the_current_latch_is_refused(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker, allow_reset=True)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await eventually(lambda: engine.latched(), timeout_s=30)
        stale = int(time.time() * 1000) - 60_000
        await prod.send_and_wait(settings.alerts_topic, alert("r-old", action="reset", ts=stale))
        await eventually(lambda: consumer.stats.dead_lettered == 1, timeout_s=30)
    assert engine.latched()
    assert consumer.stats.rejected == {"stale_reset": 1}


async def test_heartbeat_alerts_reach_the_heartbeat_watch(kafka_broker: KafkaBroker) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    beats = Beats()
    consumer = new_consumer(settings, engine, heartbeats=beats)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(
            settings.alerts_topic, alert("hb-1", action="heartbeat", source="bot-7", ts=1234)
        )
        await eventually(lambda: beats.seen, timeout_s=30)
    assert beats.seen == [("bot-7", 1234)]
    assert engine.submitted == []


async def test_a_kill_for_no_configured_account_is_dead_lettered(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, accounts=[AccountRef("binance", "mm-1")])
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-x", scope={"accounts": ["mm-9"]}))
        await prod.send_and_wait(
            settings.alerts_topic, alert("k-1", scope={"accounts": ["mm-1", "mm-9"]})
        )
        await eventually(lambda: engine.journal, timeout_s=30)
    assert [t.id for t in engine.journal] == ["k-1"]
    assert consumer.stats.rejected == {"no_account": 1}
    assert engine.sink.of_type("alert_unknown_accounts")[0]["accounts"] == ["mm-9"]


async def test_an_alert_is_retried_until_journaled_and_never_skipped(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    engine.failures = 3
    consumer = new_consumer(settings, engine)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await prod.send_and_wait(settings.alerts_topic, alert("k-2"))
        await eventually(lambda: len(engine.journal) == 2, timeout_s=30)
        await eventually(lambda: committed(settings), timeout_s=30)
    assert [t.id for t in engine.journal] == ["k-1", "k-2"]
    assert [t.id for t in engine.submitted] == ["k-1"] * 4 + ["k-2"]
    assert consumer.stats.engine_failures == 3
    assert consumer.stalled == ""
    assert await committed(settings) == 2


async def test_broker_loss_is_reported_and_consumption_resumes_from_the_committed_offset(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = await kafka_settings(proxied_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer) as task, producer(proxied_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("before"))
        await eventually(lambda: engine.journal, timeout_s=30)
        await eventually(lambda: consumer.commit_offsets() == {}, timeout_s=30)
        await proxied_broker.cut()
        await eventually(lambda: not consumer.connected, timeout_s=30)
        assert consumer.status().startswith("disconnected")
        assert consumer.healthy()
        assert not task.done()
        await proxied_broker.restore()
        await eventually(lambda: consumer.connected, timeout_s=60)
        await prod.send_and_wait(settings.alerts_topic, alert("after"))
        await eventually(lambda: len(engine.journal) == 2, timeout_s=30)
    assert [t.id for t in engine.submitted] == ["before", "after"]  # nothing replayed
    kafka_events = [e["type"] for e in engine.sink.records if str(e["type"]).startswith("kafka_")]
    assert kafka_events == ["kafka_connected", "kafka_disconnected", "kafka_connected"]


async def test_an_alert_published_as_the_broker_returns_is_not_lost(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = await kafka_settings(proxied_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    async with running(consumer):
        await proxied_broker.cut()
        await eventually(lambda: not consumer.connected, timeout_s=30)
        await proxied_broker.restore()
        # published whether or not the consumer has reconnected yet
        async with producer(proxied_broker.bootstrap) as prod:
            await prod.send_and_wait(settings.alerts_topic, alert("returning"))
        await eventually(lambda: engine.journal, timeout_s=60)
    assert [t.id for t in engine.journal] == ["returning"]


async def test_a_consumer_started_while_the_broker_is_down_connects_when_it_comes_up(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = await kafka_settings(proxied_broker)
    await proxied_broker.cut()
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, start_timeout_s=1.0)
    async with running(consumer):
        assert not consumer.connected
        assert consumer.healthy()
        assert consumer.status().startswith("disconnected")
        await proxied_broker.restore()
        await eventually(lambda: consumer.connected, timeout_s=60)
        async with producer(proxied_broker.bootstrap) as prod:
            await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await eventually(lambda: engine.journal, timeout_s=30)


class FlakyJournal(Journal):
    """A journal whose next `failures` writes fail, as a full disk would."""

    failures = 0

    async def append_many_async(
        self, records: list[tuple[str, dict[str, object]]]
    ) -> list[dict[str, object]]:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return await super().append_many_async(records)


async def test_with_the_real_engine_a_failed_journal_write_is_retried_not_taken_for_a_duplicate(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    settings = await kafka_settings(kafka_broker)
    journal = FlakyJournal(tmp_path / "journal.jsonl")
    engine = Engine([], journal, EngineConfig(quiet_window_s=0.0))
    await engine.start()
    journal.failures = 2
    consumer = new_consumer(settings, engine)
    try:
        async with running(consumer), producer(kafka_broker.bootstrap) as prod:
            await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
            await eventually(lambda: committed(settings), timeout_s=30)
    finally:
        await engine.stop(grace_s=1.0)
    state, _ = replay(tmp_path / "journal.jsonl")
    assert list(state.latches) == ["k-1"]
    assert consumer.stats.engine_failures == 2
    assert consumer.stats.duplicates == 0


async def test_metrics_show_the_connection_counts_and_rejections(kafka_broker: KafkaBroker) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine)
    registry = CollectorRegistry()
    registry.register(KafkaCollector(consumer))
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await prod.send_and_wait(settings.alerts_topic, b"junk")
        await eventually(lambda: consumer.stats.dead_lettered == 1, timeout_s=30)
        text = generate_latest(registry).decode()
    assert 'killswitch_kafka_connected{component="alerts"} 1.0' in text
    assert "killswitch_kafka_alerts_consumed_total 2.0" in text
    assert "killswitch_kafka_alerts_triggers_total 1.0" in text
    assert 'killswitch_kafka_alerts_rejected_total{kind="malformed"} 1.0' in text
    assert "killswitch_kafka_alerts_lag 0.0" in text


async def test_a_broken_dead_letter_topic_holds_back_the_commit_never_the_alerts_behind(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    broken = settings.model_copy(update={"dead_letter_topic": "no such topic!"})  # illegal name
    engine = FakeEngine()
    # a dead-letter send gives up only after 60 s: the kill behind it must not wait for that
    consumer = new_consumer(broken, engine, io_timeout_s=60.0, stop_wait_s=0.1)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, b"junk")
        await prod.send_and_wait(settings.alerts_topic, alert("k-1"))
        await eventually(lambda: engine.journal, timeout_s=30)
        assert await committed(settings) == 0  # the junk is in no dead-letter topic yet
        assert consumer.stats.dead_lettered == 0
    assert [t.id for t in engine.journal] == ["k-1"]


async def test_dead_letters_failing_for_good_are_given_up_past_the_bound_and_counted(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    broken = settings.model_copy(update={"dead_letter_topic": "no such topic!"})  # illegal name
    engine = FakeEngine()
    consumer = new_consumer(
        broken, engine, io_timeout_s=0.2, dead_letter_pending_limit=3, stop_wait_s=0.1
    )
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        for _ in range(6):
            await prod.send(settings.alerts_topic, b"junk")
        await prod.send(settings.alerts_topic, alert("k-1"))
        await prod.flush()
        await eventually(lambda: engine.journal, timeout_s=30)
        await eventually(lambda: consumer.stats.dead_letter_lost, timeout_s=60)
    assert consumer.stats.dead_letter_failures >= 3
    assert consumer.stats.dead_lettered == 0


async def test_an_alert_published_before_the_first_connect_after_the_start_is_acted_on(
    proxied_broker: ProxiedBroker,
) -> None:
    """Review 39: a daemon whose first connect came after the risk engine's alert (the broker
    was down at the start) pinned its position at the end as of that connect: the kill was
    skipped, with no dead letter and no event. A first connect starts at the first record
    produced since the consumer started; history from before it is still not replayed."""
    settings = await kafka_settings(proxied_broker, start_max_age_ms=0)  # (see above)
    async with producer(proxied_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("before-start"))
    await asyncio.sleep(0.2)  # clear of the boundary instant (see the first-start test)
    await proxied_broker.cut()
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, start_timeout_s=1.0)
    async with running(consumer):
        assert not consumer.connected
        await proxied_broker.restore()
        async with producer(proxied_broker.bootstrap) as prod:
            await prod.send_and_wait(settings.alerts_topic, alert("while-reconnecting"))
        await eventually(lambda: engine.journal, timeout_s=60)
    assert [t.id for t in engine.journal] == ["while-reconnecting"]


async def test_an_alert_that_created_the_topic_after_the_start_is_acted_on(
    kafka_broker: KafkaBroker,
) -> None:
    """Review 39: the alerts topic did not exist at the start; the risk engine's first alert
    created it, and the consumer's first connect pinned the end, after that alert."""
    settings = KafkaSettings(
        bootstrap_servers=kafka_broker.bootstrap,
        alerts_topic=unique_name("alerts"),
        dead_letter_topic=unique_name("dlq"),
        events_topic=unique_name("events"),
        latch_topic=unique_name("latch"),
        group_id=unique_name("group"),
    )
    await create_topics(kafka_broker.bootstrap, settings.dead_letter_topic)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, start_timeout_s=1.0)
    async with running(consumer):
        assert not consumer.connected  # no topic yet
        await create_topics(kafka_broker.bootstrap, settings.alerts_topic)
        async with producer(kafka_broker.bootstrap) as prod:
            await prod.send_and_wait(settings.alerts_topic, alert("first-alert"))
        await eventually(lambda: engine.journal, timeout_s=60)
    assert [t.id for t in engine.journal] == ["first-alert"]


async def test_a_reset_alert_with_a_scope_releases_only_the_latches_inside_it(
    kafka_broker: KafkaBroker,
) -> None:
    """Review 39: a reset alert naming mexc/mx-a released every latch, the one over a Binance
    account too, and trading resumed there with its risk never cleared ("Resets are exact").
    A scoped reset releases the latches wholly inside its scope; wider ones stay."""
    settings = await kafka_settings(kafka_broker, allow_reset=True)
    engine = FakeEngine()
    accounts = [AccountRef("binance", "bn-a"), AccountRef("mexc", "mx-a")]
    consumer = new_consumer(settings, engine, accounts=accounts)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        bn = {"venues": ["binance"], "accounts": ["bn-a"]}
        mx = {"venues": ["mexc"], "accounts": ["mx-a"]}
        await prod.send_and_wait(settings.alerts_topic, alert("k-bn", scope=bn))
        await prod.send_and_wait(settings.alerts_topic, alert("k-mx", scope=mx))
        await prod.send_and_wait(settings.alerts_topic, alert("k-all"))
        await eventually(lambda: len(engine.latches()) == 3, timeout_s=30)
        await prod.send_and_wait(
            settings.alerts_topic, alert("r-mx", action="reset", scope={"accounts": ["mx-a"]})
        )
        await eventually(lambda: engine.resets, timeout_s=30)
    assert sorted(engine.latches()) == ["k-all", "k-bn"]


async def test_a_scoped_reset_is_stale_only_against_the_latches_it_may_release(
    kafka_broker: KafkaBroker,
) -> None:
    """A scoped reset issued before a latch outside its scope was received is not stale: that
    latch was never its to release. Against one inside its scope it still is."""
    settings = await kafka_settings(kafka_broker, allow_reset=True)
    engine = FakeEngine()
    accounts = [AccountRef("binance", "bn-a"), AccountRef("mexc", "mx-a")]
    consumer = new_consumer(settings, engine, accounts=accounts)
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        mx = {"accounts": ["mx-a"]}
        await prod.send_and_wait(settings.alerts_topic, alert("k-mx", scope=mx))
        await eventually(lambda: len(engine.latches()) == 1, timeout_s=30)
        issued = int(time.time() * 1000)
        await asyncio.sleep(0.05)
        await prod.send_and_wait(settings.alerts_topic, alert("k-bn", scope={"accounts": ["bn-a"]}))
        await eventually(lambda: len(engine.latches()) == 2, timeout_s=30)
        await prod.send_and_wait(
            settings.alerts_topic, alert("r-mx", action="reset", ts=issued, scope=mx)
        )
        await eventually(lambda: engine.resets, timeout_s=30)
        assert sorted(engine.latches()) == ["k-bn"]
        await prod.send_and_wait(
            settings.alerts_topic,
            alert("r-bn", action="reset", ts=issued, scope={"accounts": ["bn-a"]}),
        )
        await eventually(lambda: consumer.stats.dead_lettered == 1, timeout_s=30)
    assert consumer.stats.rejected == {"stale_reset": 1}
    assert sorted(engine.latches()) == ["k-bn"]
