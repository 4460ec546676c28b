"""Replicas share the latch through a compacted topic: the log's rules, then real replicators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from killswitch.kafka.client import Backoff
from killswitch.kafka.replicas import LatchLog, LatchReplicator
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import KafkaSettings
from tests.conftest import eventually
from tests.fixtures.kafka import (
    KafkaBroker,
    ProxiedBroker,
    kafka_broker,
    proxied_broker,
    read_topic,
    unique_name,
)
from tests.fixtures.kafka_engine import FakeEngine, _Kill

__all__ = ["kafka_broker", "proxied_broker"]


def kill(trigger_id: str, **kw: Any) -> Trigger:
    return Trigger(
        id=trigger_id,
        source="control",
        mode=Mode.KILL,
        reason="test",
        scope=Scope.of(["binance"]),
        **kw,
    )


def latch_record(trigger_id: str, origin: str = "a") -> tuple[bytes, bytes]:
    body = {"type": "latch", "origin": origin, "trigger": kill(trigger_id).to_json()}
    return f"latch/{trigger_id}".encode(), orjson.dumps(body)


def reset_record(released: list[str], origin: str = "a") -> tuple[bytes, bytes]:
    body = {"type": "reset", "origin": origin, "released": released}
    return f"reset/{origin}/1".encode(), orjson.dumps(body)


# -- the log (pure) ---------------------------------------------------------------------------


def test_the_log_folds_latches_resets_and_tombstones_in_order() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*latch_record("t2", origin="b"))
    log.apply(*reset_record(["t1"]))
    log.apply(b"latch/t1", None)
    log.apply(*latch_record("t3"))
    assert sorted(log.latched) == ["t2", "t3"]
    assert set(log.released) == {"t1"}
    assert log.origins["t2"] == "b"


def test_invalid_latch_records_are_counted_and_skipped() -> None:
    log = LatchLog()
    for value in (b"junk", b"[]", b'{"type": "latch"}', b'{"type": "nuke"}'):
        assert log.apply(b"latch/x", value) is None
    assert log.invalid == 4
    assert log.latched == {}


def test_a_replica_missing_a_cluster_latch_submits_it() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    decision = log.decide([])
    assert [t["id"] for t in decision.submit] == ["t1"]
    assert decision.release == []


def test_a_reset_that_released_everything_held_resets_the_replica() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*reset_record(["t1"]))
    decision = log.decide(["t1"])
    assert decision.release == ["t1"]
    assert decision.submit == []


def test_a_latch_the_reset_did_not_name_keeps_the_replica_latched() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*latch_record("t2", origin="b"))
    log.apply(*reset_record(["t1"]))  # the resetting replica had not read t2 yet
    decision = log.decide(["t1", "t2"])
    assert decision.release == ["t1"]  # exactly what the reset named: t2 stays latched


def test_latches_the_log_never_saw_are_published() -> None:
    log = LatchLog()
    decision = log.decide(["local-only"])
    assert decision.publish == ["local-only"]
    assert decision.release == []


# -- replicators against a broker ------------------------------------------------------------


@pytest.fixture
def latch_settings(kafka_broker: KafkaBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, latch_topic=unique_name("latch"))


def replicator(
    settings: KafkaSettings, replica: str, engine: FakeEngine, **kw: Any
) -> LatchReplicator:
    group = settings.model_copy(update={"group_id": replica, "replica_id": replica})
    rep = LatchReplicator(group, engine, backoff=Backoff(initial_s=0.05, max_s=0.5), **kw)
    engine.events.add(rep)
    return rep


@contextlib.asynccontextmanager
async def running(*replicators: LatchReplicator) -> AsyncIterator[None]:
    tasks = []
    for rep in replicators:
        await rep.start()
        tasks.append(asyncio.create_task(rep.run()))
    try:
        yield
    finally:
        for rep in replicators:
            await rep.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def records(settings: KafkaSettings, count: int) -> list[tuple[str, dict[str, Any] | None]]:
    found = await read_topic(settings.bootstrap_servers, settings.latch_topic, count=count)
    return [(r.key.decode(), orjson.loads(r.value) if r.value else None) for r in found]


@pytest.mark.kafka
async def test_a_kill_on_one_replica_latches_the_other_without_an_echo(
    latch_settings: KafkaSettings,
) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await eventually(lambda: a.log.latched and b.log.latched, timeout_s=30)
    assert [t.id for t in b_engine.journal] == ["k-1"]
    assert b_engine.journal[0].scope == Scope.of(["binance"])
    assert a.published == 1
    assert b.published == 0  # applied from the topic: not announced back
    [(key, value)] = await records(latch_settings, 1)
    assert key == "latch/k-1"
    assert value is not None
    assert value["origin"] == "replica-a"


@pytest.mark.kafka
async def test_a_reset_on_one_replica_unlatches_the_other(latch_settings: KafkaSettings) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b_engine.reset(actor="ops", reason="all clear")
        await eventually(lambda: not a_engine.latched(), timeout_s=30)
    assert a_engine.resets == [
        {"actor": "ops", "reason": "all clear", "origin": "replica:replica-b"}
    ]
    assert b.published == 2  # the reset and the tombstone of k-1
    assert a.published == 1  # only its own kill: the reset it applied is not echoed


@pytest.mark.kafka
async def test_a_replica_that_starts_reads_the_latch_before_it_is_ready(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: a.published == 1, timeout_s=30)
        late_engine = FakeEngine()
        late = replicator(latch_settings, "replica-c", late_engine)
        await late.start()  # no run(): start alone must have read the topic
        try:
            assert late.synced
            assert late_engine.latched()
            assert [t.id for t in late_engine.journal] == ["k-1"]
        finally:
            await late.stop()


@pytest.mark.kafka
async def test_a_replica_restarting_latched_after_a_reset_elsewhere_resets_at_start(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await a_engine.reset(actor="ops", reason="clear")
        await eventually(lambda: a.published == 3, timeout_s=30)
    restarted = FakeEngine()  # its journal still says k-1 is latched
    await restarted.submit(kill("k-1"))
    b = replicator(latch_settings, "replica-b", restarted)
    await b.start()
    await b.stop()
    assert not restarted.latched()
    assert restarted.resets[0]["origin"] == "replica:replica-a"


@pytest.mark.kafka
async def test_a_restarting_replica_keeps_the_newer_peer_kill_it_applies_while_catching_up(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await a_engine.reset(actor="ops", reason="clear")
        await a_engine.submit(kill("k-2"))  # a newer kill, after the reset
        await eventually(lambda: a.published == 4, timeout_s=30)
    restarted = FakeEngine()  # its journal still says k-1 is latched
    await restarted.submit(kill("k-1"))
    b = replicator(latch_settings, "replica-b", restarted)
    await b.start()
    await b.stop()
    assert sorted(restarted.held) == ["k-2"]  # k-1 released, k-2 applied and kept


@pytest.mark.kafka
async def test_a_latch_the_reset_did_not_name_survives_it(latch_settings: KafkaSettings) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b.stop()  # b stops reading the topic but keeps its engine
        await b_engine.submit(kill("k-2"))  # latched on b while a cannot hear of it
        await a_engine.reset(actor="ops", reason="clear")  # releases k-1 only
        await eventually(lambda: a.published == 3, timeout_s=30)
    rejoined = replicator(latch_settings, "replica-b", b_engine)
    a_again = replicator(latch_settings, "replica-a", a_engine)
    async with running(rejoined, a_again):
        await eventually(lambda: a_engine.latched(), timeout_s=30)  # a latches k-2
        assert b_engine.latched()
    assert sorted(b_engine.held) == ["k-2"]  # the reset named k-1, and only k-1
    assert "k-2" in a_engine.held
    (reset,) = b_engine.sink.of_type("reset")
    assert [r["trigger_id"] for r in reset["released"]] == ["k-1"]


@pytest.mark.kafka
async def test_a_replica_started_without_a_broker_becomes_ready_and_syncs_later(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=proxied_broker.bootstrap, latch_topic=unique_name("latch")
    )
    seed_engine = FakeEngine()
    seed = replicator(settings, "replica-a", seed_engine)
    async with running(seed):
        await seed_engine.submit(kill("k-1"))
        await eventually(lambda: seed.published == 1, timeout_s=30)
    await proxied_broker.cut()
    engine = FakeEngine()
    rep = replicator(settings, "replica-b", engine, sync_timeout_s=1.0)
    async with running(rep):
        assert not rep.synced
        assert rep.status().startswith("disconnected")
        await proxied_broker.restore()
        await eventually(lambda: engine.latched(), timeout_s=60)
        assert rep.synced


@pytest.mark.kafka
async def test_a_fail_safe_latch_from_an_unreadable_journal_stays_on_its_replica(
    latch_settings: KafkaSettings,
) -> None:
    damaged = FakeEngine()  # its journal could not be read: latched on everything, locally
    fail_safe = Trigger(
        "journal-unreadable-20261206T180000000Z", "journal", Mode.KILL, "unreadable", Scope()
    )
    damaged.held[fail_safe.id] = fail_safe.scope  # as replayed at start: no "triggered" event
    damaged._kills[fail_safe.id] = _Kill(fail_safe)
    healthy = FakeEngine()
    a = replicator(latch_settings, "replica-a", damaged)
    b = replicator(latch_settings, "replica-b", healthy)
    async with running(a, b):
        await healthy.submit(kill("k-1"))  # a real kill still travels
        await eventually(lambda: "k-1" in damaged.held, timeout_s=30)
    assert a.published == 0
    assert "journal-unreadable-20261206T180000000Z" not in healthy.held
