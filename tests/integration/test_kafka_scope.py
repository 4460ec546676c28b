"""Kafka alerts whose scope selects no configured account: dead-lettered with the reason."""

from __future__ import annotations

import pytest

from killswitch.model import AccountRef
from tests.conftest import eventually
from tests.fixtures.kafka import KafkaBroker, kafka_broker, producer, read_topic
from tests.fixtures.kafka_engine import FakeEngine
from tests.integration.test_kafka_alerts import alert, kafka_settings, new_consumer, running

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

ACCOUNTS = [AccountRef("binance", "mm-1"), AccountRef("mexc", "mm-2")]


async def test_alerts_whose_scope_selects_no_account_are_dead_lettered_naming_why(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, accounts=ACCOUNTS)
    refused = {
        "typo": {"accounts": ["mm-l"]},
        "no-venue": {"venues": ["bingx"]},
        "pair": {"venues": ["mexc"], "accounts": ["mm-1"]},  # mm-1 is a Binance account
    }
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        for alert_id, scope in refused.items():
            await prod.send(settings.alerts_topic, alert(alert_id, scope=scope))
        await prod.send(settings.alerts_topic, alert("ok", scope={"accounts": ["mm-2"]}))
        await prod.flush()
        await eventually(lambda: consumer.stats.dead_lettered == 3, timeout_s=30)
        await eventually(lambda: engine.journal, timeout_s=30)
    assert [t.id for t in engine.journal] == ["ok"]
    letters = await read_topic(kafka_broker.bootstrap, settings.dead_letter_topic, count=3)
    headers = [dict(r.headers) for r in letters]
    assert [h["x-dlq-error-kind"] for h in headers] == [b"no_account"] * 3
    assert [h["x-dlq-error"].decode() for h in headers] == [
        "scope covers no configured account (accounts: no configured account mm-l)",
        "scope covers no configured account (venues: no configured account on bingx)",
        "scope covers no configured account (venues: no configured account on mexc among "
        "accounts ['mm-1']; accounts: no configured account mm-1 on mexc)",
    ]
    rejected = engine.sink.of_type("alert_rejected")
    assert [r["kind"] for r in rejected] == ["no_account"] * 3


async def test_an_alert_covering_a_configured_account_acts_and_reports_the_rest(
    kafka_broker: KafkaBroker,
) -> None:
    # Another shard's daemon may hold mm-2 on binance: act on mm-1, report mm-2.
    settings = await kafka_settings(kafka_broker)
    engine = FakeEngine()
    consumer = new_consumer(settings, engine, accounts=ACCOUNTS)
    scope = {"venues": ["binance"], "accounts": ["mm-1", "mm-2"]}
    async with running(consumer), producer(kafka_broker.bootstrap) as prod:
        await prod.send_and_wait(settings.alerts_topic, alert("k-1", scope=scope))
        await eventually(lambda: engine.journal, timeout_s=30)
    assert [t.id for t in engine.journal] == ["k-1"]
    assert consumer.stats.rejected == {}
    assert engine.sink.of_type("alert_unknown_accounts")[0]["accounts"] == ["mm-2"]
