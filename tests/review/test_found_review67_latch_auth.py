"""Review 67: nothing on the latch topic was authenticated.

With `kafka.alert_hmac_key` set and `kafka.allow_reset = false`, a correctly signed reset alert
is refused, but anyone who could write `{"type": "reset", "origin": "nobody", "released":
["k1"]}` to the latch topic released the latch (the audit naming the forger's actor), and a
forged latch record fired a kill on every replica. With a key configured, every record a
replica writes to the latch topic is now signed as alerts are (header `x-signature`, hex
HMAC-SHA256 of the value bytes), and a record read that the key does not sign, forged or from
before the key was configured, latches, releases and fires nothing: it is counted and raised as
an alarm (`latch_record_unauthenticated`) that names offsets, never the record's content.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from killswitch.app import build_services
from killswitch.daemon import CriticalTasks, Service
from killswitch.kafka.replicas import LatchReplicator
from killswitch.kill.engine import Engine
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import Settings
from killswitch.sinks.audit import read_audit
from tests.conftest import eventually
from tests.fixtures.binance import BinanceVenue, binance_venue
from tests.fixtures.kafka import KafkaBroker, kafka_broker, producer, read_topic
from tests.fixtures.kafka_engine import EventList
from tests.integration.test_kafka_replica_restart import (
    end_offset,
    engine_of,
    latched_in_the_last_life,
    new_topics,
    running,
    settings_of,
)

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

KEY = "r67-latch-hmac-key-0123456789"
FORGER = "forger-r67"  # the forged records' origin and actor: never echoed by the daemon


def kill(trigger_id: str) -> Trigger:
    return Trigger(
        trigger_id, "control", Mode.KILL, "drawdown", Scope.of(["binance"]), 1, received_ms=1
    )


def hex_hmac(key: str, value: bytes) -> str:
    # stdlib, not the code under test: what any producer holding the key computes
    return hmac.new(key.encode(), value, hashlib.sha256).hexdigest()


def latch_value(trigger_id: str, origin: str = FORGER) -> bytes:
    return orjson.dumps({"type": "latch", "origin": origin, "trigger": kill(trigger_id).to_json()})


def reset_value(released: list[str], origin: str = FORGER) -> bytes:
    body = {"type": "reset", "origin": origin, "actor": FORGER, "reason": FORGER}
    return orjson.dumps({**body, "ts_ms": 1, "released": released})


async def publish_latch_records(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes | None]],
    headers: list[list[tuple[str, bytes]]] | None = None,
) -> None:
    """Write records to the latch topic as anyone able to write to it can (no headers unless
    given: unsigned)."""
    async with producer(bootstrap) as prod:
        for i, (key, value) in enumerate(records):
            extra = headers[i] if headers is not None else []
            await prod.send_and_wait(topic, value, key=key, partition=0, headers=extra)


async def read_through(replicator: LatchReplicator, bootstrap: str, topic: str) -> None:
    """Wait until `replicator` has handled every record on the topic so far: write a signed
    record that is not JSON after them and wait until it is counted invalid (records are
    handled one after the other, each applied before the next is read)."""
    invalid = replicator.log.invalid
    sentinel = b"not json"
    await publish_latch_records(
        bootstrap,
        topic,
        [(b"sentinel", sentinel)],
        headers=[[("x-signature", hex_hmac(KEY, sentinel).encode())]],
    )
    await eventually(lambda: replicator.log.invalid > invalid, timeout_s=30)


def keyed_settings(
    workdir: Path, venue: BinanceVenue, bootstrap: str, topics: dict[str, str], name: str
) -> Settings:
    base = settings_of(workdir, venue, bootstrap, topics)
    kafka = base.kafka.model_copy(
        update={"group_id": name, "replica_id": name, "alert_hmac_key": SecretStr(KEY)}
    )
    assert not kafka.allow_reset
    return base.model_copy(update={"kafka": kafka})


def replicator_of(services: list[Service]) -> LatchReplicator:
    (replicator,) = [s for s in services if isinstance(s, LatchReplicator)]
    return replicator


def unauthenticated_alarms(events: EventList) -> list[dict[str, object]]:
    return [
        dict(e) for e in events.of_type("alarm") if e.get("kind") == "latch_record_unauthenticated"
    ]


def reasons(events: EventList) -> set[str]:
    found: set[str] = set()
    for alarm in unauthenticated_alarms(events):
        kinds = alarm["reasons"]
        assert isinstance(kinds, list)
        found.update(str(k) for k in kinds)
    return found


def ignored(events: EventList) -> int:
    """Records the alarms say were ignored (an alarm is raised once its batch is read)."""
    return sum(int(str(a["count"])) for a in unauthenticated_alarms(events))


def assert_no_content_and_no_secret(events: EventList, caplog: pytest.LogCaptureFixture) -> None:
    for alarm in unauthenticated_alarms(events):
        text = orjson.dumps(alarm, default=str).decode()
        assert FORGER not in text
        assert KEY not in text
        assert alarm["account"] == "latch_topic"
    assert KEY not in caplog.text
    assert FORGER not in caplog.text


def observed(settings: Settings) -> tuple[list[Service], EventList]:
    """The daemon's services for `settings`, and every event its engine emits."""
    services = build_services(settings, CriticalTasks())
    events = EventList()
    engine_of(services).events.add(events)
    return services, events


async def test_an_unsigned_reset_on_the_latch_topic_releases_nothing_and_raises_an_alarm(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    async with binance_venue() as venue:
        settings = keyed_settings(tmp_path, venue, bootstrap, topics, "a")
        services, events = observed(settings)
        async with running(services):
            engine = engine_of(services)
            replicator = replicator_of(services)
            await engine.submit(kill("k1"))
            await engine.wait_idle()
            await eventually(lambda: replicator.published >= 1, timeout_s=30)
            await publish_latch_records(
                bootstrap,
                topics["latch_topic"],
                [
                    (b"reset/nobody/1", reset_value(["k1"])),
                    (b"latch/k1", None),  # an unsigned tombstone: no authority either
                ],
            )
            await read_through(replicator, bootstrap, topics["latch_topic"])
            assert "k1" in engine.latches(), "an unsigned record released the latch"
            assert replicator.released_in_cluster("k1") is False
            assert "k1" in replicator.log.latched
            assert replicator.log.unauthenticated == 1
            assert "1 unsigned or badly signed records ignored" in replicator.status()
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] == "reset"]
    (alarm,) = unauthenticated_alarms(events)
    assert alarm["reasons"] == ["unsigned"]
    assert alarm["count"] == 1
    assert_no_content_and_no_secret(events, caplog)


async def test_an_unsigned_or_badly_signed_latch_on_the_latch_topic_fires_no_kill(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    genuine = latch_value("k-genuine", origin="a")
    forged = latch_value("k-borrowed")
    async with binance_venue() as venue:
        settings = keyed_settings(tmp_path, venue, bootstrap, topics, "b")
        services, events = observed(settings)
        async with running(services):
            engine = engine_of(services)
            await venue.place("acct0", "BTCUSDT")
            book = venue.sim.book(venue.sim.accounts["acct0"])
            assert len(book.orders) == 1
            await publish_latch_records(
                bootstrap,
                topics["latch_topic"],
                [
                    (b"latch/k-unsigned", latch_value("k-unsigned")),
                    # signed, with another key
                    (b"latch/k-other-key", latch_value("k-other-key")),
                    # carrying the signature of a genuine record, not of its own value
                    (b"latch/k-borrowed", forged),
                ],
                headers=[
                    [],
                    [("x-signature", hex_hmac("not-" + KEY, latch_value("k-other-key")).encode())],
                    [("x-signature", hex_hmac(KEY, genuine).encode())],
                ],
            )
            await read_through(replicator_of(services), bootstrap, topics["latch_topic"])
            await engine.wait_idle()
            assert engine.latches() == {}
            for trigger_id in ("k-unsigned", "k-other-key", "k-borrowed"):
                assert engine.trigger(trigger_id) is None, f"forged {trigger_id} was submitted"
            assert len(book.orders) == 1, "a forged latch record fired a kill"
            assert replicator_of(services).log.latched == {}
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] in ("triggered", "latched", "outcome", "flat")]
    assert ignored(events) == 3
    assert reasons(events) == {"unsigned", "bad_signature"}
    assert_no_content_and_no_secret(events, caplog)


async def test_a_badly_signed_reset_on_the_latch_topic_releases_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    async with binance_venue() as venue:
        settings = keyed_settings(tmp_path, venue, bootstrap, topics, "a")
        services, events = observed(settings)
        async with running(services):
            engine = engine_of(services)
            await engine.submit(kill("k1"))
            await engine.wait_idle()
            other_key = reset_value(["k1"])
            not_hex = reset_value(["k1"], origin=FORGER + "-2")
            await publish_latch_records(
                bootstrap,
                topics["latch_topic"],
                [(b"reset/nobody/1", other_key), (b"reset/nobody/2", not_hex)],
                headers=[
                    [("x-signature", hex_hmac("not-" + KEY, other_key).encode())],
                    [("x-signature", b"not a signature")],
                ],
            )
            await read_through(replicator_of(services), bootstrap, topics["latch_topic"])
            assert "k1" in engine.latches(), "a badly signed record released the latch"
            assert replicator_of(services).released_in_cluster("k1") is False
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] == "reset"]
    assert ignored(events) == 2
    assert reasons(events) == {"bad_signature"}
    assert_no_content_and_no_secret(events, caplog)


async def test_signed_peer_latches_and_resets_still_replicate_both_ways(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    async with binance_venue() as venue:
        a_services, a_events = observed(
            keyed_settings(tmp_path / "a", venue, bootstrap, topics, "a")
        )
        b_services, b_events = observed(
            keyed_settings(tmp_path / "b", venue, bootstrap, topics, "b")
        )
        async with running(a_services), running(b_services):
            a: Engine = engine_of(a_services)
            b: Engine = engine_of(b_services)
            await a.submit(kill("k-a"))  # a latches: b latches
            await eventually(lambda: "k-a" in b.latches(), timeout_s=30)
            await a.wait_idle()
            await b.wait_idle()
            assert await a.reset(actor="ops", reason="clear on a")  # a resets: b releases
            await eventually(lambda: "k-a" not in b.latches(), timeout_s=30)
            await b.submit(kill("k-b"))  # and the other way
            await eventually(lambda: "k-b" in a.latches(), timeout_s=30)
            await a.wait_idle()
            await b.wait_idle()
            assert await b.reset(actor="ops", reason="clear on b")
            await eventually(lambda: "k-b" not in a.latches(), timeout_s=30)
        end = await end_offset(bootstrap, topics["latch_topic"])
        records = await read_topic(bootstrap, topics["latch_topic"], count=end)
    assert not unauthenticated_alarms(a_events)
    assert not unauthenticated_alarms(b_events)
    for events, peer in ((b_events, "a"), (a_events, "b")):
        (applied,) = [e for e in events.of_type("reset") if e["origin"] == f"replica:{peer}"]
        assert applied["actor"] == "ops"
    # a latch, a reset and its tombstone from each: every record with a value is signed
    assert len(records) == 6
    for record in records:
        signatures = [v for k, v in record.headers if k == "x-signature"]
        if record.value is None:
            assert signatures == []
            continue
        assert signatures == [hex_hmac(KEY, record.value).encode()]


async def test_unsigned_history_from_before_the_key_releases_nothing_at_a_restart(
    tmp_path: Path, kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The compacted topic holds what the replicas wrote before the key was configured: k1
    # latched and reset (unsigned). b restarts latched on k1 with the key: its journal is the
    # only authority left, so k1 stays latched (fail-safe), b publishes it again, signed, and
    # one alarm says the history was ignored. Read in `before_resume` (before the journal's
    # latched kills resume) and never again.
    caplog.set_level(logging.INFO)
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    await publish_latch_records(
        bootstrap,
        topics["latch_topic"],
        [
            (b"latch/k1", latch_value("k1", origin=FORGER)),
            (b"reset/a/1", reset_value(["k1"])),
            (b"latch/k1", None),
        ],
    )
    async with binance_venue() as venue:
        settings = keyed_settings(tmp_path, venue, bootstrap, topics, "b")
        latched_in_the_last_life(settings.state_dir, kill("k1"))
        services, events = observed(settings)
        async with running(services):
            engine = engine_of(services)
            replicator = replicator_of(services)
            assert replicator.synced
            assert "k1" in engine.latches(), "unsigned history released the latch at start"
            assert replicator.released_in_cluster("k1") is False
            await eventually(lambda: replicator.published >= 1, timeout_s=30)
            await engine.wait_idle()
        records = await read_topic(bootstrap, topics["latch_topic"], count=4)
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] == "reset"]
    (alarm,) = unauthenticated_alarms(events)
    assert alarm["count"] == 2
    assert alarm["offsets"] == [0, 1]
    republished = records[3]
    assert republished.key == b"latch/k1"
    assert republished.value is not None
    assert orjson.loads(republished.value)["origin"] == "b"
    assert [v for k, v in republished.headers if k == "x-signature"] == [
        hex_hmac(KEY, republished.value).encode()
    ]
    assert_no_content_and_no_secret(events, caplog)
