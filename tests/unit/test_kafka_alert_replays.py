"""A record read again after it was acted on (a crash before its offset commit, offsets lost)
is a duplicate, whatever its age: the age and freshness rules are for alerts not acted on yet.
Dead-lettering it would tell the producer "not acted on" of a kill that is latched right now."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kill.engine import Engine
from killswitch.settings import KafkaSettings
from tests.unit.test_engine import finished, make_rig
from tests.unit.test_kafka_alert_records import TP, Letters, record, reset_record

NOW = int(time.time() * 1000)
TTL_MS = 60_000


def consumer_at(
    settings: KafkaSettings, engine: Engine, now_ms: int
) -> tuple[KafkaAlertConsumer, Letters]:
    consumer = KafkaAlertConsumer(settings, engine, wall_ms=lambda: now_ms)
    letters = Letters()
    consumer.letters.send = letters  # type: ignore[method-assign]
    return consumer, letters


def trigger_value(alert_id: str, action: str = "kill", venue: str = "binance") -> bytes:
    return orjson.dumps(
        {"id": alert_id, "ts": NOW, "source": "pnl", "action": action, "scope": {"venues": [venue]}}
    )


async def test_a_journaled_kill_read_again_after_a_long_restart_is_a_duplicate(
    tmp_path: Path,
) -> None:
    # Review repro: dead-lettered as `expired` (and an alert_rejected event) although latched.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=TTL_MS)
    value = trigger_value("a-1")
    first = await make_rig(tmp_path)
    try:
        consumer, _ = consumer_at(settings, first.engine, NOW)
        await consumer._process(TP, record(0, value))  # journaled; then a crash before commit
        await finished(first, "a-1")
    finally:
        await first.engine.stop()

    second = await make_rig(tmp_path)  # five minutes later, from the same journal
    try:
        assert "a-1" in second.engine.latches()
        again, letters = consumer_at(settings, second.engine, NOW + 5 * TTL_MS)
        await again._process(TP, record(0, value))
        assert letters.sent == []
        assert not second.log.of("alert_rejected")
        assert again.stats.duplicates == 1
        assert again.stats.rejected == {}
        assert [e["trigger_id"] for e in second.log.of("duplicate")] == ["a-1"]
        assert "a-1" in second.engine.latches()
    finally:
        await second.engine.stop()


async def test_a_cancel_read_again_past_its_ttl_while_its_kill_is_known_is_a_duplicate(
    tmp_path: Path,
) -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=TTL_MS)
    rig = await make_rig(tmp_path)
    try:
        consumer, _ = consumer_at(settings, rig.engine, NOW)
        value = trigger_value("c-1", action="cancel")
        await consumer._process(TP, record(0, value))
        await finished(rig, "c-1")
        later, letters = consumer_at(settings, rig.engine, NOW + 5 * TTL_MS)
        await later._process(TP, record(0, value))
        assert letters.sent == []
        assert later.stats.duplicates == 1
    finally:
        await rig.engine.stop()


async def test_an_alert_past_its_ttl_whose_id_was_used_for_another_scope_is_still_expired(
    tmp_path: Path,
) -> None:
    # Not a duplicate (another scope): not acted on, and too old to be.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=TTL_MS)
    rig = await make_rig(tmp_path)
    try:
        consumer, _ = consumer_at(settings, rig.engine, NOW)
        await consumer._process(TP, record(0, trigger_value("a-1")))
        await finished(rig, "a-1")
        later, letters = consumer_at(settings, rig.engine, NOW + 5 * TTL_MS)
        await later._process(TP, record(1, trigger_value("a-1", venue="mexc")))
        assert letters.kinds() == [(1, "expired")]
        assert later.stats.duplicates == 0
    finally:
        await rig.engine.stop()


async def test_a_reset_read_again_past_its_ttl_is_a_duplicate_not_expired(tmp_path: Path) -> None:
    # In this life the consumer knows the ids it applied: the age rule must not come first.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True, alert_ttl_ms=TTL_MS)
    rig = await make_rig(tmp_path)
    try:
        now = [NOW]
        consumer = KafkaAlertConsumer(settings, rig.engine, wall_ms=lambda: now[0])
        letters = Letters()
        consumer.letters.send = letters  # type: ignore[method-assign]
        await consumer._process(TP, record(0, trigger_value("k-1")))
        await finished(rig, "k-1")
        await consumer._process(TP, reset_record(NOW + 10, offset=1))
        assert rig.engine.latches() == {}
        now[0] += 5 * TTL_MS  # the offsets were lost; the records come back much later
        await consumer._process(TP, reset_record(NOW + 10, offset=1))
        assert letters.sent == []
        assert consumer.stats.duplicates == 1
        assert consumer.stats.resets == 1
    finally:
        await rig.engine.stop()
