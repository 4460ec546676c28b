"""A replica restarting latched reads the latch topic before its journal's kills resume.

Replica b was down while an operator reset k1 on replica a, and the desk traded again. b's
journal still says k1 is latched; the topic says it was reset. The daemon as `app` builds it
(the services started in order, as the daemon starts them) must release k1 before the resume,
never kill it again: that would cancel orders placed after the cluster-wide reset.

The same holds when b never saw k1 at all and its alert consumer reads the alert k1 after the
restart (from its committed offset, within the alert's TTL): the cluster reset it, so it is a
duplicate. A peer's latch of k1 that no reset named is latched here too (fail-safe).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from killswitch.app import EngineService, build_services
from killswitch.daemon import CriticalTasks, Service
from killswitch.journal import Journal
from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kill.engine import Engine
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import Settings
from killswitch.sinks.audit import read_audit
from tests.conftest import eventually
from tests.fixtures.binance import BinanceVenue, binance_venue
from tests.fixtures.kafka import KafkaBroker, create_topics, kafka_broker, producer, unique_name

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

K1 = Trigger(
    "k1", "control", Mode.KILL, "drawdown", Scope.of(["binance"]), created_ms=1, received_ms=1
)


def settings_of(
    tmp_path: Path, venue: BinanceVenue, bootstrap: str, topics: dict[str, str]
) -> Settings:
    account = venue.accounts["acct0"]
    return Settings(
        state_dir=tmp_path / "state",
        accounts=[
            {
                "venue": "binance",
                "name": "acct0",
                "api_key": account.api_key,
                "api_secret": account.api_secret,
                "rest_url": venue.sim.base_url,
                "ws_url": venue.sim.ws_api_url,
            }
        ],
        kafka={"bootstrap_servers": bootstrap, "group_id": "b", "replica_id": "b", **topics},
        engine={"deadline_s": 30.0, "quiet_window_s": 0.05, "sweep_interval_s": 3600.0},
        control={"socket_path": tmp_path / "control.sock"},
    )


def latched_in_the_last_life(state_dir: Path, trigger: Trigger) -> None:
    """Write b's journal as its last life left it: `trigger` journaled and latched."""
    state_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(state_dir / "journal.jsonl")
    journal.open()
    journal.append_many(
        [
            ("trigger", {"trigger": trigger.to_json()}),
            ("latch", {"trigger_id": trigger.id, "scope": trigger.scope.to_json()}),
        ]
    )
    journal.close()


async def publish_latch_records(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> None:
    async with producer(bootstrap) as prod:
        for key, value in records:
            await prod.send_and_wait(topic, value, key=key, partition=0)


@asynccontextmanager
async def started(services: list[Service]) -> AsyncIterator[list[Service]]:
    """Start the services in order as the daemon does (all before READY), stop in reverse."""
    done: list[Service] = []
    try:
        for service in services:
            done.append(service)
            await service.start()
        yield services
    finally:
        for service in reversed(done):
            await service.stop()


def engine_of(services: list[Service]) -> Engine:
    (service,) = [s for s in services if isinstance(s, EngineService)]
    return service.engine


async def test_a_restart_releases_a_latch_reset_on_a_peer_before_it_resumes(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    topics = {
        "alerts_topic": unique_name("alerts"),
        "events_topic": unique_name("events"),
        "dead_letter_topic": unique_name("dlq"),
        "latch_topic": unique_name("latch"),
    }
    bootstrap = kafka_broker.bootstrap
    await create_topics(
        bootstrap, topics["alerts_topic"], topics["events_topic"], topics["dead_letter_topic"]
    )
    await create_topics(bootstrap, topics["latch_topic"], compact=True)
    async with binance_venue() as venue:
        settings = settings_of(tmp_path, venue, bootstrap, topics)
        latched_in_the_last_life(settings.state_dir, K1)
        # meanwhile on replica a: k1 (published by b before it went down) is reset
        latch = {"type": "latch", "origin": "b", "trigger": K1.to_json()}
        reset = {
            "type": "reset",
            "origin": "a",
            "released": ["k1"],
            "actor": "ops",
            "reason": "clear",
        }
        await publish_latch_records(
            bootstrap,
            topics["latch_topic"],
            [
                (b"latch/k1", orjson.dumps(latch)),
                (b"reset/a/1", orjson.dumps(reset)),
                (b"latch/k1", None),
            ],
        )
        for _ in range(3):  # the desk trades again
            await venue.place("acct0", "BTCUSDT")
        book = venue.sim.book(venue.sim.accounts["acct0"])
        assert len(book.orders) == 3

        services = build_services(settings, CriticalTasks())
        async with started(services):  # READY would be sent now
            engine = engine_of(services)
            assert engine.latches() == {}
            await engine.wait_idle()
            assert len(book.orders) == 3, "b killed again a latch the cluster had reset"
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] in ("resumed", "outcome", "flat")]
    (reset_event,) = [e for e in audit if e["type"] == "reset"]
    assert reset_event["origin"] == "replica:a"
    assert reset_event["released"] == [{"trigger_id": "k1", "scope": K1.scope.to_json()}]


TOPIC_NAMES = ("alerts_topic", "events_topic", "dead_letter_topic", "latch_topic")


async def new_topics(bootstrap: str) -> dict[str, str]:
    topics = {name: unique_name(name.removesuffix("_topic")) for name in TOPIC_NAMES}
    await create_topics(
        bootstrap, topics["alerts_topic"], topics["events_topic"], topics["dead_letter_topic"]
    )
    await create_topics(bootstrap, topics["latch_topic"], compact=True)
    return topics


async def ran_before(bootstrap: str, group: str, topic: str) -> None:
    """Commit `group`'s offset on `topic` at its (empty) end, as a replica that ran before."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(0, "")})
    finally:
        await consumer.stop()


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


@asynccontextmanager
async def running(services: list[Service]) -> AsyncIterator[list[Service]]:
    """Start the services in order, run them all, then stop them in reverse and let each
    run() finish its own stop work (the latch replicator publishes what waits)."""
    runs: list[asyncio.Task[None]] = []
    try:
        async with started(services):
            runs = [asyncio.create_task(s.run()) for s in services]
            yield services
    finally:
        if runs:
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)


async def read_alert_k1(services: list[Service]) -> Engine:
    """Wait until b's alert consumer has read and committed the alert k1, and the engine has
    finished whatever it started."""
    (consumer,) = [s for s in services if isinstance(s, KafkaAlertConsumer)]
    await eventually(lambda: consumer.stats.consumed >= 1 and consumer.stats.commits >= 1)
    engine = engine_of(services)
    await engine.wait_idle()
    return engine


ALERT_K1 = {
    "id": "k1",
    "source": "pnl",
    "action": "kill",
    "reason": "dd",
    "scope": {"venues": ["binance"]},
    "ttl_ms": 600_000,
}


async def test_an_alert_a_peer_latched_and_reset_while_this_replica_was_down_is_not_killed(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    # Review 34: b read k1 from its committed offset (within the TTL, not in its journal),
    # latched it, cancelled the desk's new orders and republished latch/k1 to the cluster.
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    await ran_before(bootstrap, "b", topics["alerts_topic"])
    async with producer(bootstrap) as prod:  # b is down: k1 arrives
        alert = ALERT_K1 | {"ts": int(time.time() * 1000)}
        await prod.send_and_wait(topics["alerts_topic"], orjson.dumps(alert), partition=0)
    async with binance_venue() as venue:
        settings = settings_of(tmp_path, venue, bootstrap, topics)
        # a latches k1, an operator resets it on a
        k1 = {"type": "latch", "origin": "a", "trigger": K1.to_json()}
        reset = {"type": "reset", "origin": "a", "released": ["k1"], "actor": "ops"}
        await publish_latch_records(
            bootstrap,
            topics["latch_topic"],
            [
                (b"latch/k1", orjson.dumps(k1)),
                (b"reset/a/1", orjson.dumps(reset)),
                (b"latch/k1", None),
            ],
        )
        for _ in range(3):  # the desk trades again
            await venue.place("acct0", "BTCUSDT")
        book = venue.sim.book(venue.sim.accounts["acct0"])

        async with running(build_services(settings, CriticalTasks())) as services:
            engine = await read_alert_k1(services)
            assert engine.latches() == {}
            assert not engine.accepted("k1")
            assert len(book.orders) == 3, "b killed again an alert the cluster had reset"
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] in ("triggered", "latched", "outcome", "flat")]
    (duplicate,) = [e for e in audit if e["type"] == "duplicate"]
    assert duplicate["trigger_id"] == "k1"
    assert duplicate["released_in_cluster"] is True
    # nothing published back: the peers are not latched again
    assert await end_offset(bootstrap, topics["latch_topic"]) == 3


async def test_an_alert_a_peer_latched_and_no_reset_named_is_latched_here_too(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    await ran_before(bootstrap, "b", topics["alerts_topic"])
    async with producer(bootstrap) as prod:
        alert = ALERT_K1 | {"ts": int(time.time() * 1000)}
        await prod.send_and_wait(topics["alerts_topic"], orjson.dumps(alert), partition=0)
    async with binance_venue() as venue:
        settings = settings_of(tmp_path, venue, bootstrap, topics)
        k1 = {"type": "latch", "origin": "a", "trigger": K1.to_json()}
        # a reset on a that named another latch only
        reset = {"type": "reset", "origin": "a", "released": ["k0"], "actor": "ops"}
        await publish_latch_records(
            bootstrap,
            topics["latch_topic"],
            [(b"latch/k1", orjson.dumps(k1)), (b"reset/a/1", orjson.dumps(reset))],
        )
        for _ in range(3):
            await venue.place("acct0", "BTCUSDT")
        book = venue.sim.book(venue.sim.accounts["acct0"])

        async with running(build_services(settings, CriticalTasks())) as services:
            engine = await read_alert_k1(services)
            assert list(engine.latches()) == ["k1"]
            assert len(book.orders) == 0
        audit = read_audit(settings.state_dir / "audit.jsonl")
    (duplicate,) = [e for e in audit if e["type"] == "duplicate"]
    assert duplicate["trigger_id"] == "k1"
    assert "released_in_cluster" not in duplicate
    assert await end_offset(bootstrap, topics["latch_topic"]) == 2
