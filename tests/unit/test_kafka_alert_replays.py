"""A record read again after it was acted on (a crash before its offset commit, offsets lost)
is a duplicate, whatever its age: the age and freshness rules are for alerts not acted on yet.
Dead-lettering it would tell the producer "not acted on" of a kill that is latched right now."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kill import engine as engine_module
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


# -- after a restart, or once the engine no longer holds the trigger: its journal's ids ----------


async def life_one(tmp_path: Path, settings: KafkaSettings, *records: Any) -> None:
    """The daemon's last life: `records` acted on (kills run to their end), then a stop before
    their offsets were committed (or with the offsets lost since)."""
    rig = await make_rig(tmp_path)
    try:
        consumer, letters = consumer_at(settings, rig.engine, NOW)
        for one in records:
            await consumer._process(TP, one)
        await rig.engine.wait_idle()
        assert letters.sent == []
    finally:
        await rig.engine.stop()


async def test_a_reset_read_again_after_a_restart_past_its_ttl_is_a_duplicate_not_expired(
    tmp_path: Path,
) -> None:
    # Review repro: the ids applied were the consumer's, forgotten by a restart; the re-read
    # reset was dead-lettered `expired` (and an alert_rejected event) although it was applied.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True, alert_ttl_ms=TTL_MS)
    await life_one(
        tmp_path, settings, record(0, trigger_value("k-1")), reset_record(NOW + 10, offset=1)
    )
    second = await make_rig(tmp_path)  # five minutes later, from the same journal
    try:
        assert second.engine.latches() == {}
        again, letters = consumer_at(settings, second.engine, NOW + 5 * TTL_MS)
        await again._process(TP, reset_record(NOW + 10, offset=1))
        assert letters.sent == []
        assert not second.log.of("alert_rejected")
        assert (again.stats.duplicates, again.stats.resets) == (1, 0)
        assert [e["reset_id"] for e in second.log.of("duplicate")] == ["r-1"]
        assert not second.log.of("reset")  # never handed to the engine again
    finally:
        await second.engine.stop()


async def test_a_reset_read_again_after_a_restart_is_a_duplicate_not_stale(tmp_path: Path) -> None:
    # Review repro: with a kill latched since, the re-read reset was dead-lettered
    # `stale_reset`, saying "not acted on" of a reset that was. The kill stays latched.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    await life_one(
        tmp_path, settings, record(0, trigger_value("k-1")), reset_record(NOW + 10, offset=1)
    )
    second = await make_rig(tmp_path)
    try:
        kill, _ = consumer_at(settings, second.engine, NOW + 1_000)
        await kill._process(TP, record(2, trigger_value("k-2", venue="mexc")))
        await finished(second, "k-2")
        again, letters = consumer_at(settings, second.engine, NOW + 2_000)
        await again._process(TP, reset_record(NOW + 10, offset=1))
        assert letters.sent == []
        assert again.stats.duplicates == 1
        assert list(second.engine.latches()) == ["k-2"]
    finally:
        await second.engine.stop()


async def test_a_finished_one_shot_cancel_read_again_after_a_restart_past_its_ttl_is_a_duplicate(
    tmp_path: Path,
) -> None:
    # Review repro: the engine no longer holds a finished one-shot after a restart, so the
    # consumer could not tell it was acted on and dead-lettered it `expired`.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=TTL_MS)
    value = trigger_value("c-1", action="cancel")
    await life_one(tmp_path, settings, record(0, value))
    second = await make_rig(tmp_path)
    try:
        assert second.engine.trigger("c-1") is None  # not held: only its id is journaled
        assert second.engine.accepted("c-1")
        again, letters = consumer_at(settings, second.engine, NOW + 5 * TTL_MS)
        await again._process(TP, record(0, value))
        assert letters.sent == []
        assert not second.log.of("alert_rejected")
        assert again.stats.duplicates == 1
        assert [e["trigger_id"] for e in second.log.of("duplicate")] == ["c-1"]
        assert not second.log.of("triggered")
        assert second.engine.kill_for("c-1") is None  # nothing ran again
    finally:
        await second.engine.stop()


async def test_a_kill_reset_in_the_last_life_read_again_past_its_ttl_is_a_duplicate(
    tmp_path: Path,
) -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True, alert_ttl_ms=TTL_MS)
    value = trigger_value("k-1")
    await life_one(tmp_path, settings, record(0, value), reset_record(NOW + 10, offset=1))
    second = await make_rig(tmp_path)
    try:
        again, letters = consumer_at(settings, second.engine, NOW + 5 * TTL_MS)
        await again._process(TP, record(0, value))
        assert letters.sent == []
        assert again.stats.duplicates == 1
        assert second.engine.latches() == {}  # released by the reset, and stays so
    finally:
        await second.engine.stop()


async def test_a_cancel_older_than_the_kills_kept_read_again_past_its_ttl_is_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same life: the engine forgot the finished kill (KILLS_KEPT), its journal keeps the id.
    monkeypatch.setattr(engine_module, "KILLS_KEPT", 1)
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=TTL_MS)
    rig = await make_rig(tmp_path)
    try:
        consumer, _ = consumer_at(settings, rig.engine, NOW)
        value = trigger_value("c-1", action="cancel")
        await consumer._process(TP, record(0, value))
        await finished(rig, "c-1")
        await consumer._process(TP, record(1, trigger_value("c-2", action="cancel")))
        await finished(rig, "c-2")
        assert rig.engine.trigger("c-1") is None
        later, letters = consumer_at(settings, rig.engine, NOW + 5 * TTL_MS)
        await later._process(TP, record(0, value))
        assert letters.sent == []
        assert later.stats.duplicates == 1
    finally:
        await rig.engine.stop()


@pytest.mark.parametrize("late", [False, True], ids=["within-ttl", "past-ttl"])
async def test_an_id_accepted_but_no_longer_held_is_a_duplicate_whatever_it_asks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, late: bool
) -> None:
    # The decision (kafka/alerts.py `_acted_on`): nothing is left to compare the scope and mode
    # with. The id is taken, so nothing could be acted on either way; a re-read of an alert
    # acted on is by far the likelier (offsets lost replay the topic from its start) and must
    # not say "not acted on". A duplicate, the event saying the content was not compared.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True, alert_ttl_ms=TTL_MS)
    await life_one(
        tmp_path, settings, record(0, trigger_value("k-1")), reset_record(NOW + 10, offset=1)
    )
    second = await make_rig(tmp_path)
    try:
        now = NOW + (5 * TTL_MS if late else 1_000)
        again, letters = consumer_at(settings, second.engine, now)
        with caplog.at_level(logging.INFO, logger="killswitch.kafka.alerts"):
            await again._process(TP, record(2, trigger_value("k-1", venue="mexc")))
        assert letters.sent == []
        assert again.stats.duplicates == 1
        assert again.stats.triggers == 0
        [event] = second.log.of("duplicate")
        assert (event["trigger_id"], event["compared"]) == ("k-1", False)
        assert any("not compared" in r.getMessage() for r in caplog.records)
        assert second.engine.latches() == {}
    finally:
        await second.engine.stop()
