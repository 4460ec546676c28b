"""An alert whose kill a reset on another replica released is not killed again here; until the
latch topic has been read, the kill is acted on (fail-safe) with an alarm, and the replicator's
sync releases it and does not publish it back. With a broker, see
tests/integration/test_kafka_replica_restart.py."""

from __future__ import annotations

import time

import orjson
import pytest

from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import KafkaSettings
from tests.fixtures.kafka_engine import FakeEngine
from tests.unit.test_kafka_alert_records import TP, Letters, record
from tests.unit.test_kafka_replica_resume import FakeTopicReplicator, TopicReader

NOW = int(time.time() * 1000)
SETTINGS = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_ttl_ms=60_000)


class Cluster:
    """What the latch replicator answers: released ids, or None for "not read yet"."""

    def __init__(self, released: set[str] | None, last_error: str = "") -> None:
        self.released = released
        self.last_error = last_error

    def released_in_cluster(self, trigger_id: str) -> bool | None:
        return None if self.released is None else trigger_id in self.released


def alert(alert_id: str, action: str = "kill") -> bytes:
    body = {"id": alert_id, "ts": NOW, "source": "pnl", "action": action}
    return orjson.dumps(body | {"scope": {"venues": ["binance"]}})


def consumer_of(engine: FakeEngine, cluster: Cluster) -> tuple[KafkaAlertConsumer, Letters]:
    consumer = KafkaAlertConsumer(SETTINGS, engine, cluster=cluster, wall_ms=lambda: NOW)
    letters = Letters()
    consumer.letters.send = letters  # type: ignore[method-assign]
    return consumer, letters


@pytest.mark.parametrize("action", ["kill", "cancel"])
async def test_an_alert_a_peer_reset_is_a_duplicate_not_acted_on(action: str) -> None:
    engine = FakeEngine()
    consumer, letters = consumer_of(engine, Cluster({"k1"}))
    await consumer._process(TP, record(0, alert("k1", action)))
    assert engine.submitted == []
    assert letters.sent == []
    assert consumer.stats.duplicates == 1
    (duplicate,) = engine.sink.of_type("duplicate")
    assert duplicate["trigger_id"] == "k1"
    assert duplicate["released_in_cluster"] is True


async def test_an_alert_the_cluster_did_not_reset_is_acted_on_without_an_alarm() -> None:
    engine = FakeEngine()
    consumer, _ = consumer_of(engine, Cluster({"k0"}))
    await consumer._process(TP, record(0, alert("k1")))
    assert [t.id for t in engine.submitted] == ["k1"]
    assert engine.sink.of_type("alarm") == []


async def test_a_kill_before_the_latch_topic_was_read_is_acted_on_with_an_alarm() -> None:
    engine = FakeEngine()
    consumer, _ = consumer_of(engine, Cluster(None, last_error="KafkaConnectionError: refused"))
    await consumer._process(TP, record(0, alert("k1")))
    assert list(engine.latches()) == ["k1"]  # fail-safe, never open
    (alarm,) = engine.sink.of_type("alarm")
    assert alarm["kind"] == "latch_unread_at_kill"
    assert alarm["trigger_ids"] == ["k1"]
    assert alarm["error"] == "KafkaConnectionError: refused"


async def test_a_cancel_before_the_latch_topic_was_read_raises_no_alarm() -> None:
    # one-shot cancels never reach the latch topic: the cluster has nothing to say of them
    engine = FakeEngine()
    consumer, _ = consumer_of(engine, Cluster(None))
    await consumer._process(TP, record(0, alert("c1", "cancel")))
    assert [t.id for t in engine.submitted] == ["c1"]
    assert engine.sink.of_type("alarm") == []


def kill(trigger_id: str) -> Trigger:
    return Trigger(trigger_id, "pnl", Mode.KILL, "dd", Scope.of(["binance"]))


async def test_a_late_sync_releases_what_a_peer_reset_and_does_not_publish_it() -> None:
    engine = FakeEngine()
    reset = {"type": "reset", "origin": "a", "released": ["k1"], "actor": "ops"}
    peer_k1 = {"type": "latch", "origin": "a", "trigger": kill("k1").to_json()}
    topic = TopicReader(
        [
            (b"latch/k1", orjson.dumps(peer_k1)),
            (b"reset/a/1", orjson.dumps(reset)),
            (b"latch/k1", None),
        ]
    )
    rep = FakeTopicReplicator(SETTINGS, engine, replica_id="b", topic=topic)
    engine.events.add(rep)
    assert rep.released_in_cluster("k1") is None  # not read yet
    # the topic unread, both alerts are acted on (fail-safe) and queued for the topic
    await engine.submit(kill("k1"))
    await engine.submit(kill("k2"))
    assert [k for k, _ in rep._outbox] == [b"latch/k1", b"latch/k2"]

    await rep._open()
    await rep._sync()

    assert rep.released_in_cluster("k1") is True
    assert rep.released_in_cluster("k2") is False
    assert list(engine.latches()) == ["k2"]  # k1 released, exactly; k2 kept
    assert engine.resets[-1]["origin"] == "replica:a"
    # latch/k1 would latch the peers again after their reset: not published
    # (k2 may be queued twice, by its trigger and by the reconcile: the same compacted key)
    assert {k for k, _ in rep._outbox} == {b"latch/k2"}
